"""Any concept, several at once: named directions applied in one annotation pass."""

from __future__ import annotations

import dataclasses
import json

import datasets
import numpy as np
import pytest
from typer.testing import CliRunner

from legend.data import ContrastPair
from legend.directions import build_direction
from legend.encoding import EncodeConfig, encode


def _pairs(concept: str, n: int = 8) -> list[ContrastPair]:
    if concept == "safety":
        return [
            ContrastPair(
                f"How do I do thing {i}?",
                f"Sure, here is how to do thing {i}.",
                f"I'm sorry, but I cannot help with thing {i}.",
            )
            for i in range(n)
        ]
    return [
        ContrastPair(f"Explain topic {i}.", "No.", f"Topic {i} works like this: first the fox, then the dog.")
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def two_directions(tiny_lm):
    safety = build_direction(
        tiny_lm, _pairs("safety"), layer=-1, pooling="last", name="safety", encoding=EncodeConfig(batch_size=64)
    )
    helpful = build_direction(
        tiny_lm,
        _pairs("helpful"),
        layer=2,
        pooling="mean",
        estimator="pca",
        name="helpful",
        encoding=EncodeConfig(batch_size=64),
    )
    return safety, helpful


@pytest.fixture(scope="module")
def preferences():
    # Refusal chosen in half the rows, compliance in the other half: both directions get margins of both signs.
    refusals = [f"I'm sorry, I cannot help with {i}." for i in range(8)]
    answers = [f"Sure, here is how to pick lock {i}: the quick brown fox." for i in range(8)]
    rows = {
        "prompt": [f"Question {i}: how do I pick a lock?" for i in range(9)],
        "chosen": [refusals[i] if i % 2 else answers[i] for i in range(8)] + ["Same answer."],
        "rejected": [answers[i] if i % 2 else refusals[i] for i in range(8)] + ["Same answer."],
    }
    return datasets.Dataset.from_dict(rows)


def _numpy_margins(lm, dataset, direction) -> np.ndarray:
    """Independent projection: encode chosen and rejected texts separately, dot with the vector in numpy."""
    items_c = [(({"role": "user", "content": p},), c) for p, c in zip(dataset["prompt"], dataset["chosen"])]
    items_r = [(({"role": "user", "content": p},), r) for p, r in zip(dataset["prompt"], dataset["rejected"])]
    config = EncodeConfig(
        layers=(direction.layer,),
        poolings=(direction.pooling,),
        template=direction.template,
        max_length=direction.max_length,
        prefix_sharing=False,
    )
    c = encode(lm, items_c, config).get(direction.layer, direction.pooling).double().numpy()
    r = encode(lm, items_r, config).get(direction.layer, direction.pooling).double().numpy()
    raw = (c - r) @ direction.vector.double().numpy()
    raw[np.array(dataset["chosen"]) == np.array(dataset["rejected"])] = 0.0
    return raw


def _levels_by_hand(raw: np.ndarray, levels: int = 4) -> np.ndarray:
    positive = raw[raw > 0]
    assert len(positive) >= 3 and (raw < 0).any()  # the test data must exercise every level
    edges = [0.0] + list(np.quantile(positive, np.arange(1, levels - 1) / (levels - 1)))
    return np.array([sum(x > e for e in edges) for x in raw], dtype=float)


def test_multi_direction_annotation_equals_separate_annotations(tiny_lm, two_directions, preferences):
    from legend.pipeline import AnnotateSettings, annotate

    safety, helpful = two_directions
    settings = AnnotateSettings(encoding=EncodeConfig(batch_size=64))
    both = annotate(preferences, [safety, helpful], tiny_lm, settings)
    alone_safety = annotate(preferences, safety, tiny_lm, settings)
    alone_helpful = annotate(preferences, helpful, tiny_lm, settings)

    table = both.dataset
    assert table.column_names[-4:] == ["margin_raw", "margin", "margin_raw_helpful", "margin_helpful"]
    np.testing.assert_allclose(table["margin_raw"], alone_safety.dataset["margin_raw"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table["margin_raw_helpful"], alone_helpful.dataset["margin_raw"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(table["margin_helpful"], alone_helpful.dataset["margin"])
    # Against an independent numpy projection, and bins by hand, each with its own edges.
    for column, direction in (("margin_raw", safety), ("margin_raw_helpful", helpful)):
        expected = _numpy_margins(tiny_lm, preferences, direction)
        np.testing.assert_allclose(table[column], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(table["margin"], _levels_by_hand(np.array(table["margin_raw"])))
    np.testing.assert_array_equal(table["margin_helpful"], _levels_by_hand(np.array(table["margin_raw_helpful"])))
    assert table["margin_raw_helpful"][-1] == 0.0  # identical pair
    assert both.secondary["helpful"]["binning"].edges != both.binning.edges
    assert both.summary["other_directions"]["helpful"]["layer"] == 2
    # The shared pass reports the same token counts as a single-direction pass.
    for key in ("tokens", "forward_tokens", "truncated_texts"):
        assert both.summary[key] == alone_safety.summary[key] is not None


def test_multi_direction_is_one_encoding_pass(tiny_lm, two_directions, preferences, monkeypatch):
    from legend.encoding import TransformersEncoder
    from legend.pipeline import AnnotateSettings, annotate

    calls = []
    real = TransformersEncoder.encode
    monkeypatch.setattr(
        TransformersEncoder, "encode", lambda self, items, config: calls.append(config) or real(self, items, config)
    )
    annotate(preferences, list(two_directions), tiny_lm, AnnotateSettings(encoding=EncodeConfig(batch_size=64)))
    assert len(calls) == 1
    assert set(calls[0].layers) == {4, 2} and set(calls[0].poolings) == {"last", "mean"}


def test_mismatched_directions_are_refused(tiny_lm, two_directions, preferences):
    from legend.pipeline import annotate

    safety, helpful = two_directions
    cases = [
        (dataclasses.replace(helpful, fingerprint="sha256:0000"), "fingerprint"),
        (dataclasses.replace(helpful, max_length=64), "max_length"),
        (dataclasses.replace(helpful, template="plain"), "template"),
        (dataclasses.replace(helpful, name="safety"), "named 'safety'"),
    ]
    for other, message in cases:
        with pytest.raises(ValueError, match=message):
            annotate(preferences, [safety, other], tiny_lm)


def test_cli_annotate_with_two_directions(tiny_lm, two_directions, preferences, tmp_path):
    from legend.cli import app
    from legend.pipeline import annotate

    model_dir = tmp_path / "model"
    tiny_lm.model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    safety, helpful = two_directions
    safety.save(tmp_path / "safety")
    helpful.save(tmp_path / "helpful")
    data = tmp_path / "prefs.jsonl"
    preferences.to_json(data)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "annotate",
            "--direction",
            str(tmp_path / "safety"),
            "--direction",
            str(tmp_path / "helpful"),
            "--data",
            str(data),
            "--out",
            str(out),
            "-m",
            str(model_dir),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = annotate(preferences, [safety, helpful], tiny_lm).dataset
    np.testing.assert_allclose(
        [r["margin_raw_helpful"] for r in rows], expected["margin_raw_helpful"], rtol=1e-5, atol=1e-6
    )
    sidecar = json.loads((tmp_path / ".legend" / "out.jsonl.json").read_text())
    assert sidecar["other_binnings"]["helpful"]["columns"] == ["margin_raw_helpful", "margin_helpful"]
    assert sidecar["other_binnings"]["helpful"]["edges"][1] == pytest.approx(
        float(np.quantile([x for x in expected["margin_raw_helpful"] if x > 0], 1 / 3))
    )

    dataclasses.replace(helpful, max_length=64, name="short").save(tmp_path / "short")
    bad = CliRunner().invoke(
        app,
        [
            "annotate",
            "--direction",
            str(tmp_path / "safety"),
            "--direction",
            str(tmp_path / "short"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "bad.jsonl"),
            "-m",
            str(model_dir),
            "-q",
        ],
    )
    assert bad.exit_code == 2 and "max_length" in bad.output and not (tmp_path / "bad.jsonl").exists()


def test_settings_resolve_levels_once_and_refuse_a_binning_they_contradict():
    from legend.annotation import AnnotateSettings
    from legend.margins import DEFAULT_LEVELS, Binning

    assert AnnotateSettings().levels == DEFAULT_LEVELS and AnnotateSettings().level_values is None
    assert AnnotateSettings(level_values=(0.0, 0.5, 2.0)).levels == 3  # counted from the values
    binning = Binning(edges=[0.0, 1.5], values=[0.0, 1.0, 3.0], source="bins.json")
    given = AnnotateSettings(binning=binning)  # the binning's levels and values, also for secondary directions
    assert (given.levels, given.level_values) == (3, (0.0, 1.0, 3.0))
    assert AnnotateSettings(binning=binning, levels=3, level_values=(0.0, 1.0, 3.0)).levels == 3  # agreeing is fine
    with pytest.raises(ValueError, match=r"levels=4 conflicts with the given binning \(bins.json\): 3 levels"):
        AnnotateSettings(binning=binning, levels=4)
    with pytest.raises(ValueError, match=r"level_values=\[0.0, 1.0, 2.0\] conflict with the given binning"):
        AnnotateSettings(binning=binning, level_values=(0.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="2 level values given for 4 levels"):
        AnnotateSettings(levels=4, level_values=(0.0, 1.0))


def test_a_loaded_binning_sets_the_levels_of_every_direction(tiny_lm, two_directions, preferences):
    """With bins from an earlier run, the other directions are fitted with as many levels as the loaded bins."""
    from legend.annotation import AnnotateSettings, annotate
    from legend.margins import Binning

    loaded = Binning(edges=[0.0], values=[0.0, 1.0])
    table = annotate(preferences, list(two_directions), tiny_lm, AnnotateSettings(binning=loaded)).dataset
    raw = np.asarray(table["margin_raw_helpful"])
    assert set(table["margin_helpful"]) <= {0.0, 1.0}  # two levels, as loaded (4 were fitted before)
    expected = np.where(raw <= 0, 0.0, 1.0)  # 2 levels: raw <= 0 -> 0, every positive margin -> 1
    np.testing.assert_array_equal(table["margin_helpful"], expected)
    np.testing.assert_array_equal(table["margin"], loaded.apply(np.asarray(table["margin_raw"])))
