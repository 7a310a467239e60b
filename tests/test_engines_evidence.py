"""What `legend annotate` keeps and reports from its one encoding pass: the embedding differences
(`--keep-differences`, checked against numpy pooling of `output_hidden_states`, also after a resume), the
agreement with the labels against the random floor (checked against `quality.random_floor` on those
differences), and the model's recommended direction when none is given (built once, cached, reused)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import hh_rows, read_jsonl, write_jsonl
from legend.annotation.differences import differences_path, read_differences
from legend.directions import Direction
from legend.encoding import render, resolve_layer, template_kind
from legend.models import load_model


def pooled(lm, prompt, answer: str, layer: int, pooling: str) -> np.ndarray:
    """e(prompt ⊕ answer) computed independently: one text, `output_hidden_states`, numpy pooling."""
    kind = template_kind(lm.tokenizer, "auto")
    prefix, text = render(lm.tokenizer, prompt, answer, kind)
    prefix_ids = lm.tokenizer(prefix, add_special_tokens=kind == "plain")["input_ids"]
    ids = prefix_ids + lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        states = lm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    hidden = states[resolve_layer(layer, lm.num_layers)][0].double().numpy()
    return hidden[-1] if pooling == "last" else hidden[len(prefix_ids) :].mean(axis=0)


def expected_differences(lm, data, direction: Direction) -> np.ndarray:
    from legend.data import read_pairs

    views = read_pairs(data).views
    return np.stack(
        [
            pooled(lm, v.prompt, v.chosen, direction.layer, direction.pooling)
            - pooled(lm, v.prompt, v.rejected, direction.layer, direction.pooling)
            for v in views
        ]
    )


def annotate(args, env=None):
    from legend.cli import app

    return CliRunner().invoke(app, ["annotate", *[str(a) for a in args], "-q"], env=env)


def test_kept_differences_equal_output_hidden_states_and_explain_the_margins(tmp_path, tiny_cli_model):
    model_dir, direction_dir = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(8))
    out = tmp_path / "prefs" / "out.jsonl"
    result = annotate(
        ["--data", data, "--out", out, "--direction", direction_dir, "-m", model_dir, "--keep-differences",
         "--chunk-rows", 3]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    direction = Direction.load(direction_dir)
    diffs = read_differences(differences_path(out), 8)
    lm = load_model(str(model_dir))
    np.testing.assert_allclose(diffs, expected_differences(lm, data, direction), atol=2e-4)
    rows = read_jsonl(out)
    np.testing.assert_allclose(diffs @ direction.vector.double().numpy(), [r["margin_raw"] for r in rows], atol=1e-4)
    assert not diffs[3].any()  # the identical pair: a zero difference, margin exactly 0
    assert sorted(p.name for p in out.parent.iterdir()) == [".legend", "README.md", "out.jsonl"]
    # The hidden folder holds the metadata and the differences; the folder loads as the rows only.
    import datasets

    assert datasets.load_dataset(str(out.parent), split="train").num_rows == 8


def test_kept_differences_survive_a_resume(tmp_path, tiny_cli_model, monkeypatch):
    """An interrupted run resumed from its finished chunks writes the same differences as a run in one go."""
    from legend.annotation import AnnotateSettings
    from legend.engines import local
    from legend.pipeline import annotate_file

    model_dir, direction_dir = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(8))
    settings = AnnotateSettings(chunk_rows=3, keep_differences=True)
    annotate_file(data, str(direction_dir), tmp_path / "whole.jsonl", str(model_dir), settings)
    real, calls = local.chunk_margins, []

    def dies_on_the_third_chunk(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(local, "chunk_margins", dies_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        annotate_file(data, str(direction_dir), tmp_path / "resumed.jsonl", str(model_dir), settings)
    monkeypatch.setattr(local, "chunk_margins", real)
    result = annotate_file(data, str(direction_dir), tmp_path / "resumed.jsonl", str(model_dir), settings)
    assert result.summary["resume"]["chunks_reused"] == 2
    np.testing.assert_array_equal(
        read_differences(differences_path(tmp_path / "resumed.jsonl"), 8),
        read_differences(differences_path(tmp_path / "whole.jsonl"), 8),
    )


def test_annotate_reports_agreement_against_the_floor_of_the_same_pass(tmp_path, tiny_cli_model):
    """hh rows carry labels: the summary's evidence equals quality's metrics and floor computed independently
    from the kept differences with the same seed."""
    from legend.quality import evaluate_margins, random_floor

    model_dir, direction_dir = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(30))
    out = tmp_path / "out.jsonl"
    result = annotate(
        ["--data", data, "--out", out, "--direction", direction_dir, "-m", model_dir, "--keep-differences",
         "--random-directions", 40, "--seed", 3, "--summary-json"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    evidence = summary["evidence"]
    assert evidence["labels"] == "the hh layout's" and evidence["random_directions"] == 40 and evidence["n"] == 30
    rows = read_jsonl(out)
    from legend.data import read_pairs

    views = read_pairs(data).views
    raw = np.array([r["margin_raw"] for r in rows])
    chosen, rejected = [v.chosen for v in views], [v.rejected for v in views]
    diffs = read_differences(differences_path(out), 30)
    floor = random_floor(diffs, raw, chosen, rejected, n_directions=40, seed=3)
    metrics = evaluate_margins(raw, chosen, rejected, seed=3)["metrics"]
    for name in ("share_positive", "agreement_length_balanced", "auc"):
        got = evidence["metrics"][name]
        assert got["value"] == pytest.approx(metrics[name]["value"])
        assert got["ci_low"] == pytest.approx(metrics[name]["ci_low"])
        assert got["floor"] == pytest.approx(floor["metrics"][name]["floor"], abs=1e-9)
        if got["value"] is not None:  # (undefined where every chosen answer is the longer one)
            assert got["above"] == (got["value"] > got["floor"])
    assert evidence["metrics"]["share_positive"]["value"] is not None
    # Explicit-layout rows carry no labels: no evidence unless asked for.
    explicit = write_jsonl(tmp_path / "explicit.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 4)
    quiet = annotate(["--data", explicit, "--out", tmp_path / "e.jsonl", "--direction", direction_dir, "-m",
                      model_dir, "--summary-json"])  # fmt: skip
    assert quiet.exit_code == 0 and "evidence" not in json.loads(quiet.output[quiet.output.index("{") :])


def test_annotate_without_a_direction_builds_the_recommended_one_once(tmp_path, tiny_cli_model, monkeypatch):
    model_dir, _ = tiny_cli_model
    monkeypatch.setenv("LEGEND_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(6))
    first = annotate(["--data", data, "--out", tmp_path / "a.jsonl", "-m", model_dir])
    assert first.exit_code == 0, first.output
    assert "built the model's recommended direction" in " ".join(first.output.split())
    cached = list((tmp_path / "cache" / "directions").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("legend-")
    direction = Direction.load(cached[0])
    assert direction.pooling == "mean" and direction.extra["recipe"] == "legend" and direction.n_pairs == 131
    second = annotate(["--data", data, "--out", tmp_path / "b.jsonl", "-m", model_dir])
    assert second.exit_code == 0 and "used the cached direction" in " ".join(second.output.split())
    assert [r["margin_raw"] for r in read_jsonl(tmp_path / "a.jsonl")] == [
        r["margin_raw"] for r in read_jsonl(tmp_path / "b.jsonl")
    ]
    # The same margins as annotating with that folder given explicitly.
    third = annotate(["--data", data, "--out", tmp_path / "c.jsonl", "-m", model_dir, "--direction", cached[0]])
    assert third.exit_code == 0
    assert [r["margin_raw"] for r in read_jsonl(tmp_path / "c.jsonl")] == [
        r["margin_raw"] for r in read_jsonl(tmp_path / "a.jsonl")
    ]


def test_bad_data_fails_before_a_recommended_direction_is_built(tmp_path, tiny_cli_model, monkeypatch):
    model_dir, _ = tiny_cli_model
    monkeypatch.setenv("LEGEND_CACHE", str(tmp_path / "cache"))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": 5, "rejected": "b"}])
    result = annotate(["--data", bad, "--out", tmp_path / "o.jsonl", "-m", model_dir])
    assert result.exit_code == 2 and "row 1: field 'chosen'" in result.output
    assert not (tmp_path / "cache").exists()
