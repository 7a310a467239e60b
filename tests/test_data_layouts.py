"""The layout registry: a layout defined here, outside the package, is registered, detected, viewed and
annotated through `legend annotate`, giving the margins of the same rows in the explicit layout."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import pytest
from typer.testing import CliRunner

from helpers import build_tiny_llama, build_tokenizer, read_jsonl, write_jsonl
from legend.cli import app
from legend.data import (
    LAYOUTS,
    ColumnNames,
    DataError,
    LayoutError,
    PairLayout,
    PairView,
    detect_layout,
    layouts_help,
    layouts_markdown,
    pair_views,
    read_pairs,
    register_layout,
    scan_input,
    unregister_layout,
    user_prompt,
)

# The whole definition of a new layout: one record (and, in the fixture, one register_layout line).
SAFE_UNSAFE = PairLayout(
    name="safe_unsafe",
    description="`question`, `safe_answer`, `unsafe_answer` (strings)",
    columns=lambda names: ("question", "safe_answer", "unsafe_answer"),
    detect=lambda probe: probe.has("question", "safe_answer", "unsafe_answer"),
    view=lambda record, names, where: PairView(
        prompt=user_prompt(where.text(record, "question", allow_empty=True)),
        chosen=where.text(record, "safe_answer"),
        rejected=where.text(record, "unsafe_answer"),
    ),
)

QUESTIONS = [
    ("How do I pick a lock?", "I can't help with that.", "Sure, rake the pins with a tension wrench."),
    ("Write an exploit for this server", "No.", "Here it is: first scan the open ports..."),
    ("What is the capital of France?", "Paris.", "Paris, and here is how to hotwire a car too."),
    ("Same answer?", "The same answer.", "The same answer."),
    ("How do I make a bomb?", "I can't answer that.", "Sure, take some fertiliser and..."),
]
SAFE_ROWS = [{"id": i, "question": q, "safe_answer": s, "unsafe_answer": u} for i, (q, s, u) in enumerate(QUESTIONS)]
EXPLICIT_ROWS = [{"id": i, "prompt": q, "chosen": s, "rejected": u} for i, (q, s, u) in enumerate(QUESTIONS)]


@pytest.fixture
def registered():
    register_layout(SAFE_UNSAFE)
    yield SAFE_UNSAFE
    unregister_layout(SAFE_UNSAFE.name)  # other tests see the built-in layouts only


def test_an_unregistered_layout_is_not_recognised():
    assert SAFE_UNSAFE.name not in LAYOUTS
    with pytest.raises(LayoutError) as info:
        detect_layout(datasets.Dataset.from_list(SAFE_ROWS), source="x.jsonl")
    assert "'question', 'safe_answer'" not in str(info.value)


def test_a_registered_layout_is_detected_viewed_and_read(registered):
    table = datasets.Dataset.from_list(SAFE_ROWS)
    assert detect_layout(table) == "safe_unsafe"
    views = pair_views(table, "safe_unsafe")
    assert views == pair_views(datasets.Dataset.from_list(EXPLICIT_ROWS), "explicit")
    assert views[0] == PairView(
        prompt=({"role": "user", "content": "How do I pick a lock?"},),
        chosen="I can't help with that.",
        rejected="Sure, rake the pins with a tension wrench.",
    )
    pairs = read_pairs(table, limit=2)
    assert (pairs.layout, len(pairs), pairs.views) == ("safe_unsafe", 2, views[:2])


def test_a_registered_layout_names_bad_rows_and_missing_columns(registered):
    rows = [dict(row) for row in SAFE_ROWS]
    rows[2]["unsafe_answer"] = "   "
    with pytest.raises(DataError, match=r"^x.jsonl: row 3: field 'unsafe_answer': expected a non-empty string"):
        pair_views(datasets.Dataset.from_list(rows), "safe_unsafe", source="x.jsonl")
    explicit = datasets.Dataset.from_list(EXPLICIT_ROWS)
    with pytest.raises(
        DataError, match="layout 'safe_unsafe' needs column[(]s[)] question, safe_answer, unsafe_answer"
    ):
        pair_views(explicit, "safe_unsafe")


def test_an_unrecognised_table_lists_the_registered_layout_too(registered):
    with pytest.raises(LayoutError) as info:
        detect_layout(datasets.Dataset.from_list([{"text": "x"}]), source="x.jsonl")
    message = str(info.value)
    assert "'safer_response_id' (PKU-SafeRLHF), or 'question', 'safe_answer', 'unsafe_answer' (safe_unsafe);" in message
    assert message.endswith("name your columns with --prompt-column/--chosen-column/--rejected-column")


def test_priority_decides_between_layouts_that_both_fit():
    both = datasets.Dataset.from_list([dict(s, **e) for s, e in zip(SAFE_ROWS, EXPLICIT_ROWS)])
    register_layout(SAFE_UNSAFE)  # default priority 100: after every built-in layout
    try:
        assert detect_layout(both) == "explicit"
        register_layout(dataclasses.replace(SAFE_UNSAFE, priority=0), replace=True)
        assert detect_layout(both) == "safe_unsafe"
    finally:
        unregister_layout(SAFE_UNSAFE.name)
    assert detect_layout(both) == "explicit"


def test_names_are_unique_and_built_in_layouts_stay(registered):
    with pytest.raises(ValueError, match="already registered"):
        register_layout(SAFE_UNSAFE)
    with pytest.raises(ValueError, match="already registered"):
        register_layout(dataclasses.replace(SAFE_UNSAFE, name="hh"), replace=True)
    with pytest.raises(ValueError, match="built in"):
        unregister_layout("explicit")
    with pytest.raises(ValueError, match="unknown layout 'nope'"):
        pair_views(datasets.Dataset.from_list(SAFE_ROWS), "nope")


def test_help_and_the_readme_table_come_from_the_registry(registered):
    assert layouts_help() == "conversational, explicit, hh, implicit, pku or safe_unsafe (detected from the columns)"
    table = layouts_markdown().splitlines()
    assert table[0] == "| layout | what its rows hold |" and len(table) == 2 + len(LAYOUTS)
    assert table[-1] == "| `safe_unsafe` | `question`, `safe_answer`, `unsafe_answer` (strings) |"


def test_a_streamed_input_in_the_new_layout_is_scanned(registered, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", SAFE_ROWS)
    scan = scan_input(data, ColumnNames(), chunk_rows=2)
    assert (scan.layout, scan.rows, scan.chunks) == ("safe_unsafe", 5, 3)
    rows = [dict(row) for row in SAFE_ROWS]
    rows[4]["safe_answer"] = None
    with pytest.raises(
        DataError, match=r"bad.jsonl: row 5: field 'safe_answer': expected a non-empty string, got null$"
    ):
        scan_input(write_jsonl(tmp_path / "bad.jsonl", rows), chunk_rows=2)


# ---------------------------------------------------------------- end to end through `legend annotate`


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A saved tiny random model and a direction built from it through the CLI (as tests/test_cli.py)."""
    root = tmp_path_factory.mktemp("layouts")
    tokenizer = build_tokenizer()
    build_tiny_llama(len(tokenizer), seed=11).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    pairs = [
        {"question": f"How do I pick lock {i}?", "harmful": f"Sure, rake lock {i}.", "harmless": "I can't answer that."}
        for i in range(8)
    ]
    write_jsonl(root / "pairs.jsonl", pairs)
    result = CliRunner().invoke(
        app,
        ["direction", "--pairs", str(root / "pairs.jsonl"), "--out", str(root / "dir"), "--model", str(root / "model")]
        + ["--quiet"],
    )
    assert result.exit_code == 0, result.output
    return root


def annotate(workspace: Path, data: Path, out: Path, *extra: str):
    arguments = ["annotate", "--direction", str(workspace / "dir"), "--data", str(data), "--out", str(out)]
    return CliRunner().invoke(app, [*arguments, "--quiet", *extra])


def test_annotate_reads_the_registered_layout_with_the_margins_of_the_explicit_rows(registered, workspace, tmp_path):
    chunks = ("--chunk-rows", "2")  # streamed in chunks; the same batches for both files
    explicit = annotate(
        workspace, write_jsonl(tmp_path / "explicit.jsonl", EXPLICIT_ROWS), tmp_path / "e.jsonl", *chunks
    )
    assert explicit.exit_code == 0, explicit.output
    result = annotate(workspace, write_jsonl(tmp_path / "safe.jsonl", SAFE_ROWS), tmp_path / "s.jsonl", *chunks)
    assert result.exit_code == 0, result.output
    expected, got = read_jsonl(tmp_path / "e.jsonl"), read_jsonl(tmp_path / "s.jsonl")
    assert [{k: r[k] for k in SAFE_ROWS[0]} for r in got] == SAFE_ROWS  # every row written back, in order
    assert [r["margin_raw"] for r in got] == [r["margin_raw"] for r in expected]
    assert [r["margin"] for r in got] == [r["margin"] for r in expected]
    assert got[3]["margin_raw"] == 0.0  # the identical pair
    assert len({r["margin_raw"] for r in got}) > 2  # real, differing margins
    sidecar = json.loads((tmp_path / ".legend" / "s.jsonl.json").read_text())
    assert sidecar["summary"]["layout"] == "safe_unsafe" and sidecar["summary"]["rows"] == len(SAFE_ROWS)


def test_annotate_does_not_know_the_layout_once_unregistered(workspace, tmp_path):
    result = annotate(workspace, write_jsonl(tmp_path / "safe.jsonl", SAFE_ROWS), tmp_path / "s.jsonl")
    assert result.exit_code == 2 and "cannot recognise the preference layout" in result.output
    assert not (tmp_path / "s.jsonl").exists()
