"""The output and what stays beside it: its metadata files (`metadata_files`, `output_files`), the inputs it must
spare (`input_paths`), its lock and an interrupted run's leftovers (`guarded_output`), the metadata published
with it (`sidecar_with`), and what lets pass 2 write each row back exactly as read (`original_records`,
`input_schema`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..annotation import AnnotateSettings, metadata_paths, sidecar_path, write_card
from ..annotation.differences import differences_path
from ..data import DataError
from ..data.csv_values import csv_records
from ..data.json_values import json_records
from ..data.reading import input_format
from ..io import (
    check_outputs_spare_inputs,
    make_parents,
    output_lock,
    remove_empty_folders,
    remove_leftovers,
    write_json,
)

log = logging.getLogger("legend.engines")


def metadata_files(out: str | os.PathLike) -> list[Path]:
    """The files written beside `out` with it (its metadata); an interrupted run's leftovers of each are removed."""
    final = sidecar_path(out)
    return [final, final.with_name(f".{final.name}.pending"), metadata_paths(out).card, differences_path(out)]


def output_files(out: str | os.PathLike) -> list[Path]:
    """`out` and its metadata files."""
    return [Path(out), *metadata_files(out)]


def input_paths(data: str | os.PathLike, direction_path: Any, settings: AnnotateSettings) -> list[Path]:
    """Every local file or folder an annotation reads: an output must not be (or be inside) one of them."""
    folders = direction_path if isinstance(direction_path, list) else [direction_path]
    paths = [Path(os.fspath(data)).expanduser(), *(Path(f) for f in folders if f is not None)]
    source = getattr(settings.binning, "source", None)
    if source:
        paths.append(Path(source))
    return paths


@contextlib.contextmanager
def guarded_output(out: str | os.PathLike, inputs: list[Path]) -> Iterator[None]:
    """Refuse an `out` that would destroy an input, then hold its lock and clear what an interrupted run left.

    Inside, this run is the only writer of `out` and its metadata files; afterwards only they remain.
    """
    check_outputs_spare_inputs(output_files(out)[:2], inputs)
    with output_lock(out):
        removed = remove_leftovers(output_files(out))
        for pending in metadata_files(out)[1:2]:
            if pending.exists():
                pending.unlink()
                removed.append(pending)
        if removed:
            log.warning("removed %d file(s) an interrupted run left: %s", len(removed), ", ".join(map(str, removed)))
        yield


def original_records(data: str | os.PathLike, out: str | os.PathLike) -> Iterator[Any] | None:
    """The input's records as its file holds them, for an output of the same kind (JSON to JSON, CSV to CSV): the
    writer then writes each row back as it was (no `"key": null` for a missing key, every CSV cell's text kept)."""
    path = Path(os.fspath(data)).expanduser()
    if not path.is_file():
        return None
    kind, output = input_format(path), Path(out).suffix.lower()
    if kind == "json" and output in (".jsonl", ".json"):
        return json_records(path, str(data))
    if kind == "csv" and output == ".csv":
        return csv_records(path)
    return None


def input_schema(data: str | os.PathLike, out: str | os.PathLike, added: Sequence[str]) -> Any:
    """A Parquet input's own Arrow schema (less the columns legend writes), for a Parquet output to keep its
    types exactly (a dictionary column stays one); None otherwise."""
    path = Path(os.fspath(data)).expanduser()
    if Path(out).suffix.lower() != ".parquet" or not path.is_file() or input_format(path) != "parquet":
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    return pa.schema([field for field in schema if field.name not in added])


@contextlib.contextmanager
def sidecar_with(out: str | os.PathLike, sidecar: dict[str, Any]) -> Iterator[None]:
    """Write the metadata as pending, run the body (which writes `out`), then publish it: both or neither.

    Where the metadata goes is `legend.annotation.metadata_paths`: the JSON (made pending, then
    renamed) and the dataset card entry, written once the data is in place.
    """
    final = sidecar_path(out)
    pending = final.with_name(f".{final.name}.pending")
    created = make_parents(final.parent)  # `.legend/`, removed again if the run fails before anything is in it
    try:
        write_json(sidecar, pending)
        yield
        os.replace(pending, final)
    except BaseException:
        pending.unlink(missing_ok=True)
        remove_empty_folders(created)
        raise
    try:  # the output and its metadata are in place: nothing may fail the run now (the card was checked first)
        write_card(out, sidecar)
    except (DataError, OSError) as err:
        from ..io import os_error_message

        reason = os_error_message(err) if isinstance(err, OSError) else str(err)
        log.warning("warning: the dataset card was not updated (%s); %s and its metadata are written", reason, out)
