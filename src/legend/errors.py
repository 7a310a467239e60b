"""The user-facing error types shared by every layer (bottom of the import graph).

They live here, with no heavy import, so that the CLI can catch them without loading torch or datasets.
"""

from __future__ import annotations


class DataError(ValueError):
    """One-line, user-facing error naming the file, the row and the field.

    ``str(err)`` reads e.g.
    ``"data/x.jsonl: row 12: field 'chosen': expected a non-empty string, got int"``.
    Rows are 1-based data records; ``line`` is a 1-based line of the file (used
    for malformed JSON). The parts are also kept as attributes, and ``reason``
    is the bare message, so a caller can re-raise it with more location.

    >>> str(DataError("expected a string, got int", source="x.jsonl", row=3, field="chosen"))
    "x.jsonl: row 3: field 'chosen': expected a string, got int"
    """

    def __init__(
        self,
        reason: str,
        *,
        source: str | None = None,
        line: int | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.source = source
        self.line = line
        self.row = row
        self.field = field
        parts = [
            source,
            None if line is None else f"line {line}",
            None if row is None else f"row {row}",
            None if field is None else f"field '{field}'",
            reason,
        ]
        super().__init__(": ".join(p for p in parts if p is not None))

    def located(self, source: str, first_row: int = 0) -> DataError:
        """This error in a whole input: named by `source` (when it names none) and with its row counted after
        `first_row` rows (a chunk's offset). An error that names its source already is returned as it is.

        >>> str(DataError("the chat template failed", row=2).located("x.jsonl", first_row=40))
        'x.jsonl: row 42: the chat template failed'
        """
        if self.source is not None:
            return self
        row = None if self.row is None else self.row + first_row
        return DataError(self.reason, source=source, line=self.line, row=row, field=self.field)


class DirectionMismatch(ValueError):
    """A direction was made for another model (hidden size or weights fingerprint differ)."""


class ModelError(RuntimeError):
    """A model could not be resolved or loaded (one user-facing line)."""
