"""legend.audit / `legend audit`: scores, flags, simulated flips with a known answer."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from typer.testing import CliRunner

from legend.audit import AuditSettings, add_audit_columns, audit_margins, flip_labels, robust_scale, simulate_flips
from legend.cli import app


def test_robust_scale_is_normalised_mad():
    raw = np.array([0.0, 1.0, 2.0, 4.0, 100.0])
    # median 2, absolute deviations 2, 1, 0, 2, 98 -> MAD 2
    assert robust_scale(raw) == pytest.approx(1.482602218505602 * 2)
    assert robust_scale(np.array([1.0, 1.0, 1.0, 5.0])) == pytest.approx(np.std([1.0, 1.0, 1.0, 5.0]))
    assert robust_scale(np.zeros(3)) == 1.0


def test_flags_need_both_the_quantile_and_the_score():
    raw = np.array([3.0, 2.5, 2.0, 1.5, 1.0, 0.5, -0.2, -1.0, -4.0, -6.0])
    scale = 1.482602218505602 * np.median(np.abs(raw - np.median(raw)))
    result = audit_margins(raw, AuditSettings(quantile=0.3, min_score=1.0))
    np.testing.assert_allclose(result.scores, -raw / scale)
    q30 = np.quantile(raw, 0.3)
    expected = (raw <= q30) & (-raw / scale >= 1.0)
    np.testing.assert_array_equal(result.flags, expected)
    assert result.flags.tolist() == [False] * 8 + [True, True]  # -1.0 is in the quantile but under 1 SD
    loose = audit_margins(raw, AuditSettings(quantile=0.3, min_score=0.0))
    assert loose.flags.sum() == 3
    with pytest.raises(ValueError, match="quantile"):
        AuditSettings(quantile=0.0)


def test_flip_labels_is_seeded_and_negates_exactly_the_flipped_rows():
    raw = np.arange(1.0, 101.0)
    flipped, mask = flip_labels(raw, 0.1, seed=4)
    assert mask.sum() == 10
    np.testing.assert_array_equal(flipped[mask], -raw[mask])
    np.testing.assert_array_equal(flipped[~mask], raw[~mask])
    _again, mask_again = flip_labels(raw, 0.1, seed=4)
    np.testing.assert_array_equal(mask, mask_again)
    assert not np.array_equal(mask, flip_labels(raw, 0.1, seed=5)[1])
    with pytest.raises(ValueError, match="flip rate"):
        flip_labels(raw, 1.5)


def test_simulated_flips_perfect_when_the_direction_separates():
    # Every clean margin is clearly positive, so flipped ones are exactly the clearly negative ones.
    raw = np.random.default_rng(0).uniform(1.0, 2.0, 400)
    measured = simulate_flips(raw, 0.1, seed=1)
    assert measured["flipped"] == 40 and measured["flagged"] == 40
    assert measured["precision"] == 1.0 and measured["recall"] == 1.0
    assert measured["base_rate"] == pytest.approx(0.1)
    assert measured["average_precision"] == pytest.approx(1.0)


def test_simulated_flips_against_a_hand_count():
    # 200 pairs; 20 are already mislabelled (strongly negative); 10% more get flipped.
    rng = np.random.default_rng(2)
    raw = rng.uniform(1.0, 2.0, 200)
    raw[:20] = -raw[:20]
    settings = AuditSettings(quantile=0.5, min_score=0.5)
    measured = simulate_flips(raw, 0.1, seed=3, settings=settings)
    flipped_raw, truth = flip_labels(raw, 0.1, seed=3)
    flags = audit_margins(flipped_raw, settings).flags
    true_positive = int((flags & truth).sum())
    assert measured["precision"] == pytest.approx(true_positive / flags.sum())
    assert measured["recall"] == pytest.approx(true_positive / truth.sum())
    # Flips of already-wrong pairs make them look right; flips of right ones are all caught.
    assert measured["recall"] == pytest.approx((truth[20:]).sum() / truth.sum())
    assert measured["precision"] < 1.0  # the original 20 errors count as false positives


def test_add_audit_columns_keeps_every_row_in_order():
    table = datasets.Dataset.from_dict({"id": [1, 2, 3], "audit_flag": [True, True, True]})
    result = audit_margins(np.array([2.0, -5.0, 1.0]), AuditSettings(quantile=0.5))
    out = add_audit_columns(table, result)
    assert out["id"] == [1, 2, 3]
    assert out["audit_flag"] == [False, True, False]
    np.testing.assert_allclose(out["audit_score"], result.scores)
    with pytest.raises(ValueError, match="3 rows but 2"):
        add_audit_columns(table, audit_margins(np.array([1.0, 2.0])))


def _write(path, raw):
    rows = [
        {"prompt": f"q{i}", "chosen": f"safe {i}", "rejected": f"bad {i}", "margin_raw": float(m)}
        for i, m in enumerate(raw)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_cli_audit_writes_all_rows_and_measures_flips(tmp_path):
    raw = np.random.default_rng(5).uniform(1.0, 2.0, 100)
    raw[[3, 50]] = [-5.0, -4.0]
    _write(tmp_path / "ann.jsonl", raw)
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "--data",
            str(tmp_path / "ann.jsonl"),
            "--out",
            str(tmp_path / "a.jsonl"),
            "--simulate-flips",
            "0.1",
            "--seed",
            "0",
            "--json",
            str(tmp_path / "a.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 100 and [r["prompt"] for r in rows] == [f"q{i}" for i in range(100)]
    assert [i for i, r in enumerate(rows) if r["audit_flag"]] == [3, 50]
    summary = json.loads((tmp_path / "a.json").read_text())
    assert summary["flagged"] == 2 and summary["simulated_flips"]["flipped"] == 10
    assert "precision" in result.output and "recall" in result.output
    assert not (tmp_path / ".legend").exists()  # no metadata in, none out
    (tmp_path / "ann.jsonl.legend.json").write_text(json.dumps({"binning": {"edges": [0.0, 1.5]}}))  # an old sidecar
    assert (
        CliRunner()
        .invoke(app, ["audit", "--data", str(tmp_path / "ann.jsonl"), "--out", str(tmp_path / "b.jsonl")])
        .exit_code
        == 0
    )
    carried = json.loads((tmp_path / ".legend" / "b.jsonl.json").read_text())
    assert carried["binning"]["edges"] == [0.0, 1.5] and carried["audit"]["flagged"] == 2


def test_cli_audit_needs_something_to_do(tmp_path):
    _write(tmp_path / "ann.jsonl", [1.0, 2.0])
    result = CliRunner().invoke(app, ["audit", "--data", str(tmp_path / "ann.jsonl")])
    assert result.exit_code == 2 and "nothing to do" in result.output
