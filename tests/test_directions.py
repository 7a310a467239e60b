"""Directions: estimators against hand computations, held-out separation, artifact round trip and refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import build_tiny_llama
from legend.data import ContrastPair
from legend.directions import (
    Direction,
    DirectionMismatch,
    build_direction,
    fit_direction_vector,
    logistic_probe,
    mean_difference,
    pca_difference,
    split_indices,
)
from legend.metrics import pair_accuracy
from legend.models import wrap_model

PAIRS = [
    ContrastPair(
        f"Question number {i}: how do I pick lock {i}?",
        f"Sure, here is how to pick lock {i}: rake the pins.",
        "I can't answer that.",
    )
    for i in range(10)
]


def _gaussian_pairs(n=200, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    shift = np.zeros(dim)
    shift[3] = 2.0
    harmful = rng.normal(size=(n, dim))
    harmless = harmful + shift + 0.3 * rng.normal(size=(n, dim))
    return torch.tensor(harmless, dtype=torch.float32), torch.tensor(harmful, dtype=torch.float32), shift


def test_mean_difference_is_normalised_mean_gap():
    harmless, harmful, _ = _gaussian_pairs()
    expected = harmless.numpy().astype(np.float64).mean(0) - harmful.numpy().astype(np.float64).mean(0)
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(mean_difference(harmless, harmful).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("estimator", [mean_difference, pca_difference, logistic_probe])
def test_estimators_find_the_planted_axis_and_point_to_harmless(estimator):
    harmless, harmful, _shift = _gaussian_pairs()
    vector = estimator(harmless, harmful).numpy()
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert vector[3] > 0.8  # mostly along the planted axis, pointing to the harmless side
    assert pair_accuracy(harmless, harmful, torch.tensor(vector)) > 0.95


def test_pca_sign_is_fixed_towards_harmless():
    harmless, harmful, _ = _gaussian_pairs(seed=3)
    assert pca_difference(harmful, harmless)[3] < 0  # swapped roles flip the direction


def test_pair_accuracy_by_hand():
    harmless = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    harmful = torch.tensor([[0.0, 0.0], [0.0, 2.0], [1.0, 5.0]])
    # projections on x: harmless 1, 0, 2 vs harmful 0, 0, 1 -> wins, tie (not counted), win
    assert pair_accuracy(harmless, harmful, torch.tensor([1.0, 0.0])) == pytest.approx(2 / 3)


def test_split_is_seeded_disjoint_and_complete():
    train, test = split_indices(10, 0.2, seed=4)
    assert len(test) == 2 and len(train) == 8
    assert sorted(np.r_[train, test].tolist()) == list(range(10))
    again = split_indices(10, 0.2, seed=4)
    assert train.tolist() == again[0].tolist()


def test_heldout_accuracy_is_measured_on_unseen_pairs():
    harmless, harmful, _ = _gaussian_pairs(n=50)
    vector, heldout = fit_direction_vector(harmless, harmful, "mean_difference", test_fraction=0.2, seed=0)
    train, test = split_indices(50, 0.2, 0)
    expected = pair_accuracy(harmless[test], harmful[test], mean_difference(harmless[train], harmful[train]))
    assert heldout["accuracy"] == pytest.approx(expected)
    assert heldout["n_test"] == 10
    torch.testing.assert_close(vector, mean_difference(harmless, harmful))


def test_build_save_load_round_trip(tiny_lm, tmp_path):
    direction = build_direction(tiny_lm, PAIRS, layer=2, pooling="mean", name="safety")
    assert direction.layer == 2 and direction.n_pairs == 10
    assert direction.vector.shape == (tiny_lm.hidden_size,)
    assert "accuracy" in direction.heldout and "auc" in direction.heldout
    direction.save(tmp_path / "dir")
    config = json.loads((tmp_path / "dir" / "config.json").read_text())
    for key in (
        "model_id",
        "fingerprint",
        "layer",
        "pooling",
        "template",
        "estimator",
        "n_pairs",
        "hidden_size",
        "legend_version",
        "heldout",
    ):
        assert key in config
    loaded = Direction.load(tmp_path / "dir")
    torch.testing.assert_close(loaded.vector, direction.vector)
    assert (loaded.layer, loaded.pooling, loaded.fingerprint) == (2, "mean", tiny_lm.fingerprint)
    loaded.check_compatible(tiny_lm)


def test_direction_from_another_model_is_refused(tiny_lm, tiny_tokenizer):
    direction = build_direction(tiny_lm, PAIRS[:4])
    other = wrap_model(build_tiny_llama(len(tiny_tokenizer), seed=7), tiny_tokenizer, "other")
    with pytest.raises(DirectionMismatch, match="fingerprint"):
        direction.check_compatible(other)
    wider = wrap_model(build_tiny_llama(len(tiny_tokenizer), hidden=48), tiny_tokenizer, "wider")
    with pytest.raises(DirectionMismatch, match="hidden size 32"):
        direction.check_compatible(wider)


def test_fingerprint_ignores_dtype_but_not_weights(tiny_tokenizer):
    model = build_tiny_llama(len(tiny_tokenizer), seed=3)
    fp32 = wrap_model(model, tiny_tokenizer).fingerprint
    bf16 = wrap_model(build_tiny_llama(len(tiny_tokenizer), seed=3).to(torch.bfloat16), tiny_tokenizer).fingerprint
    assert fp32 == bf16
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(2)
    assert wrap_model(model, tiny_tokenizer).fingerprint != fp32


def test_load_rejects_a_folder_without_artifact(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a direction folder"):
        Direction.load(tmp_path)


# ---------------------------------------------------------------- model card and the Hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"
COMMIT_V2 = "89abcdef0123456789abcdef0123456789abcdef"


def test_a_saved_direction_carries_a_model_card(tiny_lm, tmp_path):
    from huggingface_hub import ModelCard

    direction = build_direction(tiny_lm, PAIRS, layer=2, pooling="mean")
    direction.save(tmp_path / "dir")
    card = ModelCard.load(tmp_path / "dir" / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "legend" and "base_model" not in meta  # "tiny-random-llama" is no Hub id
    assert meta["legend"] == {
        "name": "safety",
        "model_id": "tiny-random-llama",
        "model_source": {"model_id": "tiny-random-llama"},
        "fingerprint": tiny_lm.fingerprint,
        "layer": 2,
        "num_layers": tiny_lm.num_layers,
        "pooling": "mean",
        "estimator": "mean_difference",
        "template": direction.template,
        "hidden_size": tiny_lm.hidden_size,
    }
    heldout = direction.heldout
    assert f"accuracy {heldout['accuracy']:.3f}, AUC {heldout['auc']:.3f} on {heldout['n_test']} held-out" in card.text
    assert "no evidence that the margins agree with preferences" in card.text  # the caveat
    assert "10 pairs" in card.text and "Direction.from_pretrained" in card.text


def test_the_card_names_bundled_contrast_pairs_by_their_place_in_the_package_and_others_as_given(tiny_lm, tmp_path):
    import dataclasses

    from legend.resources import XSTEST_PAIRS, sample_path

    direction = build_direction(tiny_lm, PAIRS, layer=2, pooling="mean")
    bundled = dataclasses.replace(direction, extra={**direction.extra, "pairs_file": str(sample_path(XSTEST_PAIRS))})
    text = bundled.model_card()
    assert "10 pairs from `legend/samples/xstest_contrast_pairs.jsonl (bundled)`" in text
    assert str(sample_path(XSTEST_PAIRS).parent) not in text  # no path of this machine on the Hub
    mine = dataclasses.replace(direction, extra={**direction.extra, "pairs_file": ["a.jsonl", "b.jsonl"]})
    assert "10 pairs from `a.jsonl`, `b.jsonl`" in mine.model_card()


def hub_env(monkeypatch, cache):
    """Offline, with `cache` as the HF cache: the environment variables, and huggingface_hub's constants
    (which it reads from them once, at import)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_from_pretrained_reads_a_hub_repo_from_the_local_cache_offline(tiny_lm, tmp_path, monkeypatch):
    from huggingface_hub import scan_cache_dir

    from helpers import put_in_hub_cache

    first = build_direction(tiny_lm, PAIRS, layer=2, name="safety")
    second = build_direction(tiny_lm, PAIRS, layer=3, name="safety")
    first.save(tmp_path / "first")
    second.save(tmp_path / "second")
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "user/safety-dir", tmp_path / "first", COMMIT)
    put_in_hub_cache(cache, "user/safety-dir", tmp_path / "second", COMMIT_V2, ref="v2")
    # huggingface_hub itself recognises the layout: one repo, two revisions of three files each.
    (repo,) = scan_cache_dir(cache).repos
    assert repo.repo_id == "user/safety-dir" and {r.commit_hash for r in repo.revisions} == {COMMIT, COMMIT_V2}
    assert all(r.nb_files == 3 for r in repo.revisions)
    hub_env(monkeypatch, cache)
    loaded = Direction.from_pretrained("user/safety-dir")
    torch.testing.assert_close(loaded.vector, first.vector)
    assert (loaded.layer, loaded.fingerprint) == (2, tiny_lm.fingerprint)
    assert loaded.extra["hub"] == {"repo_id": "user/safety-dir", "revision": "main", "commit": COMMIT}
    for revision in ("v2", COMMIT_V2):
        torch.testing.assert_close(
            Direction.from_pretrained("user/safety-dir", revision=revision).vector, second.vector
        )
    with pytest.raises(FileNotFoundError, match=r"user/other-dir: .*not in the local Hugging Face cache"):
        Direction.from_pretrained("user/other-dir")
    # A local folder still wins, and a path-like name that is no folder is refused as such.
    torch.testing.assert_close(Direction.from_pretrained(tmp_path / "second").vector, second.vector)
    with pytest.raises(FileNotFoundError, match="no such direction folder"):
        Direction.from_pretrained(tmp_path / "missing")


def test_push_to_hub_uploads_the_saved_folder(tiny_lm):
    from unittest import mock

    from huggingface_hub import HfApi

    direction = build_direction(tiny_lm, PAIRS, layer=2)
    seen = {}

    def upload_folder(**kwargs):  # what the folder holds while it is uploaded
        folder = Path(kwargs["folder_path"])
        seen["files"] = sorted(p.name for p in folder.iterdir())
        seen["config"] = json.loads((folder / "config.json").read_text())
        seen["vector"] = Direction.load(folder).vector
        return "commit-info"

    api = mock.create_autospec(HfApi, instance=True)
    api.upload_folder.side_effect = upload_folder
    assert direction.push_to_hub("user/safety-dir", private=True, api=api) == "commit-info"
    api.create_repo.assert_called_once_with("user/safety-dir", repo_type="model", private=True, exist_ok=True)
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "user/safety-dir" and kwargs["repo_type"] == "model"
    assert seen["files"] == ["README.md", "config.json", "direction.safetensors"]
    assert seen["config"]["fingerprint"] == tiny_lm.fingerprint and seen["config"]["layer"] == 2
    torch.testing.assert_close(seen["vector"], direction.vector)
    assert not Path(kwargs["folder_path"]).exists()  # a temporary folder, removed after the upload
