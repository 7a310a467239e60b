"""`--engine ray` on a local Ray instance with the tiny model and 2 CPU workers: same output as the local engine."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")


def test_ray_engine_equals_the_local_engine_row_for_row(tmp_path):
    from helpers import build_tiny_llama, build_tokenizer
    from helpers import hh_rows as _hh_rows
    from helpers import read_jsonl as _read_jsonl
    from helpers import write_jsonl as _write_jsonl
    from legend.data import ContrastPair
    from legend.directions import build_direction
    from legend.encoding import EncodeConfig
    from legend.models import ModelSpec, load_model
    from legend.pipeline import AnnotateSettings, annotate_file, sidecar_path

    # Actors load the model from a folder, as on a cluster (and the session's shared tiny model,
    # which other tests have run generate() on, is not pickled into them).
    tokenizer = build_tokenizer()
    build_tiny_llama(len(tokenizer), seed=5).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    tiny_lm = load_model(str(tmp_path / "model"))
    spec = ModelSpec(str(tmp_path / "model"))

    pairs = [
        ContrastPair(f"How do I do thing {i}?", f"Sure, here is how {i}", "I can't answer that.") for i in range(6)
    ]
    build_direction(tiny_lm, pairs, layer=-1).save(tmp_path / "direction")
    helpful = [ContrastPair(f"Explain topic {i}.", "No.", f"Topic {i} works like this: the fox.") for i in range(6)]
    build_direction(tiny_lm, helpful, layer=2, pooling="mean", name="helpful").save(tmp_path / "helpful")
    both = [tmp_path / "direction", tmp_path / "helpful"]
    rows = _hh_rows(30)
    data = _write_jsonl(tmp_path / "in.jsonl", rows)
    settings = AnnotateSettings(
        chunk_rows=7, encoding=EncodeConfig(max_length=40)
    )  # some texts are truncated: a count to carry back
    local = annotate_file(data, tmp_path / "direction", tmp_path / "local.jsonl", tiny_lm, settings)
    kept = dataclasses.replace(settings, keep_differences=True, random_directions=30)
    local_both = annotate_file(data, both, tmp_path / "local_both.jsonl", tiny_lm, kept)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = annotate_file(
            data, tmp_path / "direction", tmp_path / "ray.jsonl", spec, settings, engine="ray", num_workers=2
        )
        annotate_file(
            data, tmp_path / "direction", tmp_path / "shards", spec, settings, engine="ray", num_workers=2, limit=12
        )
        ray_both = annotate_file(data, both, tmp_path / "ray_both.jsonl", spec, kept, engine="ray", num_workers=2)
    finally:
        ray.shutdown()
    expected, got = _read_jsonl(tmp_path / "local.jsonl"), _read_jsonl(tmp_path / "ray.jsonl")
    assert [r["id"] for r in got] == list(range(30))
    strip = lambda r: {k: v for k, v in r.items() if k != "margin_raw"}  # noqa: E731
    assert [strip(r) for r in got] == [strip(r) for r in expected]
    np.testing.assert_allclose([r["margin_raw"] for r in got], [r["margin_raw"] for r in expected], atol=1e-5)
    assert result.binning.edges == pytest.approx(local.binning.edges, abs=1e-5)
    assert json.loads(sidecar_path(tmp_path / "ray.jsonl").read_text())["summary"]["engine"] == "ray"
    # A suffix-less output is a folder of Parquet shards written by Ray, in input order.
    import pyarrow.parquet as pq

    shards = pq.read_table(tmp_path / "shards").to_pylist()
    assert [r["id"] for r in shards] == list(range(12))
    # The counts come back from the actors: the summary equals the local engine's.
    counts = ("rows", "identical_pairs", "truncated_texts", "tokens", "forward_tokens")
    assert {k: result.summary[k] for k in counts} == {k: local.summary[k] for k in counts}
    assert local.summary["truncated_texts"] > 0 and local.summary["identical_pairs"] == 1
    assert local.summary["forward_tokens"] < local.summary["tokens"]
    # Several directions on Ray: the local engine's columns, row for row, and the same sidecar entries.
    expected, got = _read_jsonl(tmp_path / "local_both.jsonl"), _read_jsonl(tmp_path / "ray_both.jsonl")
    assert (
        list(got[0])
        == list(expected[0])
        == ["id", "chosen", "rejected", "margin_raw", "margin", "margin_raw_helpful", "margin_helpful"]
    )
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("margin_raw")}  # noqa: E731
    assert [strip(r) for r in got] == [strip(r) for r in expected]
    for column in ("margin_raw", "margin_raw_helpful"):
        np.testing.assert_allclose([r[column] for r in got], [r[column] for r in expected], atol=1e-5)
    sidecars = [
        json.loads(sidecar_path(tmp_path / name).read_text()) for name in ("local_both.jsonl", "ray_both.jsonl")
    ]
    assert sidecars[1]["other_binnings"]["helpful"]["edges"] == pytest.approx(
        sidecars[0]["other_binnings"]["helpful"]["edges"], abs=1e-5
    )
    assert {k: sidecars[1]["summary"][k] for k in counts} == {k: sidecars[0]["summary"][k] for k in counts}
    # Kept differences and the evidence of the same pass: the Ray engine's equal the local engine's.
    from legend.annotation.differences import differences_path, read_differences

    for column in ("margin_raw", "margin_raw_helpful"):
        np.testing.assert_allclose(
            read_differences(differences_path(tmp_path / "ray_both.jsonl"), 30, column),
            read_differences(differences_path(tmp_path / "local_both.jsonl"), 30, column),
            atol=1e-5,
        )
    for name, metric in local_both.summary["evidence"]["metrics"].items():
        got_metric = ray_both.summary["evidence"]["metrics"][name]
        for key in ("value", "floor"):
            if metric[key] is not None:
                assert got_metric[key] == pytest.approx(metric[key], abs=1e-6), (name, key)
