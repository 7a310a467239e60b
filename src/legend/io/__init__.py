"""Writing results: the one home of atomic writing (files, folders, record tables, JSON) and of output locks.

Every file legend produces appears only when complete: it is written to a temporary name in the
same folder and renamed over the target (`atomic_path`), or built as a temporary folder renamed
into place (`atomic_folder`). On any failure nothing is left behind: not the temporary, and not a
parent folder the write created. What appears gets the permissions the umask gives a new file or
folder (0644/0755 under umask 022), whatever the temporary-file API created (mkdtemp makes 0700,
safetensors 0600); a file that replaces an existing one keeps that file's permissions. An OS error
(a full disk, a read-only folder) names the target, not the temporary.

Shared state is guarded here too: `output_lock` (one writer of an output, released on SIGTERM/SIGHUP
as on an exception) and `file_lock` (a short read-modify-write of a shared file such as a dataset card).

One module per mechanism:

* `paths`             the umask's permissions, parent folders created and removed, `os_error_message`;
* `atomic`            `atomic_path`, `atomic_folder`, `write_bytes_atomically`, leftover temporaries;
* `locks`             `output_lock`, `file_lock`, `unwind_on_termination` (SIGTERM/SIGHUP);
* `guards`            `check_writable`, `check_outputs_spare_inputs`: before any work;
* `json_file`         `write_json`, `json_default`;
* `safetensors_file`  `safetensors_header`, `write_safetensors`: reproducible safetensors files;
* `formats`           `check_output_type`, `check_output_values`: what each output format holds exactly;
* `tables`            `ChunkWriter`, `write_table`, `quiet_datasets`.
"""

from __future__ import annotations

from .atomic import (
    atomic_folder,
    atomic_path,
    leftover_temporaries,
    remove_leftovers,
    temporary_name,
    write_bytes_atomically,
)
from .formats import ALTERNATIVES, OUTPUT_FORMATS, check_output_type, check_output_values, nested_columns
from .guards import check_outputs_spare_inputs, check_writable
from .json_file import json_default, write_json
from .locks import LOCK_SUFFIX, TERMINATING_SIGNALS, file_lock, lock_path, output_lock, unwind_on_termination
from .paths import (
    TEMP_SUFFIX,
    current_umask,
    give_usual_permissions,
    make_parents,
    naming,
    new_file_mode,
    os_error_message,
    remove_empty_folders,
)
from .safetensors_file import safetensors_header, write_safetensors
from .tables import ChunkWriter, csv_text, quiet_datasets, write_table

__all__ = [
    "ALTERNATIVES",
    "LOCK_SUFFIX",
    "OUTPUT_FORMATS",
    "TEMP_SUFFIX",
    "TERMINATING_SIGNALS",
    "ChunkWriter",
    "atomic_folder",
    "atomic_path",
    "check_output_type",
    "check_output_values",
    "check_outputs_spare_inputs",
    "check_writable",
    "csv_text",
    "current_umask",
    "file_lock",
    "give_usual_permissions",
    "json_default",
    "leftover_temporaries",
    "lock_path",
    "make_parents",
    "naming",
    "nested_columns",
    "new_file_mode",
    "os_error_message",
    "output_lock",
    "quiet_datasets",
    "remove_empty_folders",
    "remove_leftovers",
    "safetensors_header",
    "temporary_name",
    "unwind_on_termination",
    "write_bytes_atomically",
    "write_json",
    "write_safetensors",
    "write_table",
]
