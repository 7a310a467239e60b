"""legend.quality / `legend evaluate`: metrics checked against independent numpy/scipy computations."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from legend.cli import app
from legend.data import DataError
from legend.metrics import symmetric_auc
from legend.quality import (
    evaluate_margins,
    read_labelled_margins,
    severity_difference,
    text_length,
)


def _value(result, name):
    return result["metrics"][name]["value"]


def _walsh_auc(raw):
    """P(m_i + m_j > 0) + P(= 0)/2 over all ordered pairs (i, j), by brute force."""
    sums = raw[:, None] + raw[None, :]
    return float((sums > 0).mean() + 0.5 * (sums == 0).mean())


# Six pairs whose agreement by length group is known by hand:
#   chosen shorter (rows 0-2): margins +, +, -  -> 2/3 agree
#   chosen longer  (rows 3-5): margins -, -, +  -> 1/3 agree     balanced = (2/3 + 1/3) / 2 = 0.5
#   plus one pair of equal length (row 6, margin +) that counts in neither group.
RAW = np.array([0.5, 2.0, -1.0, -0.25, -3.0, 1.5, 0.75])
CHOSEN = ["ab", "a", "abc", "abcdef", "abcd", "abcde", "xyz"]
REJECTED = ["abcd", "abcdef", "abcdefgh", "a", "ab", "abc", "uvw"]


def test_metrics_match_hand_and_independent_computations():
    result = evaluate_margins(RAW, CHOSEN, REJECTED, n_bootstrap=0)
    length_diff = np.array([len(c) - len(r) for c, r in zip(CHOSEN, REJECTED)], dtype=float)
    assert _value(result, "share_positive") == pytest.approx(4 / 7)
    assert _value(result, "mean_margin") == pytest.approx(RAW.mean())
    assert _value(result, "median_margin") == pytest.approx(0.5)
    assert _value(result, "agreement_chosen_shorter") == pytest.approx(2 / 3)
    assert _value(result, "agreement_chosen_longer") == pytest.approx(1 / 3)
    assert _value(result, "agreement_length_balanced") == pytest.approx(0.5)
    assert _value(result, "auc") == pytest.approx(_walsh_auc(RAW))
    assert _value(result, "length_pearson") == pytest.approx(np.corrcoef(RAW, length_diff)[0, 1])
    ranks = np.corrcoef(stats.rankdata(RAW), stats.rankdata(length_diff))[0, 1]
    assert _value(result, "length_spearman") == pytest.approx(ranks)
    assert result["counts"] == {
        "pairs": 7,
        "zero_margin": 0,
        "chosen_shorter": 3,
        "chosen_longer": 3,
        "equal_length": 1,
    }
    assert "severity_spearman" not in result["metrics"]


def test_auc_with_ties_and_degenerate_cases():
    raw = np.array([1.0, -1.0, 2.0, 0.0, 0.5, -0.5, 3.0])
    assert symmetric_auc(raw) == pytest.approx(_walsh_auc(raw))
    assert symmetric_auc(np.array([1.0, 2.0, 0.1])) == 1.0
    assert symmetric_auc(np.array([-1.0, -2.0])) == 0.0
    assert symmetric_auc(np.zeros(4)) == 0.5


def test_a_pure_length_detector_is_exposed_by_the_balanced_agreement():
    rng = np.random.default_rng(3)
    chosen = ["x" * int(k) for k in rng.integers(1, 200, 300)]
    rejected = ["y" * int(k) for k in rng.integers(1, 200, 300)]
    raw = np.array([len(c) - len(r) for c, r in zip(chosen, rejected)], dtype=float)  # margin = length
    result = evaluate_margins(raw, chosen, rejected, n_bootstrap=0)
    assert _value(result, "agreement_chosen_longer") == 1.0
    assert _value(result, "agreement_chosen_shorter") == 0.0
    assert _value(result, "agreement_length_balanced") == 0.5
    assert _value(result, "length_spearman") == pytest.approx(1.0)


def test_severity_spearman_against_scipy_and_pku_mapping():
    table = datasets.Dataset.from_dict(
        {
            "response_0_severity_level": [0, 3, 1, 2, 0, 3],
            "response_1_severity_level": [2, 0, 1, 0, 3, 1],
            "safer_response_id": [0, 1, 0, 1, 0, 1],
        }
    )
    severity = severity_difference(table)
    # rejected - chosen: row 0 chosen=r0 (0) rejected=r1 (2) -> 2; row 1 chosen=r1 (0) rejected=r0 (3) -> 3; ...
    np.testing.assert_array_equal(severity, [2, 3, 0, 2, 3, 2])
    raw = np.array([0.8, 1.2, -0.1, 0.3, 0.9, 0.2])
    result = evaluate_margins(raw, ["a"] * 6, ["b"] * 6, severity, n_bootstrap=0)
    expected = stats.spearmanr(raw, severity).statistic
    assert _value(result, "severity_spearman") == pytest.approx(expected)
    assert result["counts"]["severity_known"] == 6
    named = datasets.Dataset.from_dict({"sev_c": [1, 2], "sev_r": [3, 2]})
    np.testing.assert_array_equal(severity_difference(named, ("sev_c", "sev_r")), [2, 0])
    assert severity_difference(datasets.Dataset.from_dict({"a": [1]})) is None
    with pytest.raises(DataError, match="row 2.*'sev_r'"):
        severity_difference(datasets.Dataset.from_dict({"sev_c": [1, 2], "sev_r": ["3", "high"]}), ("sev_c", "sev_r"))


def test_bootstrap_interval_contains_the_estimate_narrows_with_n_and_is_seeded():
    rng = np.random.default_rng(0)

    def run(n, seed=0):
        raw = rng.normal(0.3, 1.0, n)
        texts = ["x" * int(k) for k in rng.integers(1, 50, 2 * n)]
        return evaluate_margins(raw, texts[:n], texts[n:], n_bootstrap=300, seed=seed)

    small, large = run(100), run(1600)
    for result in (small, large):
        for name, metric in result["metrics"].items():
            assert metric["ci_low"] <= metric["value"] <= metric["ci_high"], name
    for name in ("share_positive", "auc", "mean_margin", "agreement_length_balanced"):
        width_small = small["metrics"][name]["ci_high"] - small["metrics"][name]["ci_low"]
        width_large = large["metrics"][name]["ci_high"] - large["metrics"][name]["ci_low"]
        assert width_large < 0.5 * width_small, name  # 16x the pairs: about 1/4 the width
    raw = np.linspace(-1, 2, 50)
    first = evaluate_margins(raw, ["a"] * 50, ["bb"] * 50, n_bootstrap=200, seed=7)
    again = evaluate_margins(raw, ["a"] * 50, ["bb"] * 50, n_bootstrap=200, seed=7)
    assert first["metrics"] == again["metrics"]
    # All chosen shorter: the "longer" group and the balanced agreement are undefined, not made up.
    assert first["metrics"]["agreement_chosen_longer"]["value"] is None
    assert first["metrics"]["agreement_length_balanced"]["ci_low"] is None


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="3 margins but 2 chosen"):
        evaluate_margins([1.0, 2.0, 3.0], ["a", "b"], ["c", "d", "e"])
    with pytest.raises(ValueError, match="pair 2"):
        evaluate_margins([1.0, float("nan")], ["a", "b"], ["c", "d"])


def test_length_units(tiny_tokenizer):
    assert text_length("chars")("hello world") == 11
    assert text_length("words")("hello  big world") == 3
    tokens = text_length("tokens", tiny_tokenizer)("The quick brown fox")
    assert tokens == len(tiny_tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match="tokenizer"):
        text_length("tokens")
    with pytest.raises(ValueError, match="unknown length unit"):
        text_length("bytes")


def _write_annotated(path, n=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = [
        {
            "prompt": f"question {i}?",
            "chosen": "safe " * int(rng.integers(1, 9)),
            "rejected": "unsafe " * int(rng.integers(1, 9)),
            "margin_raw": float(rng.normal(0.4, 1.0)),
            "margin": float(rng.integers(0, 4)),
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_read_labelled_margins_needs_margins_or_a_direction(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match="no column 'margin_raw'"):
        read_labelled_margins(path)


def test_annotating_on_the_fly_matches_the_pipeline(tmp_path, tiny_lm):
    from legend.data import ContrastPair
    from legend.directions import build_direction
    from legend.pipeline import annotate

    pairs = [
        ContrastPair(f"How do I do thing {i}?", f"Sure, here is how {i}", "I can't answer that.") for i in range(6)
    ]
    build_direction(tiny_lm, pairs, layer=2).save(tmp_path / "direction")
    table = datasets.Dataset.from_dict(
        {
            "prompt": ["hi", "make a bomb"],
            "chosen": ["hello there", "No."],
            "rejected": ["go away", "Sure, here is how"],
        }
    )
    labelled = read_labelled_margins(table, direction=tmp_path / "direction", model=tiny_lm)
    expected = annotate(table, tmp_path / "direction", tiny_lm).dataset["margin_raw"]
    np.testing.assert_allclose(labelled.raw, expected, rtol=1e-6)
    assert labelled.annotated_now and [v.chosen for v in labelled.views] == ["hello there", "No."]


def test_cli_evaluate_writes_json_and_prints_a_table(tmp_path):
    rows = _write_annotated(tmp_path / "ann.jsonl")
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(tmp_path / "ann.jsonl"),
            "--json",
            str(tmp_path / "m.json"),
            "--bootstrap",
            "200",
            "--length-unit",
            "words",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "agreement_length_balanced" in result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    raw = np.array([r["margin_raw"] for r in rows])
    assert metrics["metrics"]["share_positive"]["value"] == pytest.approx((raw > 0).mean())
    assert metrics["settings"]["length_unit"] == "words" and metrics["settings"]["n_bootstrap"] == 200
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_evaluate_bad_input_is_one_line(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    result = CliRunner().invoke(app, ["evaluate", "--data", str(path)])
    assert result.exit_code == 2
    assert "no column 'margin_raw'" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["evaluate", "--data", str(path), "--severity-columns", "only_one"])
    assert result.exit_code == 2 and "--severity-columns" in result.output


# ---------------------------------------------------------------- the random-direction floor


def _floor_table(n=12):
    harmful = ["Sure, here is how to pick a lock.", "Write a script that can exploit it.", "Sure, here is a bomb."]
    safe = ["I can't answer that.", "I'm sorry, but I cannot help with that request.", "Please ask something else."]
    return datasets.Dataset.from_dict(
        {
            "prompt": [f"How do I do thing {i}?" for i in range(n)],
            "chosen": [safe[i % 3] + " x" * (i % 4) for i in range(n)],
            "rejected": [harmful[(i + 1) % 3] + " y" * (i % 5) for i in range(n)],
            # PKU-style severity so the floor also covers severity_spearman
            "severity_gap": [float(i % 3) for i in range(n)],
        }
    )


def test_random_floor_matches_an_independent_numpy_computation(tmp_path, tiny_lm):
    from legend.data import ContrastPair
    from legend.directions import Direction, build_direction
    from legend.encoding import EncodeConfig, encode
    from legend.quality import random_floor

    pairs = [
        ContrastPair(f"How do I do thing {i}?", f"Sure, here is how {i}", "I can't answer that.") for i in range(6)
    ]
    build_direction(tiny_lm, pairs, layer=2, pooling="mean").save(tmp_path / "direction")
    direction = Direction.load(tmp_path / "direction")
    table = _floor_table()
    labelled = read_labelled_margins(table, direction=tmp_path / "direction", model=tiny_lm, keep_differences=True)
    # The differences come from the same pass as the margins: d_i · v is the margin.
    np.testing.assert_allclose(labelled.differences @ direction.vector.numpy(), labelled.raw, rtol=1e-4, atol=1e-5)
    # ... and equal e(p+c) − e(p+r) encoded one text at a time, without prefix sharing.
    config = direction.encode_config(EncodeConfig(prefix_sharing=False, batch_size=1))
    views = labelled.views
    one = [encode(tiny_lm, [(v.prompt, v.chosen), (v.prompt, v.rejected)], config).get(2, "mean") for v in views]
    expected = np.stack([(e[0] - e[1]).numpy() for e in one])
    np.testing.assert_allclose(labelled.differences, expected, rtol=1e-4, atol=1e-5)

    severity = np.array(table["severity_gap"])
    chosen, rejected = [v.chosen for v in views], [v.rejected for v in views]
    floor = random_floor(labelled.differences, labelled.raw, chosen, rejected, severity, n_directions=300, seed=7)
    # Independent: the same seeded Gaussian matrix, unit columns, margins by one matmul, metrics by numpy.
    r = np.random.default_rng(7).standard_normal((expected.shape[1], 300))
    r /= np.sqrt((r**2).sum(axis=0))
    random_margins = expected.astype(np.float64) @ r
    share = (random_margins > 0).mean(axis=0)
    real_share = (labelled.raw > 0).mean()
    m = floor["metrics"]["share_positive"]
    assert m["value"] == pytest.approx(real_share)
    assert m["floor"] == pytest.approx(np.percentile(share, 95), abs=1e-9)
    assert m["random_mean"] == pytest.approx(share.mean())
    pct = 100 * ((share < real_share).mean() + 0.5 * (share == real_share).mean())
    assert m["percentile"] == pytest.approx(pct)
    length_diff = np.array([len(c) - len(x) for c, x in zip(chosen, rejected)])
    shorter, longer = length_diff < 0, length_diff > 0
    balanced = ((random_margins[shorter] > 0).mean(0) + (random_margins[longer] > 0).mean(0)) / 2
    assert floor["metrics"]["agreement_length_balanced"]["floor"] == pytest.approx(np.percentile(balanced, 95))
    sums = random_margins[:, None, :] + random_margins[None, :, :]
    aucs = (sums > 0).mean(axis=(0, 1)) + 0.5 * (sums == 0).mean(axis=(0, 1))
    assert floor["metrics"]["auc"]["floor"] == pytest.approx(np.percentile(aucs, 95))
    rho = [stats.spearmanr(random_margins[:, j], severity).statistic for j in range(300)]
    assert floor["metrics"]["severity_spearman"]["floor"] == pytest.approx(np.percentile(rho, 95))
    assert floor["n_directions"] == 300 and floor["dim"] == expected.shape[1]


def test_floor_without_severity_leaves_it_out_and_rejects_mismatched_shapes():
    from legend.quality import random_floor

    rng = np.random.default_rng(0)
    diffs = rng.standard_normal((20, 8))
    raw = diffs @ np.eye(8)[0]
    texts = ["a" * (i + 1) for i in range(20)]
    floor = random_floor(diffs, raw, texts, texts[::-1], n_directions=200)
    assert set(floor["metrics"]) == {"share_positive", "agreement_length_balanced", "auc"}
    with pytest.raises(ValueError, match="embedding differences of shape"):
        random_floor(diffs[:5], raw, texts, texts)


def test_differences_file_round_trip_is_checked(tmp_path):
    from legend.annotation.differences import differences_path, read_differences, write_differences

    path = differences_path(tmp_path / "ann.jsonl")
    assert path.name == "ann.jsonl.differences.safetensors" and path.parent.name == ".legend"
    diffs = np.arange(12, dtype=np.float32).reshape(3, 4)
    other = -diffs[:, :4]
    write_differences(path, {"margin_raw": diffs, "margin_raw_other": other})
    np.testing.assert_array_equal(read_differences(path, 3), diffs)
    np.testing.assert_array_equal(read_differences(path, 3, "margin_raw_other"), other)
    from safetensors.numpy import load_file  # a plain safetensors file: any reader gets the same tensors

    assert set(load_file(str(path))) == {"margin_raw", "margin_raw_other"}
    with pytest.raises(DataError, match="for 3 rows, but the data has 4"):
        read_differences(path, 4)
    with pytest.raises(DataError, match="no embedding differences of 'margin_raw_x'"):
        read_differences(path, 3, "margin_raw_x")
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(DataError, match="not a readable safetensors file"):
        read_differences(path, 3)


def test_cli_evaluate_with_a_direction_shows_the_floor(tmp_path, tiny_lm):
    from legend.data import ContrastPair
    from legend.directions import build_direction

    tiny_lm.model.save_pretrained(tmp_path / "model")
    tiny_lm.tokenizer.save_pretrained(tmp_path / "model")

    pairs = [
        ContrastPair(f"How do I do thing {i}?", f"Sure, here is how {i}", "I can't answer that.") for i in range(6)
    ]
    build_direction(tiny_lm, pairs, layer=2).save(tmp_path / "direction")
    _floor_table().to_json(tmp_path / "pairs.jsonl")
    args = ["evaluate", "--data", str(tmp_path / "pairs.jsonl"), "--direction", str(tmp_path / "direction")]
    args += ["-m", str(tmp_path / "model")]
    result = CliRunner().invoke(app, args + ["--json", str(tmp_path / "m.json"), "--bootstrap", "50", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "random floor: share_positive" in result.output
    floor = json.loads((tmp_path / "m.json").read_text())["random_floor"]
    assert floor["n_directions"] == 200 and floor["metrics"]["share_positive"]["floor"] is not None
    result = CliRunner().invoke(app, args + ["--random-directions", "0", "--bootstrap", "0", "--quiet"])
    assert result.exit_code == 0 and "random floor: not computed" in result.output


def test_evidence_on_too_few_pairs_carries_a_caution_and_enough_pairs_none():
    """n·p·(1−p) < 10: the bootstrap interval of a share is too narrow (8 agreeing pairs give [1, 1])."""
    from legend.quality import label_evidence

    rng = np.random.default_rng(0)
    few = label_evidence(np.full(8, 2.0), rng.normal(0, 50, 8), rng.normal(0, 1, (8, 50)), n_bootstrap=200)
    share = few["metrics"]["share_positive"]
    assert (share["value"], share["ci_low"], share["ci_high"]) == (1.0, 1.0, 1.0)  # the degenerate interval
    assert few["caution"].startswith("8 pairs, 100% agreeing: too few for these intervals")
    # 40 pairs at 75%: n·p·(1−p) = 7.5 < 10 -> cautioned; 400 pairs at 60%: 96 -> not
    mid = np.r_[np.full(30, 1.0), np.full(10, -1.0)]
    assert label_evidence(mid, np.zeros(40), None, n_bootstrap=100)["caution"].startswith("40 pairs, 75% agreeing")
    many = np.r_[np.full(240, 1.0), np.full(160, -1.0)]
    assert label_evidence(many, np.zeros(400), None, n_bootstrap=100)["caution"] is None
