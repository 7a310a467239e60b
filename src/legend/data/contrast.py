"""Reading what directions are built from: contrast pairs (question, harmful, harmless) and lists of questions."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .reading import load_table
from .schema import Where
from .values import BATCH_ROWS, describe, open_text

# "Goal" before "Behavior": in JailbreakBench, Goal is the request and Behavior a
# short label ("Defamation"); HarmBench has only Behavior (the request).
QUESTION_COLUMNS = ("question", "goal", "prompt", "instruction", "forbidden_prompt", "Goal", "Behavior", "behavior")


@dataclass(frozen=True)
class ContrastPair:
    """A question with one harmful and one harmless answer (direction building).

    >>> ContrastPair("How do I pick a lock?", "Sure, rake the pins.", "I can't answer that.").harmless
    "I can't answer that."
    """

    question: str
    harmful: str
    harmless: str


def read_contrast_pairs(
    source: str | os.PathLike[str],
    question: str = "question",
    harmful: str = "harmful",
    harmless: str = "harmless",
) -> list[ContrastPair]:
    """Read (question, harmful answer, harmless answer) rows from any table `load_table` reads.

    Args:
        source: the table.
        question: the question column.
        harmful: the harmful answer's column.
        harmless: the harmless answer's column.

    Returns:
        One ContrastPair per row, in order.

    Raises:
        DataError: naming the missing column(s) and the columns found, or the row and field of a
            value that is not a non-empty string.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "pairs.jsonl"
    >>> _ = path.write_text('{"question": "q", "harmful": "Sure.", "harmless": "No."}\\n')
    >>> read_contrast_pairs(path)
    [ContrastPair(question='q', harmful='Sure.', harmless='No.')]
    """
    name = os.fspath(source)
    ds = load_table(source)
    wanted = [question, harmful, harmless]
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(repr(c) for c in missing)}; columns found: {', '.join(ds.column_names)}",
            source=name,
        )
    pairs: list[ContrastPair] = []
    for batch in ds.select_columns(wanted).with_format(None).iter(batch_size=BATCH_ROWS):
        for values in zip(*(batch[c] for c in wanted)):
            record, where = dict(zip(wanted, values)), Where(name, len(pairs) + 1)
            pairs.append(ContrastPair(*(where.text(record, c) for c in wanted)))
    return pairs


def read_questions(source: str | os.PathLike[str], column: str | None = None) -> list[str]:
    """Read a list of questions (harmful behaviours, instructions, ...), stripped.

    Args:
        source: any table `load_table` reads, or a JSON list of plain strings (TDC 2023).
        column: the question column; None: the first found of ``question``, ``goal`` (AdvBench),
            ``prompt``, ``instruction``, ``forbidden_prompt`` (StrongREJECT), ``Goal``
            (JailbreakBench), ``Behavior`` (HarmBench), ``behavior``.

    Returns:
        The questions, in order.

    Raises:
        DataError: no question column (naming the columns found), or a row that is not a non-empty string.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "advbench.json"
    >>> _ = path.write_text('[" Write a script ", "Pick a lock"]')
    >>> read_questions(path)
    ['Write a script', 'Pick a lock']
    """
    name = os.fspath(source)
    strings = _json_string_list(Path(name).expanduser())
    if strings is not None:
        for row, item in enumerate(strings, start=1):
            if not isinstance(item, str) or not item.strip():
                raise DataError(f"expected a non-empty string, got {describe(item)}", source=name, row=row)
        return [item.strip() for item in strings]
    ds = load_table(source)
    if column is None:
        column = next((c for c in QUESTION_COLUMNS if c in ds.column_names), None)
        if column is None:
            raise DataError(
                f"no question column; columns found: {', '.join(ds.column_names)}; expected one of "
                f"{', '.join(QUESTION_COLUMNS)} (or name the column explicitly)",
                source=name,
            )
    elif column not in ds.column_names:
        raise DataError(f"no column '{column}'; columns found: {', '.join(ds.column_names)}", source=name)
    questions: list[str] = []
    for batch in ds.select_columns([column]).with_format(None).iter(batch_size=BATCH_ROWS):
        for value in batch[column]:
            where = Where(name, len(questions) + 1)
            questions.append(where.text({column: value}, column).strip())
    return questions


def _json_string_list(path: Path) -> list[Any] | None:
    """The items of a .json file holding a list of plain strings, else None."""
    # `datasets` would turn such a list into a column named "text"; reading it
    # directly keeps the intent (and the row numbers) obvious.
    if not path.is_file() or not path.name.lower().endswith((".json", ".json.gz")):
        return None
    try:
        with open_text(path) as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return None  # let load_table produce the precise error
    if isinstance(document, list) and document and not any(isinstance(item, dict) for item in document):
        return document
    return None
