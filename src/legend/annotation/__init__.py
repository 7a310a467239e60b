"""Annotation as a stage (layer 4): its settings, the one finishing step, the metadata and the dataset card.

- `settings`: `AnnotateSettings`, the directions an annotation applies and the columns they fill;
- `finish`: `finish_annotation`, the one step every engine ends with (bins, columns, summary, metadata);
- `metadata`: where an annotated file's metadata lives (`.legend/<file>.json`), reading and writing it;
- `card`: the dataset card `README.md` beside annotated data;
- `memory`: `annotate`, the whole stage on a dataset held in memory.
"""

from .card import CARD_TAGS, card_entry, card_parts, card_path, card_section, check_card, merged_card, write_card
from .finish import (
    Annotation,
    Finished,
    annotation_summary,
    check_answers_kept,
    finish_annotation,
    fit_binnings,
    other_directions_summary,
    secondary_of,
    with_margins,
)
from .memory import annotate
from .metadata import (
    CARD_FILE,
    EVALUATION_METRICS,
    LEGACY_SIDECAR_SUFFIX,
    METADATA_FOLDER,
    SIDECAR_SUFFIX,
    MetadataPaths,
    find_sidecar,
    legacy_sidecar_path,
    load_binning,
    metadata_paths,
    read_sidecar,
    record_evaluation,
    sidecar_document,
    sidecar_path,
    write_metadata,
)
from .settings import (
    BINNING_RULE,
    MARGIN_COLUMNS,
    AnnotateSettings,
    DirectionArg,
    check_level_values,
    check_margin_columns,
    check_text_settings,
    load_directions,
    margin_columns,
)

__all__ = [
    "BINNING_RULE",
    "CARD_FILE",
    "CARD_TAGS",
    "EVALUATION_METRICS",
    "LEGACY_SIDECAR_SUFFIX",
    "MARGIN_COLUMNS",
    "METADATA_FOLDER",
    "SIDECAR_SUFFIX",
    "AnnotateSettings",
    "Annotation",
    "DirectionArg",
    "Finished",
    "MetadataPaths",
    "annotate",
    "annotation_summary",
    "card_entry",
    "card_parts",
    "card_path",
    "card_section",
    "check_answers_kept",
    "check_card",
    "check_level_values",
    "check_margin_columns",
    "check_text_settings",
    "find_sidecar",
    "finish_annotation",
    "fit_binnings",
    "legacy_sidecar_path",
    "load_binning",
    "load_directions",
    "margin_columns",
    "merged_card",
    "metadata_paths",
    "other_directions_summary",
    "read_sidecar",
    "record_evaluation",
    "secondary_of",
    "sidecar_document",
    "sidecar_path",
    "with_margins",
    "write_card",
    "write_metadata",
]
