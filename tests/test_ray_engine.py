"""`--engine ray` on a local Ray instance with the tiny model and 2 CPU workers: same output as the local engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")


def test_ray_engine_equals_the_local_engine_row_for_row(tmp_path):
    from conftest import build_tiny_llama, build_tokenizer
    from test_engine import _hh_rows, _read_jsonl, _write_jsonl

    from legend.data import ContrastPair
    from legend.directions import build_direction
    from legend.models import ModelSpec, load_model
    from legend.pipeline import AnnotateSettings, annotate_file, sidecar_path

    # Actors load the model from a folder, as on a cluster (and the session's shared tiny model,
    # which other tests have run generate() on, is not pickled into them).
    tokenizer = build_tokenizer()
    build_tiny_llama(len(tokenizer), seed=5).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    tiny_lm = load_model(str(tmp_path / "model"))
    spec = ModelSpec(str(tmp_path / "model"))

    pairs = [ContrastPair(f"How do I do thing {i}?", f"Sure, here is how {i}", "I can't answer that.") for i in range(6)]
    build_direction(tiny_lm, pairs, layer=-1).save(tmp_path / "direction")
    rows = _hh_rows(30)
    data = _write_jsonl(tmp_path / "in.jsonl", rows)
    settings = AnnotateSettings(chunk_rows=7)
    local = annotate_file(data, tmp_path / "direction", tmp_path / "local.jsonl", tiny_lm, settings)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = annotate_file(data, tmp_path / "direction", tmp_path / "ray.jsonl", spec, settings,
                               engine="ray", num_workers=2)
        annotate_file(data, tmp_path / "direction", tmp_path / "shards", spec, settings, engine="ray",
                      num_workers=2, limit=12)
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
