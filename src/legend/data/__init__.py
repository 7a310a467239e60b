"""Reading preference data: tables, layouts, and the texts of each pair.

Everything that touches user files lives here, so that the rest of the package only ever sees two
things: a `datasets.Dataset` (as read, rows untouched) and a list of `PairView`s (the prompt /
chosen / rejected texts of each row, whatever the layout of the source). Every problem with the
user's data is reported as a `DataError` whose text is one line naming the file, the row and the field.

One module per mechanism:

* `values`          a file's raw text (gzip, UTF-8) and how a bad value is named;
* `json_values`     the raw records of a JSON file and the check that reading kept every value and type;
* `csv_values`      the cell texts of a CSV file and the check that type inference changed none;
* `reading`         `load_table` (file, folder, Hub), input formats, read failures explained;
* `schema`          `PairView`, `ColumnNames`, `PairLayout` and what a layout's predicate sees;
* `builtin_layouts` the five layouts legend knows (conversational, explicit, hh, implicit, pku);
* `layouts`         the registry (`LAYOUTS`, `register_layout`), `detect_layout`, `pair_views`;
* `streaming`       `iter_chunks`, `scan_input`, `chunk_views`: big inputs in flat memory;
* `contrast`        contrast pairs and question lists for building directions;
* `pairs`           `read_pairs`: read, detect, view in one call;
* `margin_column`   `read_margin_column`: the one reader of a numeric margin column.

>>> import datasets
>>> pairs = read_pairs(datasets.Dataset.from_list([{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}]))
>>> pairs.layout, pairs.views[0].prompt
('explicit', ({'role': 'user', 'content': 'Hi'},))
"""

from __future__ import annotations

from ..errors import DataError
from .builtin_layouts import count_transcripts, split_hh_transcript
from .contrast import ContrastPair, read_contrast_pairs, read_questions
from .csv_values import check_csv_values_kept, csv_records
from .json_values import check_values_kept, json_records
from .layouts import (
    LAYOUTS,
    detect_layout,
    layouts_help,
    layouts_markdown,
    pair_views,
    register_layout,
    unregister_layout,
)
from .margin_column import read_margin_column
from .pairs import Pairs, read_pairs
from .reading import check_file_split, input_format, load_table, streamable_format
from .schema import (
    ColumnNames,
    Layout,
    LayoutError,
    LayoutProbe,
    Message,
    PairColumns,
    PairLayout,
    PairView,
    Where,
    user_prompt,
)
from .streaming import DEFAULT_CHUNK_ROWS, InputScan, chunk_views, iter_chunks, scan_input
from .values import find_non_utf8

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "LAYOUTS",
    "ColumnNames",
    "ContrastPair",
    "DataError",
    "InputScan",
    "Layout",
    "LayoutError",
    "LayoutProbe",
    "Message",
    "PairColumns",
    "PairLayout",
    "PairView",
    "Pairs",
    "Where",
    "check_csv_values_kept",
    "check_file_split",
    "check_values_kept",
    "chunk_views",
    "count_transcripts",
    "csv_records",
    "detect_layout",
    "find_non_utf8",
    "input_format",
    "iter_chunks",
    "json_records",
    "layouts_help",
    "layouts_markdown",
    "load_table",
    "pair_views",
    "read_contrast_pairs",
    "read_margin_column",
    "read_pairs",
    "read_questions",
    "register_layout",
    "scan_input",
    "split_hh_transcript",
    "streamable_format",
    "unregister_layout",
    "user_prompt",
]
