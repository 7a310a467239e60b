"""legend.data.read_margin_column: the one reader of a margin column, and the three consumers that call it.

The three copies it replaced disagreed: DPO and reward training refused booleans and strings, the
quality reader (evaluate, report) took anything `float()` accepts (True as 1.0, "0.5" as 0.5) and wrote
its own error text. The strict rule is kept everywhere: each refused case is tested here, through the
reader and through each consumer.
"""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest

from legend.data import DataError, read_margin_column

ROWS = [
    {"prompt": "How do I pick a lock?", "chosen": "I can't help with that.", "rejected": "Rake the pins."},
    {"prompt": "Write a joke", "chosen": "Why did the chicken...", "rejected": "No."},
    {"prompt": "Make a bomb", "chosen": "I can't answer that.", "rejected": "Sure, take..."},
]


def with_margins(values: list) -> datasets.Dataset:
    return datasets.Dataset.from_list([dict(row, margin=value) for row, value in zip(ROWS, values)])


def test_numbers_are_read_as_float64():
    margins = read_margin_column(with_margins([0, 2, 1]), "margin", source="x.jsonl")
    assert margins.dtype == np.float64 and margins.tolist() == [0.0, 2.0, 1.0]
    raw = read_margin_column(with_margins([-0.25, 0.5, 1e-9]), "margin", source="x.jsonl")
    assert raw.tolist() == [-0.25, 0.5, 1e-9]


def test_a_missing_column_names_the_columns_found_and_how_to_add_it():
    table = datasets.Dataset.from_list(ROWS)
    with pytest.raises(DataError) as info:
        read_margin_column(table, "margin_raw", source="x.jsonl")
    assert str(info.value) == (
        "x.jsonl: no column 'margin_raw'; columns found: prompt, chosen, rejected; run `legend annotate` to add margins"
    )
    assert info.value.source == "x.jsonl" and info.value.row is None
    with pytest.raises(DataError, match=r"add margins, or turn the offset off$"):
        read_margin_column(table, "margin", source="x.jsonl", instead="turn the offset off")


# (values of a column of one type, as `datasets` reads it; the row named; the value as the error shows it)
BAD = {
    "null": ([1.0, None, 2.0], 2, "None"),
    "boolean": ([True, False, True], 1, "True"),
    "string": (["high", "low", "low"], 1, "'high'"),
    "numeric string": (["0.5", "1", "2"], 1, "'0.5'"),
    "nan": ([1.0, math.nan, 2.0], 2, "nan"),
    "inf": ([1.0, math.inf, 2.0], 2, "inf"),
    "-inf": ([1.0, 2.0, -math.inf], 3, "-inf"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_value_is_refused_naming_row_and_field(case):
    values, row, shown = BAD[case]
    with pytest.raises(DataError) as info:
        read_margin_column(with_margins(values), "margin", source="x.jsonl")
    err = info.value
    assert (err.source, err.row, err.field) == ("x.jsonl", row, "margin")
    assert str(err) == f"x.jsonl: row {row}: field 'margin': expected a finite number, got {shown}"


@pytest.mark.parametrize("case", list(BAD))
def test_every_consumer_refuses_the_same_values(case):
    """DPO, reward training and the quality reader call the one reader: the same error, row and field."""
    from legend.align.dpo import preference_dataset
    from legend.quality import read_labelled_margins
    from legend.rewards.training import read_preferences

    values, row, shown = BAD[case]
    table = with_margins(values)
    expected = f"^<dataset>: row {row}: field 'margin': expected a finite number, got {shown}$"
    with pytest.raises(DataError, match=expected):
        preference_dataset(table)
    with pytest.raises(DataError, match=expected):
        read_preferences(table).column("margin")
    with pytest.raises(DataError, match=expected):  # the quality reader took True as 1.0 and "0.5" as 0.5
        read_labelled_margins(table, margin_column="margin")


def test_every_consumer_names_a_missing_margin_column_the_same_way():
    from legend.align.dpo import preference_dataset
    from legend.quality import read_labelled_margins
    from legend.rewards.training import read_preferences

    table = datasets.Dataset.from_list(ROWS)
    found = (
        "<dataset>: no column 'margin'; columns found: prompt, chosen, rejected; run `legend annotate` to add margins"
    )
    with pytest.raises(DataError, match=f"^{found}, or turn the offset off$"):
        preference_dataset(table)
    with pytest.raises(DataError, match=f"^{found}, or choose another margin column$"):
        read_preferences(table).column("margin")
    with pytest.raises(DataError, match=f"^{found}, or pass --direction$"):
        read_labelled_margins(table, margin_column="margin")
