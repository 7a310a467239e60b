"""`legend demo` (pipeline.run_demo) on the tiny model: both recipes on the same rows, floors, report."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_lm):
    from legend.pipeline import DemoSettings, run_demo

    root = tmp_path_factory.mktemp("demo")
    tiny_lm.model.save_pretrained(root / "model")
    tiny_lm.tokenizer.save_pretrained(root / "model")
    settings = DemoSettings(
        out_dir=root / "out",
        model=str(root / "model"),
        dtype="float32",
        questions=4,
        max_new_tokens=4,
        pairs=12,
        random_directions=50,
        bootstrap=20,
        progress=False,
    )
    return run_demo(settings), root


def test_demo_measures_both_recipes_on_the_same_rows_against_the_floor(demo_run):
    from legend.data import load_table
    from legend.directions import Direction
    from legend.pipeline import annotate, sidecar_path

    report, root = demo_run
    out, artifacts = root / "out", root / "out-artifacts"
    assert set(report["evaluations"]) == {"legend", "paper"}
    legend, paper = Direction.load(artifacts / "direction_legend"), Direction.load(artifacts / "direction_paper")
    assert (paper.layer, paper.pooling) == (paper.num_layers, "last")
    assert legend.pooling == "mean" and legend.extra["recipe"] == "legend"
    annotated = load_table(out / "hh_rlhf_annotated.jsonl")
    assert len(annotated) == 12
    # The file's margins equal an independent annotation of the same rows with each saved direction.
    rows = load_table(str(out / "hh_rlhf_annotated.jsonl")).remove_columns(
        ["margin_raw", "margin", "margin_raw_paper", "margin_paper"]
    )
    again = annotate(rows, artifacts / "direction_legend", str(root / "model"))
    np.testing.assert_allclose(annotated["margin_raw"], again.dataset["margin_raw"], rtol=1e-4, atol=1e-5)
    again = annotate(rows, artifacts / "direction_paper", str(root / "model"))
    np.testing.assert_allclose(annotated["margin_raw_paper"], again.dataset["margin_raw"], rtol=1e-4, atol=1e-5)
    for name, column in (("legend", "margin_raw"), ("paper", "margin_raw_paper")):
        evaluation = report["evaluations"][name]
        share = float((np.asarray(annotated[column]) > 0).mean())
        assert evaluation["metrics"]["share_positive"]["value"] == pytest.approx(share)
        floor = evaluation["random_floor"]
        assert floor["n_directions"] == 50 and floor["metrics"]["share_positive"]["floor"] is not None
    sidecar = json.loads(sidecar_path(out / "hh_rlhf_annotated.jsonl").read_text())
    assert sidecar["direction_path"] == str(artifacts / "direction_legend")
    assert set(report["phases"]) == {
        "model_load", "induce", "paper_direction", "legend_direction", "annotate", "evaluate", "write", "report"
    }  # fmt: skip


def test_demo_writes_the_report_with_the_floor(demo_run):
    _, root = demo_run
    html = (root / "out-artifacts" / "report.html").read_text()
    assert 'id="random-floor"' in html and "random unit directions" in html
    assert (root / "out" / ".legend" / "hh_rlhf_annotated.jsonl.differences.safetensors").is_file()


def test_the_demo_folder_loads_as_the_annotated_rows_and_nothing_else(demo_run):
    """`datasets.load_dataset(folder)` gives the 12 annotated rows (not the report's PNGs), and the card is there."""
    import datasets

    from legend.annotation.differences import differences_path, read_differences

    _, root = demo_run
    out = root / "out"
    loaded = datasets.load_dataset(str(out), split="train")
    assert loaded.num_rows == 12 and {"margin_raw", "margin", "margin_raw_paper", "margin_paper"} <= set(
        loaded.column_names
    )
    assert sorted(p.name for p in out.iterdir()) == [".legend", "README.md", "hh_rlhf_annotated.jsonl"]
    card = (out / "README.md").read_text()
    assert card.startswith("---") and "hh_rlhf_annotated.jsonl" in card
    # The differences of both directions are kept, and explain each one's margins.
    rows = [json.loads(line) for line in (out / "hh_rlhf_annotated.jsonl").read_text().splitlines()]
    from legend.directions import Direction

    for column, folder in (("margin_raw", "direction_legend"), ("margin_raw_paper", "direction_paper")):
        diffs = read_differences(differences_path(out / "hh_rlhf_annotated.jsonl"), 12, column)
        vector = Direction.load(root / "out-artifacts" / folder).vector.double().numpy()
        np.testing.assert_allclose(diffs @ vector, [r[column] for r in rows], rtol=1e-4, atol=1e-4)


def test_demo_refuses_an_unknown_recipe_before_loading_anything():
    from legend.pipeline import DemoSettings

    with pytest.raises(ValueError, match="--recipe"):
        DemoSettings(recipe="nope")
