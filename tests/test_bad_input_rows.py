"""Nothing silent, round two (issue 17), class 2: every row and column comes back exactly, or the run is refused
before the model loads.

A CSV header naming a column twice, an input column legend would overwrite, a type or value an output format
cannot hold, JSON rows missing a key, the dataset card written by two processes at once. Every output format
is read back by legend itself (a round trip per format, with the tricky values).
"""

from __future__ import annotations

import csv
import datetime
import decimal
import json
import subprocess
import sys
from pathlib import Path

import pytest

import legend
from helpers import read_jsonl, write_jsonl
from hostile import OUT_FILES, annotate, assert_one_line_error, copy_direction, edit_config, fields_unchanged, only
from legend.data import load_table


@pytest.fixture
def no_model_load(monkeypatch):
    from legend.engines import local

    monkeypatch.setattr(local, "load_encoder", lambda *a, **k: pytest.fail("the model was loaded before the error"))


def _pairs(n: int = 4, **extra: object) -> list[dict]:
    return [
        {"prompt": f"Question {i}?", "chosen": f"I can't help {i}.", "rejected": f"Sure {i}, here.", **extra}
        for i in range(n)
    ]


# ---------------------------------------------------------------- CSV headers


@pytest.mark.parametrize("same", [True, False])
def test_a_csv_header_naming_a_column_twice_is_refused_naming_it(tiny_cli_model, tmp_path, same, no_model_load):
    _, direction = tiny_cli_model
    data = tmp_path / "in.csv"
    last = "a b" if same else "something else"
    data.write_text(f"prompt,chosen,rejected,chosen\nq1,a b,a c,{last}\nq2,a b,a d,{last}\n")
    result = annotate(direction, data, tmp_path / "out.csv")
    assert_one_line_error(
        result,
        f"error: {data}: line 1: the header names the column 'chosen' twice (columns 2 and 4); the reader would "
        "rename the second to 'chosen.1': give each column its own name",
    )
    only(tmp_path, "in.csv")


def test_a_csv_column_without_a_name_is_refused_for_annotate(tiny_cli_model, tmp_path, no_model_load):
    _, direction = tiny_cli_model
    data = tmp_path / "in.csv"
    data.write_text(",prompt,chosen,rejected\n0,q1,a b,a c\n1,q2,a b,a d\n")
    result = annotate(direction, data, tmp_path / "out.csv")
    assert_one_line_error(result, f"error: {data}: line 1: column 1 of the header has no name")
    only(tmp_path, "in.csv")


# ---------------------------------------------------------------- columns legend writes


@pytest.mark.parametrize("column", ["margin", "margin_raw"])
def test_an_input_column_legend_would_write_is_refused_before_the_model_loads(
    tiny_cli_model, tmp_path, column, no_model_load
):
    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", _pairs(**{column: 1}))
    result = annotate(direction, data, tmp_path / "out.jsonl")
    assert_one_line_error(
        result,
        f"error: {data}: already has a column '{column}', which legend writes (margin_raw, margin): pass "
        "--overwrite-margins (overwrite_margins=True) to replace its values where it stands, or rename it",
    )
    only(tmp_path, "in.jsonl")


def test_a_column_a_second_direction_would_write_is_refused(tiny_cli_model, tmp_path, no_model_load):
    _, direction = tiny_cli_model
    second = copy_direction(direction, tmp_path, "second")
    edit_config(second, name="extra")
    data = write_jsonl(tmp_path / "in.jsonl", _pairs(margin_extra=0.5))
    result = annotate(direction, data, tmp_path / "out.jsonl", "--direction", second)
    assert_one_line_error(result, f"error: {data}: already has a column 'margin_extra', which legend writes")
    only(tmp_path, "in.jsonl", "second")


def test_a_second_direction_whose_columns_collide_with_the_first_is_refused(tiny_cli_model, tmp_path, no_model_load):
    """A second direction named `raw` would write `margin_raw`, the first direction's column."""
    _, direction = tiny_cli_model
    second = copy_direction(direction, tmp_path, "raw")
    edit_config(second, name="raw")
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())
    result = annotate(direction, data, tmp_path / "out.jsonl", "--direction", second)
    assert_one_line_error(
        result,
        "error: direction 'raw' would write the column 'margin_raw', which direction 'safety' writes too: rebuild "
        "one of them with another --name",
    )
    only(tmp_path, "in.jsonl", "raw")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_overwrite_margins_replaces_the_values_where_the_column_stands(tiny_cli_model, tmp_path, suffix):
    _, direction = tiny_cli_model
    rows = [{"id": i, "margin": 9, "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
            for i, r in enumerate(_pairs())]  # fmt: skip
    reference = tmp_path / "ref" / "out.jsonl"
    plain = write_jsonl(tmp_path / "plain.jsonl", [{k: v for k, v in r.items() if k != "margin"} for r in rows])
    assert annotate(direction, plain, reference).exit_code == 0
    expected = read_jsonl(reference)
    data = tmp_path / f"in{suffix}"
    _write(rows, data)
    out = tmp_path / f"out{suffix}"
    result = annotate(direction, data, out, "--overwrite-margins")
    assert result.exit_code == 0, result.output
    back = load_table(out)
    assert back.column_names == ["id", "margin", "prompt", "chosen", "rejected", "margin_raw"]
    assert back["margin"] == [r["margin"] for r in expected]
    assert back["margin_raw"] == pytest.approx([r["margin_raw"] for r in expected], abs=0, rel=1e-15)


def test_overwrite_margins_in_the_library(tiny_lm):
    import datasets
    import torch

    from legend.directions import Direction

    vector = torch.randn(tiny_lm.hidden_size, generator=torch.Generator().manual_seed(0))
    direction = Direction.for_model(tiny_lm, vector / vector.norm(), layer=2, pooling="mean")
    rows = datasets.Dataset.from_list(_pairs(margin_raw=3.0))
    with pytest.raises(legend.DataError, match="already has a column 'margin_raw'"):
        legend.annotate(rows, direction, tiny_lm)
    done = legend.annotate(rows, direction, tiny_lm, legend.AnnotateSettings(overwrite_margins=True))
    assert done.dataset.column_names == ["prompt", "chosen", "rejected", "margin_raw", "margin"]
    assert done.dataset["margin_raw"] != [3.0] * 4


# ---------------------------------------------------------------- values written back exactly, or refused


def _write(rows: list[dict], path: Path) -> Path:
    import datasets
    import pyarrow.parquet as pq

    if path.suffix == ".jsonl":
        return write_jsonl(path, rows)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
        return path
    if path.suffix == ".csv":
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path
    pq.write_table(datasets.Dataset.from_list(rows).data.table, path)
    return path


TRICKY_JSON = [
    {"prompt": "q0", "chosen": "a b", "rejected": "a c", "n": 1, "x": 0.1 + 0.2, "flag": True, "note": "NA",
     "meta": {"a": 1}, "tags": ["x"], "big": 2**62 + 1, "text": "ünï / ☃ \"q\""},
    {"prompt": "q1", "chosen": "a b", "rejected": "a d", "n": 2, "x": -1e-300, "note": "",
     "meta": {"a": 2, "b": "z"}, "tags": [], "big": -(2**62)},  # no "flag", no "text": must not gain null
    {"prompt": "q2", "chosen": "a b", "rejected": "a e", "n": 3, "x": 5e300, "flag": False, "note": None,
     "meta": {"b": "y"}, "tags": ["y", "z"], "big": 0, "text": "null"},
]  # fmt: skip


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_rows_come_back_exactly_missing_keys_included(tiny_cli_model, tmp_path, suffix):
    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", TRICKY_JSON)
    before = data.read_bytes()
    out = tmp_path / f"out{suffix}"
    result = annotate(direction, data, out)
    assert result.exit_code == 0, result.output
    if suffix == ".json":
        (tmp_path / "as.jsonl").write_text("".join(json.dumps(r) + "\n" for r in json.loads(out.read_text())))
        out = tmp_path / "as.jsonl"
    rows = fields_unchanged(data, out)
    assert "flag" not in rows[1] and "text" not in rows[1] and rows[2]["meta"] == {"b": "y"}
    assert data.read_bytes() == before


def test_jsonl_to_parquet_keeps_every_value_and_absent_keys_become_missing(tiny_cli_model, tmp_path):
    """Parquet has one schema for all rows: a key a row lacks is a missing value (null) there, as in `datasets`."""
    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", TRICKY_JSON)
    out = tmp_path / "out.parquet"
    assert annotate(direction, data, out).exit_code == 0
    back = load_table(out).to_list()
    for original, row in zip(TRICKY_JSON, back):
        for key, value in original.items():
            if isinstance(value, dict):
                assert {k: v for k, v in row[key].items() if v is not None} == value
            else:
                assert row[key] == value and type(row[key]) is type(value)
        assert all(row[key] is None for key in row if key not in original and not key.startswith("margin"))


def _parquet_input(path: Path) -> object:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "prompt": pa.array(["q1", "q2", "q3"]),
            "chosen": pa.array(["a b", "a c", "x"]),
            "rejected": pa.array(["a d", "a e", "y"]),
            "when": pa.array([1_000_000_001, 2_000_000_002, None], pa.timestamp("ns")),
            "kind": pa.array(["x", "y", "x"]).dictionary_encode(),
            "u64": pa.array([2**64 - 1, 0, 5], pa.uint64()),
            "price": pa.array([decimal.Decimal("1.10"), None, decimal.Decimal("2.00")], pa.decimal128(5, 2)),
            "blob": pa.array([b"\x00\xff", b"a", None]),
            "day": pa.array([datetime.date(2020, 1, 1), None, datetime.date(1999, 12, 31)], pa.date32()),
            "ints": pa.array([[1, 2], None, []], pa.list_(pa.int64())),
            "small": pa.array([1, None, -3], pa.int8()),
        }
    )
    pq.write_table(table, path)
    return table


def test_parquet_types_come_back_exactly(tiny_cli_model, tmp_path):
    """timestamp[ns] keeps its nanoseconds, a dictionary column stays one, uint64 keeps 2**64-1 (issue 17)."""
    import pyarrow.parquet as pq

    _, direction = tiny_cli_model
    data = tmp_path / "in.parquet"
    table = _parquet_input(data)
    before = data.read_bytes()
    out = tmp_path / "out.parquet"
    result = annotate(direction, data, out, "--chunk-rows", 2)
    assert result.exit_code == 0, result.output
    back = pq.read_table(out)
    assert back.column_names == [*table.column_names, "margin_raw", "margin"]
    for name in table.column_names:
        assert back.schema.field(name).type == table.schema.field(name).type, name
        assert back.column(name).to_pylist() == table.column(name).to_pylist(), name
    assert data.read_bytes() == before


@pytest.mark.parametrize(
    "suffix, column, kind, why",
    [
        (".jsonl", "when", "timestamp[ns]", "it would come back as text, not as a date or time"),
        (".json", "when", "timestamp[ns]", "it would come back as text, not as a date or time"),
        (".csv", "when", "timestamp[ns]", "it would come back as text, not as a date or time"),
    ],
)
def test_a_type_an_output_cannot_hold_is_refused_before_the_model_loads(
    tiny_cli_model, tmp_path, suffix, column, kind, why, no_model_load
):
    _, direction = tiny_cli_model
    data = tmp_path / "in.parquet"
    _parquet_input(data)
    out = tmp_path / f"out{suffix}"
    result = annotate(direction, data, out)
    assert_one_line_error(result, f"error: {out}: the column '{column}' is {kind}, which a {suffix} file cannot hold")
    assert why in result.output
    only(tmp_path, "in.parquet")


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("price", decimal.Decimal("1.5"), "is decimal128(2, 1), which a .jsonl file cannot hold exactly"),
        ("blob", b"\x00", "is binary, which a .jsonl file cannot hold exactly (it holds bytes"),
        ("day", datetime.date(2020, 1, 1), "is date32.day., which a .jsonl file cannot hold exactly"),
    ],
)
def test_other_types_json_cannot_hold_are_refused(tmp_path, name, value, message):
    import datasets

    from legend.io import check_output_values

    rows = datasets.Dataset.from_list([{"prompt": "q", name: value}])
    with pytest.raises(legend.DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_output_values(rows, tmp_path / "out.jsonl")


@pytest.mark.parametrize(
    "value, what",
    [
        ("", "a missing value (CSV cannot tell an empty string from an empty cell)"),
        ("007", "a number"),
        ("True", "a boolean"),
        ("nan", "a number"),
    ],
)
def test_a_text_a_csv_output_would_change_is_refused_before_the_model_loads(
    tiny_cli_model, tmp_path, value, what, no_model_load
):
    _, direction = tiny_cli_model
    rows = _pairs(note="fine")
    rows[2]["note"] = value
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    result = annotate(direction, data, tmp_path / "out.csv")
    assert_one_line_error(
        result,
        f"error: {data}: row 3: field 'note': the text {json.dumps(value)} would be read back from a CSV file as "
        f"{what}: write .jsonl, .json or .parquet instead",
    )
    only(tmp_path, "in.jsonl")


def test_nested_columns_for_a_csv_output_are_refused_before_the_model_loads(tiny_cli_model, tmp_path, no_model_load):
    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", _pairs(tags=["a", "b"]))
    out = tmp_path / "out.csv"
    result = annotate(direction, data, out)
    assert_one_line_error(
        result,
        f"error: {out}: the column 'tags' is list<item: string>, which a .csv file cannot hold exactly (CSV holds "
        "plain values only, not lists or objects): write .jsonl, .json or .parquet instead",
    )
    only(tmp_path, "in.jsonl")


def test_csv_cells_come_back_as_written_and_legend_reads_its_own_csv(tiny_cli_model, tmp_path):
    """Only an empty cell is missing: "NA", "null", "None", "nan" are texts, read and written back as such."""
    _, direction = tiny_cli_model
    data = tmp_path / "in.csv"
    data.write_text(
        "prompt,chosen,rejected,code,note,score\n"
        "q1,a b,a c,12,NA,1.50\n"
        "q2,a b,a d,x,,2\n"
        'q3,"a, b","a ""e""",None,null,\n'
        "q4,a b,a f,nan,N/A,-3e5\n"
    )
    before = data.read_bytes()
    out = tmp_path / "out.csv"
    result = annotate(direction, data, out)
    assert result.exit_code == 0, result.output
    original = list(csv.reader(data.open(newline="")))
    written = list(csv.reader(out.open(newline="")))
    assert [row[:6] for row in written] == original  # every cell's text as it was
    assert written[0][6:] == ["margin_raw", "margin"]
    assert data.read_bytes() == before
    back = load_table(out)
    assert back["note"] == ["NA", None, "null", "N/A"] and back["code"] == ["12", "x", "None", "nan"]
    again = annotate(direction, out, tmp_path / "again" / "out.csv", "--overwrite-margins")  # legend reads its own
    assert again.exit_code == 0, again.output
    assert list(csv.reader((tmp_path / "again" / "out.csv").open(newline=""))) == written


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_legend_reads_back_what_it_writes_in_every_format(tiny_cli_model, tmp_path, suffix):
    """A round trip per output format: the output read by legend gives every input value and the margins, and
    annotating it again (--overwrite-margins) gives the same margins and the same file."""
    _, direction = tiny_cli_model
    rows = TRICKY_JSON if suffix != ".csv" else [
        {k: v for k, v in r.items() if k in ("prompt", "chosen", "rejected", "n", "x", "text")} for r in TRICKY_JSON
    ]  # fmt: skip
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "first" / f"out{suffix}"
    result = annotate(direction, data, out, "--summary-json")
    assert result.exit_code == 0, result.output
    back = load_table(out).to_list()
    assert len(back) == len(rows)
    for original, row in zip(rows, back):
        for key, value in original.items():
            got = row[key]
            if isinstance(value, dict):
                got = {k: v for k, v in got.items() if v is not None}
            assert got == value, (key, got, value)
    margins = [row["margin_raw"] for row in back]
    second = tmp_path / "second" / f"out{suffix}"
    result = annotate(direction, out, second, "--overwrite-margins")
    assert result.exit_code == 0, result.output
    assert [row["margin_raw"] for row in load_table(second).to_list()] == margins
    if suffix == ".parquet":  # the same table, types and metadata (the file's own layout may differ)
        import pyarrow.parquet as pq

        first, again = pq.read_table(out), pq.read_table(second)
        assert again.equals(first) and again.schema.metadata == first.schema.metadata
    else:
        assert second.read_bytes() == out.read_bytes()


# ---------------------------------------------------------------- the dataset card, written by two processes

CARD_WRITER = """
import sys
from legend.annotation import write_card

folder, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(count):
    name = f"{prefix}{i}.jsonl"
    write_card(f"{folder}/{name}", {"output": name, "summary": {"rows": i, "layout": "explicit"}})
"""


def test_two_processes_writing_one_card_both_keep_their_sections(tmp_path):
    env = {"PYTHONPATH": str(Path(legend.__file__).parents[1])}
    import os

    env = {**os.environ, **env}
    count = 25
    writers = [
        subprocess.Popen([sys.executable, "-c", CARD_WRITER, str(tmp_path), prefix, str(count)], env=env)
        for prefix in ("train", "test")
    ]
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0]
    card = (tmp_path / "README.md").read_text()
    from legend.annotation import card_parts

    front, text = card_parts(card)  # type: ignore[misc]
    names = [f"{prefix}{i}.jsonl" for prefix in ("train", "test") for i in range(count)]
    assert sorted(front["legend"]["files"]) == sorted(names)
    for name in names:
        assert text.count(f"<!-- legend:begin {name} -->") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no lock or temporary left


def test_the_card_keeps_the_users_content_and_only_legend_changes(tiny_cli_model, tmp_path):
    _, direction = tiny_cli_model
    card = tmp_path / "README.md"
    card.write_text("---\nlicense: mit\ntags:\n- mine\n---\n# My data\n\nHand-written notes.\n")
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())
    assert annotate(direction, data, tmp_path / "out.jsonl").exit_code == 0
    text = card.read_text()
    assert "license: mit" in text and "- mine" in text and "Hand-written notes." in text
    only(tmp_path, "in.jsonl", *OUT_FILES)


def test_audit_writes_every_row_back_exactly_too(tiny_cli_model, tmp_path):
    """`legend audit --out` writes the rows it read plus its two columns: a missing key stays missing."""
    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", TRICKY_JSON)
    annotated = tmp_path / "annotated.jsonl"
    assert annotate(direction, data, annotated).exit_code == 0
    from hostile import run

    audited = tmp_path / "audited.jsonl"
    result = run("audit", "--data", annotated, "--out", audited)
    assert result.exit_code == 0, result.output
    fields_unchanged(annotated, audited, added=("audit_flag", "audit_score"))
