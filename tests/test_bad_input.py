"""Nothing silent (issue 11): every bad input a user can give `legend annotate` is one line naming the file (and
row and field), exit 2, with nothing left behind; every good input comes back row for row, types included.

The CLI runs through typer's CliRunner on a tiny saved model; the kill -9 cases run the CLI in a subprocess
that kills itself (SIGKILL) at a chosen chunk of the compute or the write pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import legend
from helpers import build_tiny_llama, build_tokenizer, hh_rows, read_jsonl, write_jsonl
from legend.cli import app
from legend.errors import DataError
from legend.io import leftover_temporaries, lock_path

runner = CliRunner()
MISSING_MODEL = "/nonexistent/legend-model"  # loading it fails: an error about it means the model came first


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny model and a direction built from it (its model_id is the folder)."""
    from legend.data import ContrastPair
    from legend.directions import build_direction
    from legend.models import load_model

    root = tmp_path_factory.mktemp("bad-input")
    tokenizer = build_tokenizer()
    build_tiny_llama(len(tokenizer), seed=3).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    lm = load_model(str(root / "model"), device="cpu")
    pairs = [
        ContrastPair(f"How do I do thing {i}?", f"Sure, here is how {i}", "I can't answer that.") for i in range(6)
    ]
    build_direction(lm, pairs, layer=2, pooling="mean").save(root / "dir")
    return root


def annotate(workspace: Path, data: Path, out: Path, *extra: object):
    return run("annotate", "--direction", workspace / "dir", "--data", data, "--out", out, "--quiet", *extra)


OUT_FILES = ("out.jsonl", "README.md", ".legend/out.jsonl.json")  # the output, its dataset card and its metadata


def only(folder: Path, *names: str) -> None:
    """Nothing but `names` is in `folder`, sub-folders included (no output, temporary, lock or work folder left)."""
    found = [p.name for p in folder.iterdir() if p.name != ".legend"]
    found += [f".legend/{p.name}" for p in (folder / ".legend").glob("*")]  # the metadata folder, file by file
    assert sorted(found) == sorted(names)


def fields_unchanged(data: Path, out: Path) -> list[dict]:
    """Every input row and field comes back in `out` as it was (types included); returns the output rows."""
    original = read_jsonl(data)
    got = read_jsonl(out)
    assert len(got) == len(original)
    for before, after in zip(original, got):
        kept = {k: after[k] for k in before}
        assert json.dumps(kept, sort_keys=True) == json.dumps(before, sort_keys=True)  # 1 vs 1.0 vs "1" differ here
        assert set(after) - set(before) == {"margin_raw", "margin"}
    return got


# ---------------------------------------------------------------- layout: every row, whatever the chunking


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 100])
def test_a_row_that_does_not_fit_the_hh_layout_is_named_whatever_the_chunking(workspace, tmp_path, chunk_rows):
    rows = hh_rows(8)
    rows[1]["chosen"] = "a plain answer with no transcript turns"
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    result = annotate(workspace, data, tmp_path / "out.jsonl", "--chunk-rows", chunk_rows, "--model", MISSING_MODEL)
    assert_one_line_error(result, f"{data}: row 2: field 'chosen': not an hh-rlhf transcript")
    only(tmp_path, "in.jsonl")


@pytest.mark.parametrize("chunk_rows", [1, 4, 100])
def test_a_transcript_among_plain_texts_is_named_not_read_as_another_layout(workspace, tmp_path, chunk_rows):
    rows = [{"chosen": f"Q{i}: tell me. Answer A{i}", "rejected": f"Q{i}: tell me. Answer B{i}"} for i in range(6)]
    rows[4] = hh_rows(5)[4]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    result = annotate(workspace, data, tmp_path / "out.jsonl", "--chunk-rows", chunk_rows, "--model", MISSING_MODEL)
    assert_one_line_error(result, f"{data}: row 5: field 'chosen': an hh-rlhf transcript, but most rows are not")
    only(tmp_path, "in.jsonl")


def test_the_layout_is_decided_by_every_row_not_a_sample():
    import datasets

    from legend.data import detect_layout, pair_views

    rows = hh_rows(30)
    rows[0]["chosen"] = "no transcript here"  # one of the first rows: must not switch the 29 others to "implicit"
    table = datasets.Dataset.from_list(rows)
    assert detect_layout(table) == "hh"
    with pytest.raises(DataError, match="row 1: field 'chosen': not an hh-rlhf transcript"):
        pair_views(table, "hh")


# ---------------------------------------------------------------- values come back as they were


def test_a_column_mixing_types_is_refused_naming_the_row_and_field(workspace, tmp_path):
    rows = [{"prompt": f"q{i}", "response_0": "Sure.", "response_1": "No.", "safer_response_id": 1} for i in range(5)]
    rows[3]["safer_response_id"] = "1"  # the reader would turn it into the integer 1
    data = write_jsonl(tmp_path / "pku.jsonl", rows)
    for chunk_rows in (2, 100):
        result = annotate(workspace, data, tmp_path / "out.jsonl", "--chunk-rows", chunk_rows, "--model", MISSING_MODEL)
        assert_one_line_error(result, f"{data}: row 4: field 'safer_response_id': \"1\" (str) would be read as 1 (int)")
    only(tmp_path, "pku.jsonl")


@pytest.mark.parametrize(
    "value, shown",
    [
        (1.5, "1 (int) would be read as 1.0 (float)"),
        (2**64 + 1, "(int) would be read as"),
        ({"a": 1}, ""),
        ("2020-01-01", "turns date-like text into timestamps"),
    ],
)
def test_other_values_a_reader_would_change_are_refused(tmp_path, value, shown):
    from legend.data import DataError, load_table

    rows = [{"chosen": "a b", "rejected": "a c", "extra": 1}, {"chosen": "a b", "rejected": "a c", "extra": value}]
    if isinstance(value, dict):
        rows[0]["extra"] = "text"  # a string among objects
    if isinstance(value, str):
        rows[0]["extra"] = "2021-02-03"  # dates as text: the reader would make timestamps of them
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    try:
        load_table(data)
    except DataError as err:
        assert "field 'extra'" in str(err) and shown in str(err), str(err)
    else:  # read back unchanged is the only other acceptable outcome
        table = load_table(data)
        assert json.dumps(table.to_list()) == json.dumps(rows)


@pytest.mark.parametrize("cell, shown", [("007", '"007" would be read as 7 (int)'), ("+5", '"+5" would be read as 5')])
def test_a_csv_cell_that_type_inference_would_change_is_refused(workspace, tmp_path, cell, shown):
    """("NA", "null" and "None" are texts now: only an empty cell is missing; tests/test_bad_input_rows.py.)"""
    data = tmp_path / "in.csv"
    data.write_text(f"prompt,chosen,rejected,code\nq1,a b,a c,12\nq2,a b,a d,{cell}\n")
    for chunk_rows in (1, 100):
        result = annotate(workspace, data, tmp_path / "out.csv", "--chunk-rows", chunk_rows, "--model", MISSING_MODEL)
        assert_one_line_error(result, f"{data}: row 2: field 'code': the text {shown}")
    only(tmp_path, "in.csv")


def test_ray_engine_refuses_the_same_bad_input_before_ray_starts(workspace, tmp_path):
    pytest.importorskip("ray")
    rows = hh_rows(6)
    rows[4]["chosen"] = None
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    result = annotate(workspace, data, tmp_path / "out.jsonl", "--engine", "ray", "--model", MISSING_MODEL)
    assert_one_line_error(result, f"{data}: row 5: field 'chosen'")
    result = annotate(workspace, data, data, "--engine", "ray", "--model", MISSING_MODEL)
    assert_one_line_error(result, f"{data}: is the input {data}")
    only(tmp_path, "in.jsonl")


def test_a_good_file_comes_back_row_for_row_with_its_types(workspace, tmp_path):
    rows = hh_rows(9)
    for i, row in enumerate(rows):
        row.update(
            score=0.1 + i / 3,  # full float precision
            count=i,  # ints stay ints
            flag=i % 2 == 0,
            note=None if i % 3 else f"ünïcødé / {i}",
            tags=[f"t{i}", "x"],
            meta={"source": "hh", "n": i},
        )
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    result = annotate(workspace, data, tmp_path / "out.jsonl", "--chunk-rows", 4)
    assert result.exit_code == 0, result.output
    fields_unchanged(data, tmp_path / "out.jsonl")
    only(tmp_path, "in.jsonl", *OUT_FILES)


# ---------------------------------------------------------------- --bins-from and the level options


@pytest.fixture(scope="module")
def sidecar(workspace, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bins")
    data = write_jsonl(folder / "in.jsonl", hh_rows(12))
    result = annotate(workspace, data, folder / "first.jsonl")
    assert result.exit_code == 0, result.output
    return folder / ".legend" / "first.jsonl.json"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--levels", "3"], "--levels 3 conflicts with --bins-from"),
        (["--levels", "3", "--level-values", "0,5,10"], "--levels 3 conflicts with --bins-from"),
        (["--level-values", "0,0.5,1,2"], "--level-values 0,0.5,1,2 conflicts with --bins-from"),
    ],
)
def test_bins_from_and_conflicting_level_options_are_an_error(workspace, sidecar, tmp_path, options, message):
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(5))
    result = annotate(workspace, data, tmp_path / "out.jsonl", "--bins-from", sidecar, *options)
    assert_one_line_error(result, message, "(4 levels)" if "--levels" in options else "(level values 0,1,2,3)")
    only(tmp_path, "in.jsonl")


def test_bins_from_with_agreeing_options_is_used_and_the_summary_says_so(workspace, sidecar, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(5))
    out = tmp_path / "out.jsonl"
    result = annotate(
        workspace, data, out, "--bins-from", sidecar, "--levels", "4", "--level-values", "0,1,2,3", "--summary-json"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["bins"] == f"loaded from {sidecar} (4 levels)"
    meta = json.loads((out.parent / ".legend" / f"{out.name}.json").read_text())
    assert meta["binning"]["edges"] == json.loads(sidecar.read_text())["binning"]["edges"]
    edges = np.array(meta["binning"]["edges"])
    raw = np.array([r["margin_raw"] for r in read_jsonl(out)])
    assert [r["margin"] for r in read_jsonl(out)] == np.searchsorted(edges, raw, side="left").astype(float).tolist()


def test_a_one_level_sidecar_is_used_with_its_own_levels_and_said(workspace, tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"binning": {"levels": 1, "edges": [], "values": [7.0]}}))
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(5))
    result = annotate(workspace, data, tmp_path / "out.jsonl", "--bins-from", one, "--summary-json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["bins"] == f"loaded from {one} (1 levels)"
    assert {r["margin"] for r in read_jsonl(tmp_path / "out.jsonl")} == {7.0}


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"summary": {}}', "not a legend sidecar or binning"),
        ("{not json", "line 1: not valid JSON"),
        ('{"binning": {"edges": [0, "x"], "values": [0, 1, 2]}}', "'edges' and 'values' must be lists of numbers"),
        ('{"binning": {"edges": [0.0], "values": [0, 1, 2]}}', "1 bin edges for 3 levels"),
        ('{"binning": {"edges": [0.0, -1.0], "values": [0, 1, 2]}}', "bin edges must not decrease"),
    ],
)
def test_a_bins_from_file_that_is_not_a_binning_is_one_line(workspace, tmp_path, text, message):
    bad = tmp_path / "bins.json"
    bad.write_text(text)
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(4))
    assert_one_line_error(annotate(workspace, data, tmp_path / "out.jsonl", "--bins-from", bad), f"{bad}: {message}")
    only(tmp_path, "in.jsonl", "bins.json")


def test_level_values_of_the_wrong_count_fail_before_the_model_loads(workspace, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(4))
    result = annotate(
        workspace, data, tmp_path / "out.jsonl", "--levels", "3", "--level-values", "0,1", "--model", MISSING_MODEL
    )
    assert_one_line_error(result, "--level-values: 2 values given for --levels 3")
    result = annotate(workspace, data, tmp_path / "out.jsonl", "--level-values", "0,x", "--model", MISSING_MODEL)
    assert_one_line_error(result, "--level-values: expected comma-separated numbers")
    only(tmp_path, "in.jsonl")


# ---------------------------------------------------------------- damaged artifacts: one line naming the file


def _copy_direction(workspace: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "dir"
    shutil.copytree(workspace / "dir", folder)
    return folder


@pytest.mark.parametrize("damage", ["truncated vector", "config not JSON", "config missing fields", "bad field"])
def test_a_damaged_direction_is_one_line_naming_its_file(workspace, tmp_path, damage):
    folder = _copy_direction(workspace, tmp_path)
    vector, config = folder / "direction.safetensors", folder / "config.json"
    if damage == "truncated vector":
        vector.write_bytes(vector.read_bytes()[:40])
        expected = f"{vector}: not a readable safetensors file"
    elif damage == "config not JSON":
        config.write_text('{"layer": 2,')
        expected = f"{config}: line 1: not valid JSON"
    elif damage == "config missing fields":
        config.write_text(json.dumps({"layer": 2, "pooling": "mean"}))
        expected = f"{config}: missing field(s) model_id, fingerprint, hidden_size, num_layers"
    else:
        document = json.loads(config.read_text())
        document["layer"] = "two"
        config.write_text(json.dumps(document))
        expected = f"{config}: field 'layer': expected int, got str"
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(4))
    result = run("annotate", "--direction", folder, "--data", data, "--out", tmp_path / "out.jsonl")
    assert_one_line_error(result, expected)
    only(tmp_path, "in.jsonl", "dir")


def _copy_model(workspace: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(workspace / "model", folder)
    return folder


@pytest.mark.parametrize("damage", ["pickle", "config not JSON", "config bad field", "truncated weights"])
def test_a_damaged_model_folder_is_one_line_naming_it(workspace, tmp_path, damage):
    import argparse

    model = _copy_model(workspace, tmp_path)
    if damage == "pickle":
        state = {"weight": torch.zeros(2), "args": argparse.Namespace(a=1)}  # more than tensors
        (model / "model.safetensors").unlink()
        torch.save(state, model / "pytorch_model.bin")
        expected = f"{model}: its weights are a pickle (pytorch_model.bin)"
    elif damage == "config not JSON":
        (model / "config.json").write_text("{not json")
        expected = f"{model / 'config.json'}: invalid model config"
    elif damage == "config bad field":
        document = json.loads((model / "config.json").read_text())
        document["hidden_size"] = "wide"
        (model / "config.json").write_text(json.dumps(document))
        expected = f"{model / 'config.json'}: invalid model config"
    else:
        weights_file = model / "model.safetensors"
        weights_file.write_bytes(weights_file.read_bytes()[:100])
        expected = f"{model}: a .safetensors weights file is damaged or truncated"
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(4))
    result = annotate(workspace, data, tmp_path / "out.jsonl", "--model", model)
    assert_one_line_error(result, f"model {str(model)!r}: could not be loaded", expected)
    only(tmp_path, "in.jsonl", "model")


# ---------------------------------------------------------------- outputs that would destroy an input


def test_out_equal_to_data_is_refused_whatever_the_spelling(workspace, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(4))
    before = data.read_bytes()
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    for spelling in (data, tmp_path / "sub" / ".." / "in.jsonl", link):
        result = annotate(workspace, data, spelling, "--model", MISSING_MODEL)
        assert_one_line_error(result, f"{spelling}: is the input {data}: writing it would destroy that input")
        assert data.read_bytes() == before
    only(tmp_path, "in.jsonl", "sub", "link.jsonl")


def test_outputs_that_would_overwrite_the_direction_or_the_bins_are_refused(workspace, sidecar, tmp_path):
    folder = _copy_direction(workspace, tmp_path)
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(4))
    saved = {p.name: p.read_bytes() for p in folder.iterdir()}
    for out in (folder / "config.json", folder / "new.jsonl"):
        result = run("annotate", "--direction", folder, "--data", data, "--out", out)
        assert_one_line_error(result, f"{out}: is inside the input folder {folder}")
    bins = tmp_path / "bins.json"
    shutil.copy(sidecar, bins)
    result = run("annotate", "--direction", folder, "--data", data, "--out", bins, "--bins-from", bins)
    assert_one_line_error(result, f"{bins}: is the input {bins}")
    (tmp_path / "taken.jsonl").mkdir()
    result = run("annotate", "--direction", folder, "--data", data, "--out", tmp_path / "taken.jsonl")
    assert_one_line_error(result, f"{tmp_path / 'taken.jsonl'}: is a folder; name an output file")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == saved
    only(tmp_path, "in.jsonl", "dir", "bins.json", "taken.jsonl")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# (command and its options, the error's fragment); {data} is a preference file, {questions} a question file,
# {pairs} a contrast-pair file, {dir} the direction, {box} a folder that holds the data, {model} the tiny model folder.
OTHER_WRITERS = {
    "induce out=questions": (
        ["induce", "--questions", "{questions}", "--out", "{questions}", "--model", MISSING_MODEL],
        "{questions}: is the input {questions}: writing it would destroy that input",
    ),
    "direction out=folder of the pairs": (
        ["direction", "--pairs", "{pairs}", "--out", "{box}", "--model", MISSING_MODEL],
        "{box}: holds the input {pairs}: writing this folder would delete that input",
    ),
    "direction out=the pairs file": (
        ["direction", "--pairs", "{pairs}", "--out", "{pairs}", "--model", MISSING_MODEL],
        "{pairs}: is a file; name a folder for this output",
    ),
    "direction out=inside the model folder": (
        ["direction", "--pairs", "{pairs}", "--out", "{model}/direction", "--model", "{model}"],
        "{model}/direction: is inside the input folder {model}",
    ),
    "evaluate json=data": (
        ["evaluate", "--data", "{data}", "--json", "{data}"],
        "{data}: is the input {data}: writing it would destroy that input",
    ),
    "report out=data": (
        ["report", "--data", "{data}", "--out", "{data}"],
        "{data}: is the input {data}: writing it would destroy that input",
    ),
    "audit out=data": (
        ["audit", "--data", "{data}", "--out", "{data}", "--direction", "{dir}", "--model", MISSING_MODEL],
        "{data}: is the input {data}: writing it would destroy that input",
    ),
    "audit json=direction config": (
        ["audit", "--data", "{data}", "--json", "{dir}/config.json", "--direction", "{dir}", "--simulate-flips", "0.1"],
        "{dir}/config.json: is inside the input folder {dir}",
    ),
    "train-rm out=folder of the data": (
        ["train-rm", "--data", "{data}", "--out", "{box}", "--model", MISSING_MODEL],
        "{box}: holds the input {data}: writing this folder would delete that input",
    ),
    "eval-rm out=data": (
        ["eval-rm", "--model", MISSING_MODEL, "--data", "{data}", "--out", "{data}"],
        "{data}: is the input {data}: writing it would destroy that input",
    ),
    "ensemble-margins out=data": (
        ["ensemble-margins", "--data", "{data}", "--out", "{data}", "--model", MISSING_MODEL],
        "{data}: is the input {data}: writing it would destroy that input",
    ),
    "compare-rm out=data": (
        ["compare-rm", "--data", "{data}", "--out", "{data}", "--model", MISSING_MODEL],
        "{data}: is the input {data}: writing it would destroy that input",
    ),
    "best-of-n out=prompts": (
        ["best-of-n", "--prompts", "{questions}", "--reward-model", MISSING_MODEL, "--out", "{questions}"],
        "{questions}: is the input {questions}: writing it would destroy that input",
    ),
    "induce out=an unknown type": (
        ["induce", "--questions", "{questions}", "--out", "{box}/pairs.txt", "--model", MISSING_MODEL],
        "{box}/pairs.txt: unknown output file type '.txt'",
    ),
    "ensemble-margins out=an unknown type": (
        ["ensemble-margins", "--data", "{data}", "--out", "{box}/margins.tsv", "--model", MISSING_MODEL],
        "{box}/margins.tsv: unknown output file type '.tsv'",
    ),
    "best-of-n samples=an unknown type": (
        [
            "best-of-n",
            "--prompts",
            "{questions}",
            "-r",
            MISSING_MODEL,
            "--out",
            "{box}/r.json",
            "--samples-out",
            "{box}/s",
        ],
        "{box}/s: unknown output file type '(none)'",
    ),
    "dpo out=folder of the data": (
        ["dpo", "--data", "{data}", "--out", "{box}", "--model", MISSING_MODEL],
        "{box}: holds the input {data}: writing this folder would delete that input",
    ),
}


@pytest.mark.parametrize("case", sorted(OTHER_WRITERS))
def test_every_writing_command_refuses_an_output_that_would_destroy_an_input(workspace, tmp_path, case):
    """Each command checks its outputs against all its inputs first: before reading data or loading a model (the
    missing model would be the error otherwise), one line, nothing changed."""
    box = tmp_path / "box"
    box.mkdir()
    model = tmp_path / "model"
    shutil.copytree(workspace / "model", model)
    places = {
        "data": write_jsonl(box / "prefs.jsonl", hh_rows(4)),
        "questions": write_jsonl(box / "questions.jsonl", [{"question": f"How do I do thing {i}?"} for i in range(3)]),
        "pairs": write_jsonl(box / "pairs.jsonl", [{"question": "q", "harmful": "h", "harmless": "s"}] * 3),
        "dir": _copy_direction(workspace, tmp_path),
        "box": box,
        "model": model,
    }
    before = snapshot(tmp_path)
    command, fragment = OTHER_WRITERS[case]
    result = run(*(part.format(**places) for part in command))
    assert_one_line_error(result, fragment.format(**places))
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- bad data fails before the model loads


def test_a_bad_row_in_a_late_chunk_fails_before_the_model_loads(workspace, tmp_path):
    rows = hh_rows(12)
    rows[10]["rejected"] = ["not", "a", "text"]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    result = annotate(workspace, data, tmp_path / "out.jsonl", "--chunk-rows", 3, "--model", MISSING_MODEL)
    assert_one_line_error(result, f"{data}: row 11: field 'rejected': expected a non-empty string, got list")
    only(tmp_path, "in.jsonl")


def test_parquet_column_types_that_change_between_chunks_fail_before_the_model_loads(workspace, tmp_path, monkeypatch):
    import datasets

    from legend.data import streaming
    from legend.models import ModelSpec
    from legend.pipeline import AnnotateSettings, annotate_file

    rows = hh_rows(6)
    for i, row in enumerate(rows):
        row["extra"] = i if i < 3 else f"text {i}"  # ints in the first chunk, strings in the second
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    # A streamed reader infers each chunk's types on its own: two chunks whose types differ.
    chunks = lambda *args, **kwargs: iter([datasets.Dataset.from_list(rows[:3]), datasets.Dataset.from_list(rows[3:])])  # noqa: E731
    monkeypatch.setattr(streaming, "iter_chunks", chunks)  # where scan_input looks it up
    with pytest.raises(DataError, match=r"in.jsonl: row 4: the column types change from the first rows"):
        annotate_file(data, workspace / "dir", tmp_path / "out.parquet", ModelSpec(MISSING_MODEL), AnnotateSettings())
    only(tmp_path, "in.jsonl")


def test_a_non_utf8_byte_is_named_by_line_and_byte_offset(workspace, tmp_path):
    lines = [json.dumps(r) for r in hh_rows(4)]
    data = tmp_path / "in.jsonl"
    body = (lines[0] + "\n" + lines[1] + "\n").encode()
    data.write_bytes(body + b'{"chosen": "caf\xe9"}\n' + lines[2].encode() + b"\n")
    offset = len(body) + len(b'{"chosen": "caf')
    result = annotate(workspace, data, tmp_path / "out.jsonl", "--model", MISSING_MODEL)
    assert_one_line_error(result, f"{data}: line 3: not UTF-8 text: byte 0xe9 at byte offset {offset}")
    only(tmp_path, "in.jsonl")


# ---------------------------------------------------------------- report's hint


def test_report_on_a_file_without_margins_says_to_annotate_first(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(4))
    result = run("report", "--data", data, "--out", tmp_path / "report.html")
    assert_one_line_error(result, f"{data}: no column 'margin_raw'", f"run `legend annotate --data {data}")
    only(tmp_path, "in.jsonl")


# ---------------------------------------------------------------- non-finite margins


def test_a_nan_margin_is_an_error_naming_the_row_and_nothing_is_written(workspace, tmp_path, monkeypatch):
    from legend.engines import local
    from legend.margins import Binning

    with pytest.raises(ValueError, match="raw margin 2 of 3 is nan"):
        Binning([0.0, 1.0], [0, 1, 2]).apply([0.5, float("nan"), 1.0])
    real, calls = local.chunk_margins, []

    def poisoned(lm, views, directions, settings):
        results = real(lm, views, directions, settings)
        if len(calls) == 1:  # the second chunk (rows 4-6): its second row
            results[0].raw[1] = float("inf")
        calls.append(len(views))
        return results

    monkeypatch.setattr(local, "chunk_margins", poisoned)
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(9))
    result = annotate(workspace, data, tmp_path / "out.jsonl", "--chunk-rows", 3)
    assert_one_line_error(result, f"{data}: row 5: the raw margin is inf")
    only(tmp_path, "in.jsonl")


# ---------------------------------------------------------------- locks and leftovers


def test_a_run_cleans_what_an_interrupted_run_left_and_only_its_files_remain(workspace, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(5))
    out = tmp_path / "out.jsonl"
    for name in (
        ".out.jsonl.0123456789ab.tmp",
        ".legend/.out.jsonl.json.ba9876543210.tmp",
        ".legend/.out.jsonl.json.pending",
    ):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("partial")
    (tmp_path / ".other.jsonl.0123456789ab.tmp").write_text("someone else's")  # not ours: kept
    assert len(leftover_temporaries(out)) == 1
    result = annotate(workspace, data, out)
    assert result.exit_code == 0, result.output
    only(tmp_path, "in.jsonl", *OUT_FILES, ".other.jsonl.0123456789ab.tmp")


def test_a_live_lock_refuses_a_second_writer_and_a_stale_one_is_taken_over(workspace, tmp_path):
    from legend.io import output_lock

    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(5))
    out = tmp_path / "out.jsonl"
    with output_lock(out):  # this process is "another run" writing out
        result = annotate(workspace, data, out)
        assert_one_line_error(result, f"{out}: another run is writing this output (process {os.getpid()}")
        with pytest.raises(DataError, match="another run is writing this output"), output_lock(out):
            pass
    only(tmp_path, "in.jsonl")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path(out).write_text(finished.stdout)  # the pid of a process that has exited
    result = annotate(workspace, data, out)
    assert result.exit_code == 0, result.output
    only(tmp_path, "in.jsonl", *OUT_FILES)


KILLER = """
import os, signal, sys
from legend.engines import local
from legend.io import ChunkWriter

point, at = os.environ["LEGEND_TEST_KILL"].split(":")
calls = [0]

def die_on(real):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(at):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return wrapper

if point == "write":
    ChunkWriter.write = die_on(ChunkWriter.write)
else:
    local.chunk_margins = die_on(local.chunk_margins)
from legend.cli import app
app(sys.argv[1:], prog_name="legend")
"""


def _killed_run(workspace: Path, data: Path, out: Path, point: str):
    env = dict(os.environ, LEGEND_TEST_KILL=point, PYTHONPATH=str(Path(legend.__file__).parents[1]))
    args = ["annotate", "--direction", workspace / "dir", "--data", data, "--out", out, "--quiet", "--chunk-rows", 3]
    return subprocess.run(
        [sys.executable, "-c", KILLER, *map(str, args)], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("point", ["compute:3", "write:2"])
def test_kill_9_then_a_rerun_gives_the_uninterrupted_output_and_leaves_nothing_else(workspace, tmp_path, point):
    data = write_jsonl(tmp_path / "in.jsonl", hh_rows(11))  # 4 chunks of 3
    whole = tmp_path / "whole" / "out.jsonl"
    whole.parent.mkdir()
    assert annotate(workspace, data, whole, "--chunk-rows", 3).exit_code == 0
    out = tmp_path / "out.jsonl"
    killed = _killed_run(workspace, data, out, point)
    assert killed.returncode == -9, killed.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert ".out.jsonl.lock" in left and ".out.jsonl.legend-work" in left and "out.jsonl" not in left
    if point.startswith("write"):
        assert leftover_temporaries(out), left  # the half-written output
    result = annotate(workspace, data, out, "--chunk-rows", 3, "--summary-json")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == whole.read_bytes()
    reused = json.loads(result.stdout)["resume"]["chunks_reused"]  # stderr holds the resume warnings
    assert reused == (2 if point.startswith("compute") else 4)
    only(tmp_path, "in.jsonl", "whole", *OUT_FILES)
    fields_unchanged(data, out)


# ---------------------------------------------------------------- rows left out are exactly the flagged ones


def test_pairs_flagged_harmful_refused_are_left_out_counted_and_only_them(tiny_lm, tmp_path):
    from legend.data import ContrastPair
    from legend.directions import DirectionSettings, build_direction
    from legend.pipeline import build_direction_from_file

    rows = [
        {"question": f"How do I do thing {i}?", "harmful": f"Sure, here is how {i}", "harmless": "I can't."}
        for i in range(8)
    ]
    for i in (1, 4, 5):
        rows[i]["harmful"] = "I'm sorry, I cannot help with that."
    flags = [i in (1, 4, 5) for i in range(8)]
    for row, flag in zip(rows, flags):
        row["harmful_refused"] = flag
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    settings = DirectionSettings(layer=2, pooling="mean", test_fraction=0.25)
    built, report = build_direction_from_file(data, tiny_lm, settings)
    assert (report["pairs_read"], report["left_out_refused"], report["pairs_used"]) == (8, 3, 5)
    kept = [ContrastPair(r["question"], r["harmful"], r["harmless"]) for r, flag in zip(rows, flags) if not flag]
    by_hand = build_direction(tiny_lm, kept, settings)
    torch.testing.assert_close(built.vector, by_hand.vector)
    everything, report = build_direction_from_file(data, tiny_lm, settings, drop_refused=False)
    assert report["left_out_refused"] == 0 and report["pairs_used"] == 8
    assert not torch.allclose(everything.vector, by_hand.vector)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_split_a_single_file_does_not_have_is_refused_not_ignored(workspace, tmp_path, suffix):
    """`datasets` loads a lone file as split 'train'; --split validation used to annotate it anyway."""
    data = write_jsonl(tmp_path / f"in{suffix}", hh_rows(4))
    result = annotate(workspace, data, tmp_path / "out.jsonl", "--split", "validation", "--model", MISSING_MODEL)
    assert_one_line_error(result, f"{data}: no split 'validation': a single file holds one split, 'train'")
    only(tmp_path, f"in{suffix}")
    from legend.data import iter_chunks, load_table

    with pytest.raises(DataError, match="no split 'test'"):
        next(iter_chunks(data, 2, split="test"))
    with pytest.raises(DataError, match="no split 'test'"):
        load_table(data, split="test")
