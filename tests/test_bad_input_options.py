"""Nothing silent, round two (issue 17), class 5: options and artifacts checked before the model loads, and messages
that name the real cause (not "trailing data", "file is empty" or "BatchSize must be greater than 0").

`--model /nonexistent/...` makes the model load fail: an error about anything else proves it came first.
"""

from __future__ import annotations

import json
import os

import pytest

import legend
from helpers import write_jsonl
from hostile import MISSING_MODEL, annotate, assert_one_line_error, copy_direction, edit_config, only, run
from legend.data import load_table


def _pairs(n: int = 4) -> list[dict]:
    return [{"prompt": f"Question {i}?", "chosen": f"I can't help {i}.", "rejected": f"Sure {i}."} for i in range(n)]


# ---------------------------------------------------------------- level values


@pytest.mark.parametrize(
    "values, message",
    [
        ("nan,1,2,3", "--level-values nan,1,2,3: nan is not a finite number; give finite numbers"),
        ("0,1,2,inf", "--level-values 0,1,2,inf: inf is not a finite number; give finite numbers"),
        ("-inf,0,1,2", "--level-values -inf,0,1,2: -inf is not a finite number"),
        (
            "3,2,1,0",
            "--level-values 3,2,1,0: the values must not decrease (the first is the level of raw margins <= 0, the "
            "last that of the largest ones); give them in increasing order",
        ),
        ("0,2,1,3", "--level-values 0,2,1,3: the values must not decrease"),
    ],
)
def test_level_values_that_are_not_finite_or_decrease_are_refused_before_the_model_loads(
    tiny_cli_model, tmp_path, values, message
):
    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())
    result = annotate(direction, data, tmp_path / "out.jsonl", "--level-values", values, "--model", MISSING_MODEL)
    assert_one_line_error(result, f"error: {message}")
    only(tmp_path, "in.jsonl")


def test_level_values_in_the_library_and_in_a_bins_file_are_checked_too(tmp_path):
    with pytest.raises(ValueError, match="level_values nan,1: nan is not a finite number"):
        legend.AnnotateSettings(level_values=(float("nan"), 1.0))
    with pytest.raises(ValueError, match="level_values 1,0: the values must not decrease"):
        legend.AnnotateSettings(level_values=(1.0, 0.0))
    assert legend.AnnotateSettings(level_values=(0.0, 0.0, 1.0)).n_levels == 3  # equal values merge levels
    bins = tmp_path / "bins.json"
    bins.write_text(json.dumps({"binning": {"edges": [0.0, 1.0], "values": [2, 1, 0]}}))
    from legend.annotation import load_binning

    with pytest.raises(ValueError, match=r"level values must not decrease \(level 0 holds raw <= 0\)"):
        load_binning(bins)


def test_equal_level_values_merge_levels(tiny_cli_model, tmp_path):
    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", _pairs(8))
    result = annotate(direction, data, tmp_path / "out.jsonl", "--level-values", "0,0,1,1")
    assert result.exit_code == 0, result.output
    assert {json.loads(line)["margin"] for line in (tmp_path / "out.jsonl").read_text().splitlines()} <= {0.0, 1.0}


# ---------------------------------------------------------------- a direction's config.json, checked whole


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"template": "fancy"}, "field 'template': 'fancy' is not one of auto, chat, plain"),
        ({"max_length": 1}, "field 'max_length': 1 is below 2"),
        ({"max_length": "long"}, "field 'max_length': expected int, got str"),
        ({"layer": 9}, "field 'layer': 9 is out of range for 4 layers (0..4)"),
        ({"name": "a b"}, "field 'name': 'a b': use letters, digits, '-' and '_' (it names columns)"),
        ({"hidden_size": 0}, "field 'hidden_size': 0 is below 1"),
        ({"tokenizer_fingerprint": ["x"]}, "field 'tokenizer_fingerprint': expected an object of strings"),
    ],
)
def test_a_bad_field_in_a_directions_config_is_one_line_before_the_model_loads(
    tiny_cli_model, tmp_path, changes, message
):
    _, direction = tiny_cli_model
    folder = copy_direction(direction, tmp_path)
    edit_config(folder, **changes)
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())
    result = annotate(folder, data, tmp_path / "out.jsonl", "--model", MISSING_MODEL)
    assert_one_line_error(result, f"error: {folder / 'config.json'}: {message}")
    only(tmp_path, "in.jsonl", "dir")


def test_nested_columns_for_a_csv_output_fail_before_the_model_loads(tiny_cli_model, tmp_path):
    _, direction = tiny_cli_model
    rows = [{**row, "meta": {"source": "x"}} for row in _pairs()]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.csv"
    result = annotate(direction, data, out, "--model", MISSING_MODEL)
    assert_one_line_error(result, f"error: {out}: the column 'meta' is struct<source: string>, which a .csv file")
    only(tmp_path, "in.jsonl")


def test_a_second_direction_named_like_a_column_fails_before_the_model_loads(tiny_cli_model, tmp_path):
    _, direction = tiny_cli_model
    second = copy_direction(direction, tmp_path, "second")
    edit_config(second, name="raw")
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())
    result = annotate(direction, data, tmp_path / "out.jsonl", "--direction", second, "--model", MISSING_MODEL)
    assert_one_line_error(result, "error: direction 'raw' would write the column 'margin_raw'")
    only(tmp_path, "in.jsonl", "second")


# ---------------------------------------------------------------- messages that name the real cause


@pytest.mark.parametrize("chunk_rows", [1, 100])
def test_a_lone_surrogate_is_named_not_trailing_data(tiny_cli_model, tmp_path, chunk_rows):
    _, direction = tiny_cli_model
    lines = [json.dumps(row) for row in _pairs()]
    lines[2] = lines[2].replace('"I can', '"I \\ud800can')
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(lines) + "\n")
    result = annotate(direction, data, tmp_path / "out.jsonl", "--chunk-rows", chunk_rows, "--model", MISSING_MODEL)
    assert_one_line_error(
        result,
        f"error: {data}: line 3: field 'chosen': a lone surrogate \\ud800 (half of a UTF-16 pair, escaped in the "
        "JSON) is not text: UTF-8 cannot hold it; write the whole pair or remove it",
    )
    only(tmp_path, "in.jsonl")


def test_an_escaped_surrogate_pair_is_text(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "q", "chosen": "smile \\ud83d\\ude00", "rejected": "no"}\n')
    assert load_table(data)["chosen"] == ["smile 😀"]


@pytest.mark.parametrize("where", ["top", "nested"])
@pytest.mark.parametrize("chunk_rows", [1, 100])
def test_a_repeated_json_key_is_named_not_trailing_data(tiny_cli_model, tmp_path, where, chunk_rows):
    _, direction = tiny_cli_model
    lines = [json.dumps({**row, "meta": {"a": 1}}) for row in _pairs()]
    if where == "top":
        lines[1] = lines[1].replace('"rejected":', '"chosen": "again", "rejected":')
        field = "chosen"
    else:
        lines[1] = lines[1].replace('"meta": {"a": 1}', '"meta": {"a": 1, "a": 2}')
        field = "a"
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(lines) + "\n")
    result = annotate(direction, data, tmp_path / "out.jsonl", "--chunk-rows", chunk_rows, "--model", MISSING_MODEL)
    assert_one_line_error(
        result,
        f"error: {data}: line 2: field '{field}': the key appears twice in one object; JSON keeps only its last value, "
        "so reading it would drop the other: give each key once",
    )
    only(tmp_path, "in.jsonl")


def test_a_repeated_key_in_a_json_list_is_named_by_its_row(tiny_cli_model, tmp_path):
    _, direction = tiny_cli_model
    records = [json.dumps(row) for row in _pairs()]
    records[3] = records[3].replace('"rejected":', '"rejected": "x", "rejected":')
    data = tmp_path / "in.json"
    data.write_text("[\n" + ",\n".join(records) + "\n]\n")
    result = annotate(direction, data, tmp_path / "out.jsonl", "--model", MISSING_MODEL)
    assert_one_line_error(result, f"error: {data}: row 4: field 'rejected': the key appears twice in one object")
    only(tmp_path, "in.json")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_named_as_one_not_an_empty_file(tiny_cli_model, tmp_path):
    _, direction = tiny_cli_model
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    result = annotate(direction, fifo, tmp_path / "out.jsonl", "--model", MISSING_MODEL)
    assert_one_line_error(
        result,
        f"error: {fifo}: is a named pipe (FIFO), not a regular file: legend reads an input more than once (every row "
        "is checked before the model loads, then annotated), which a stream cannot give; save it to a file first",
    )
    only(tmp_path, "in.jsonl")


@pytest.mark.parametrize("command", ["annotate", "evaluate"])
def test_a_parquet_file_without_rows_says_so(tiny_cli_model, tmp_path, command):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, direction = tiny_cli_model
    data = tmp_path / "in.parquet"
    empty = pa.array([], pa.string())
    pq.write_table(
        pa.table({"prompt": empty, "chosen": empty, "rejected": empty, "margin_raw": pa.array([], pa.float64())}), data
    )
    if command == "annotate":
        result = annotate(direction, data, tmp_path / "out.jsonl", "--model", MISSING_MODEL, "--overwrite-margins")
    else:
        result = run("evaluate", "--data", data, "--random-directions", 0)
    assert_one_line_error(result, f"error: {data}: no rows (the Parquet file has its columns but 0 rows)")
    only(tmp_path, "in.parquet")


def test_a_json_column_mixing_types_is_read_exactly_or_named_by_row_and_field(tmp_path):
    """pyarrow reads JSON exactly but one type per column; a column mixing types is read by datasets' own reader,
    and a value it would change is named by row and field (never written back changed)."""
    rows = [{"chosen": "a b", "rejected": "a c", "extra": {"k": 1}} for _ in range(3)]
    rows[2]["extra"] = [1, 2]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    assert load_table(data)["extra"] == [{"k": 1}, {"k": 1}, [1, 2]]
    rows[1]["extra"], rows[2]["score"], rows[0]["score"] = "1", 0.30000000000000004, 7  # "1" among objects
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(legend.DataError) as caught:
        load_table(data)
    assert "in.jsonl: row " in str(caught.value) and "would be read as" in str(caught.value)
