"""Streamed file annotation (legend.engines.local): chunks, resume, several directions, bounded reading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import hh_pair_items, hh_rows, read_jsonl, write_jsonl
from legend.encoding import (
    EncodeConfig,
    encode,
)

SYSTEM_AND_USER = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I pick a lock?"})


# ---------------------------------------------------------------- streamed annotate_file


@pytest.fixture(scope="module")
def tiny_direction(tiny_lm, tmp_path_factory):
    from legend.data import ContrastPair
    from legend.directions import build_direction

    pairs = [
        ContrastPair(f"How do I do thing {i}?", f"Sure, here is how {i}", "I can't answer that.") for i in range(6)
    ]
    folder = tmp_path_factory.mktemp("direction") / "direction"
    build_direction(tiny_lm, pairs, layer=2, pooling="mean").save(folder)
    return folder


def test_streamed_annotation_equals_the_in_memory_one(tmp_path, tiny_lm, tiny_direction):
    from legend.data import load_table
    from legend.pipeline import AnnotateSettings, annotate, annotate_file, sidecar_path

    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(23))
    expected = annotate(
        load_table(data), tiny_direction, tiny_lm, AnnotateSettings(encoding=EncodeConfig(prefix_sharing=False))
    ).dataset
    result = annotate_file(data, tiny_direction, tmp_path / "out.jsonl", tiny_lm, AnnotateSettings(chunk_rows=5))
    assert result.summary["rows"] == 23 and result.margins.extra["chunks"] == 5
    got = read_jsonl(tmp_path / "out.jsonl")
    assert [{k: v for k, v in row.items() if not k.startswith("margin")} for row in got] == hh_rows(23)
    np.testing.assert_allclose([r["margin_raw"] for r in got], expected["margin_raw"], atol=1e-5)
    assert [r["margin"] for r in got] == expected["margin"]
    assert got[3]["margin_raw"] == 0.0
    sidecar = json.loads(sidecar_path(tmp_path / "out.jsonl").read_text())
    assert sidecar["binning"]["edges"] == pytest.approx(result.binning.edges)
    # Parquet output holds the same rows; the limit stops the stream.
    annotate_file(data, tiny_direction, tmp_path / "out.parquet", tiny_lm, AnnotateSettings(chunk_rows=4), limit=10)
    parquet = load_table(tmp_path / "out.parquet")
    assert parquet["id"] == list(range(10))
    np.testing.assert_allclose(parquet["margin_raw"], [r["margin_raw"] for r in got[:10]], atol=1e-5)


def test_a_bad_row_is_named_in_the_whole_file_and_nothing_is_written(tmp_path, tiny_lm, tiny_direction):
    from legend.data import DataError
    from legend.pipeline import AnnotateSettings, annotate_file

    rows = hh_rows(12)
    rows[10]["chosen"] = 5
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(DataError, match="row 11: field 'chosen'"):
        annotate_file(data, tiny_direction, tmp_path / "out.jsonl", tiny_lm, AnnotateSettings(chunk_rows=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


_PEAK_RSS = """
import resource, sys
from legend.data import iter_chunks
for chunk in iter_chunks(sys.argv[1], chunk_rows=50):  # imports, caches and one chunk: not what is measured
    break
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rows = 0
for chunk in iter_chunks(sys.argv[2], chunk_rows=50):
    assert len(chunk) <= 50
    rows += len(chunk["chosen"])
print(rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)  # KiB of peak resident memory added
"""


def test_streamed_reading_holds_one_chunk_not_the_file(tmp_path):
    """Peak resident memory (which counts Arrow's buffers, unlike tracemalloc) does not grow with the file."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import legend

    warm = write_jsonl(tmp_path / "warm.jsonl", hh_rows(100, pad=2000))
    env = dict(os.environ, PYTHONPATH=str(Path(legend.__file__).parents[1]))

    def peak_growth(n_rows):
        path = write_jsonl(tmp_path / f"rows{n_rows}.jsonl", hh_rows(n_rows, pad=2000))
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, str(warm), str(path)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        rows, kib = map(int, done.stdout.split())
        assert rows == n_rows
        return kib * 1024, path.stat().st_size

    (small, small_size), (large, large_size) = peak_growth(2000), peak_growth(8000)
    # 25 MB more text in the file; holding the rows would need at least all of it (Arrow) or twice (Python).
    assert large - small < 0.25 * (large_size - small_size), (small, large, large_size - small_size)


@pytest.mark.e2e
def test_prefix_sharing_margins_match_the_plain_path_on_the_embedded_model():
    from legend.margins import project
    from legend.models import load_model

    lm = load_model("default")
    _views, items = hh_pair_items(4)
    vector = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    config = dict(layers=(-1, 15), poolings=("last", "mean"))  # last layer and a middle one, both poolings
    shared = encode(lm, items, EncodeConfig(**config, prefix_sharing=True))
    plain = encode(lm, items, EncodeConfig(**config, prefix_sharing=False))
    assert shared.n_forward_tokens < 0.8 * plain.n_forward_tokens
    for key, vectors in plain.vectors.items():
        expected = project(vectors[:4], vectors[4:], vector / vector.norm())
        got = project(shared.vectors[key][:4], shared.vectors[key][4:], vector / vector.norm())
        assert np.abs(got - expected).max() < 1e-3, (key, got - expected)
        assert np.abs(expected).max() > 1e-2  # the margins are not trivially zero


# ---------------------------------------------------------------- several directions, streamed; resume


@pytest.fixture(scope="module")
def second_direction(tiny_lm, tmp_path_factory):
    """A second concept at another layer and pooling, so the pass captures two (layer, pooling) pairs."""
    from legend.data import ContrastPair
    from legend.directions import build_direction

    pairs = [
        ContrastPair(f"Explain topic {i}.", "No.", f"Topic {i} works like this: the fox, then the dog.")
        for i in range(6)
    ]
    folder = tmp_path_factory.mktemp("helpful") / "helpful"
    build_direction(tiny_lm, pairs, layer=-1, pooling="last", name="helpful").save(folder)
    return folder


def test_several_directions_are_streamed_and_equal_the_in_memory_annotation(
    tmp_path, tiny_lm, tiny_direction, second_direction, monkeypatch
):
    import legend.engines.local as local
    from legend.data import load_table
    from legend.pipeline import AnnotateSettings, annotate, annotate_file, sidecar_path

    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(23))
    directions = [tiny_direction, second_direction]
    expected = annotate(load_table(data), directions, tiny_lm, AnnotateSettings())
    seen = []  # rows given to each encoding pass: the data must go through in chunks, once for both directions
    real = local.compute_margins_multi
    monkeypatch.setattr(
        local,
        "compute_margins_multi",
        lambda lm, views, dirs, *args, **kwargs: seen.append(len(views)) or real(lm, views, dirs, *args, **kwargs),
    )
    result = annotate_file(data, directions, tmp_path / "out.jsonl", tiny_lm, AnnotateSettings(chunk_rows=5))
    assert seen == [5, 5, 5, 5, 3] and result.dataset is None and result.margins.extra["chunks"] == 5

    got = read_jsonl(tmp_path / "out.jsonl")
    table = expected.dataset
    assert (
        list(got[0])
        == table.column_names
        == ["id", "chosen", "rejected", "margin_raw", "margin", "margin_raw_helpful", "margin_helpful"]
    )
    for column in table.column_names:
        values = [row[column] for row in got]
        if column.startswith("margin_raw"):
            np.testing.assert_allclose(values, table[column], atol=1e-5)
        else:
            assert values == table[column], column
    # Each direction has its own edges: 0, then the positive margins' terciles (by hand, numpy).
    for column, binning in (
        ("margin_raw", result.binning),
        ("margin_raw_helpful", result.secondary["helpful"]["binning"]),
    ):
        positive = np.array([r[column] for r in got if r[column] > 0])
        assert binning.edges == pytest.approx([0.0, *np.quantile(positive, [1 / 3, 2 / 3])], abs=1e-6)
    assert result.binning.edges != result.secondary["helpful"]["binning"].edges
    sidecar = json.loads(sidecar_path(tmp_path / "out.jsonl").read_text())
    assert sidecar["direction_path"] == [str(tiny_direction), str(second_direction)]
    assert sidecar["other_binnings"]["helpful"]["columns"] == ["margin_raw_helpful", "margin_helpful"]
    assert sidecar["other_binnings"]["helpful"]["edges"] == pytest.approx(
        expected.secondary["helpful"]["binning"].edges, abs=1e-6
    )
    assert set(sidecar["summary"]) >= set(expected.summary)
    assert sidecar["summary"]["other_directions"]["helpful"]["columns"] == ["margin_raw_helpful", "margin_helpful"]
    assert (
        sidecar["summary"]["other_directions"]["helpful"]["margin"]
        == expected.summary["other_directions"]["helpful"]["margin"]
    )
    assert (
        (sidecar["summary"]["tokens"], sidecar["summary"]["identical_pairs"])
        == (expected.summary["tokens"], expected.summary["identical_pairs"])
        == (result.margins.n_tokens, 1)
    )


def _failing_on_call(monkeypatch, fail_at=None):
    """Record each pass-1 chunk computation (the number of its first row); raise as a crash would on call `fail_at`."""
    import legend.engines.local as local

    calls = []
    real = local.chunk_margins

    def counting(lm, views, directions, settings):
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("killed")
        calls.append(int(views[0].prompt[0]["content"].split()[-1]))  # "tell me about <word> <row number>"
        return real(lm, views, directions, settings)

    monkeypatch.setattr(local, "chunk_margins", counting)
    return calls


def test_an_interrupted_run_resumes_from_its_finished_chunks(
    tmp_path, tiny_lm, tiny_direction, second_direction, monkeypatch, caplog
):
    import os

    from legend.engines.local import work_folder
    from legend.pipeline import AnnotateSettings, annotate_file, sidecar_path

    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(23))
    directions, settings = [tiny_direction, second_direction], AnnotateSettings(chunk_rows=4)  # 6 chunks
    with monkeypatch.context() as patch:
        _failing_on_call(patch)
        annotate_file(data, directions, tmp_path / "whole.jsonl", tiny_lm, settings, resume=False)
    assert not work_folder(tmp_path / "whole.jsonl").exists()

    out = tmp_path / "out.jsonl"
    with monkeypatch.context() as patch:
        calls = _failing_on_call(patch, fail_at=3)
        with pytest.raises(RuntimeError, match="killed"):
            annotate_file(data, directions, out, tiny_lm, settings)
    work = work_folder(out)
    assert len(calls) == 3 and not out.exists() and not sidecar_path(out).exists()
    assert sorted(p.name for p in work.iterdir()) == [
        "chunk-000000.npz",
        "chunk-000001.npz",
        "chunk-000002.npz",
        "manifest.json",
    ]

    with monkeypatch.context() as patch:
        calls = _failing_on_call(patch)
        result = annotate_file(data, directions, out, tiny_lm, settings)
    # Chunks 0-2 were read back; only chunks 3-5 (rows 12, 16, 20 first) were computed.
    assert calls == [12, 16, 20]
    assert result.summary["resume"]["chunks_reused"] == 3 and result.summary["resume"]["chunks_computed"] == 3
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()  # bit for bit the uninterrupted output
    assert not work.exists()
    assert (
        result.summary["tokens"] == json.loads(sidecar_path(tmp_path / "whole.jsonl").read_text())["summary"]["tokens"]
    )

    # The same crash, then the input is only touched (new mtime, same bytes): the input is identified by its
    # content, so the finished chunks are reused.
    with monkeypatch.context() as patch:
        _failing_on_call(patch, fail_at=3)
        with pytest.raises(RuntimeError):
            annotate_file(data, directions, out, tiny_lm, settings)
    os.utime(data, ns=(os.stat(data).st_atime_ns, os.stat(data).st_mtime_ns + 10**9))
    with monkeypatch.context() as patch:
        calls = _failing_on_call(patch)
        result = annotate_file(data, directions, out, tiny_lm, settings)
    assert calls == [12, 16, 20] and result.summary["resume"]["chunks_reused"] == 3
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()

    # The same crash, then the input is edited in place keeping its size and modification time: nothing of the
    # first try may be reused (issue 17: resume trusted path, size and mtime).
    with monkeypatch.context() as patch:
        _failing_on_call(patch, fail_at=3)
        with pytest.raises(RuntimeError):
            annotate_file(data, directions, out, tiny_lm, settings)
    stat = os.stat(data)
    text = data.read_text()
    edited = text.replace("tell me about", "tell me abuot", 1)
    assert edited != text and len(edited) == len(text)
    data.write_text(edited)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.stat(data).st_size, os.stat(data).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    with monkeypatch.context() as patch, caplog.at_level("WARNING", logger="legend.engines"):
        calls = _failing_on_call(patch)
        result = annotate_file(data, directions, out, tiny_lm, settings)
    assert len(calls) == 6 and result.summary["resume"]["discarded_because"] == ["input"]
    assert "different input: starting clean" in caplog.text
    edited_whole = tmp_path / "edited" / "whole.jsonl"
    with monkeypatch.context() as patch:
        _failing_on_call(patch)
        annotate_file(data, directions, edited_whole, tiny_lm, settings, resume=False)
    assert out.read_bytes() == edited_whole.read_bytes()


def test_resume_key_changes_with_what_changes_the_numbers(tmp_path, tiny_lm, tiny_direction, second_direction):
    import dataclasses

    from legend.directions import Direction
    from legend.engines.local import resume_key
    from legend.pipeline import AnnotateSettings

    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(5))
    direction = Direction.load(tiny_direction)
    settings = AnnotateSettings(chunk_rows=4)
    key = lambda d=direction, s=settings, limit=None: resume_key(data, [d], tiny_lm, s, split="train", limit=limit)  # noqa: E731
    base = key()
    assert key() == base

    def encoding(**changes):
        return dataclasses.replace(settings, encoding=dataclasses.replace(settings.encoding, **changes))

    rounding_only = dataclasses.replace(encoding(batch_size=3, max_batch_tokens=99), levels=7)
    assert key(s=rounding_only) == base  # batching changes margins by rounding only; levels only the binning
    changed = {
        "chunk_rows": key(s=dataclasses.replace(settings, chunk_rows=5)),
        "max_length": key(s=encoding(max_length=16)),
        "prefix_sharing": key(s=encoding(prefix_sharing=False)),
        "limit": key(limit=3),
        "directions": key(d=dataclasses.replace(direction, vector=-direction.vector)),
    }
    for field, other in changed.items():
        assert [k for k in base if base[k] != other[k]] == [field], field
    assert key(d=dataclasses.replace(direction, layer=1))["directions"] != base["directions"]
    assert (
        resume_key(data, [direction, Direction.load(second_direction)], tiny_lm, settings, split="train", limit=None)[
            "directions"
        ]
        != base["directions"]
    )
