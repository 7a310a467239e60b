"""Helpers of the hostile batteries (tests/test_bad_input*.py): run the CLI, assert one exact error line, check
that nothing but the expected files is left (inside and outside the output folder) and the input is untouched."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from typer.testing import CliRunner

from helpers import read_jsonl

runner = CliRunner()
MISSING_MODEL = "/nonexistent/legend-model"  # loading it fails: an error about it means the model came first
OUT_FILES = ("out.jsonl", "README.md", ".legend/out.jsonl.json")  # the output, its dataset card and its metadata


def run(*args: object):
    from legend.cli import app

    return runner.invoke(app, [str(a) for a in args])


def annotate(direction: Path, data: Path, out: Path, *extra: object):
    return run("annotate", "--direction", direction, "--data", data, "--out", out, "--quiet", *extra)


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 2 and exactly one line, `error: ...`, holding every fragment."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under `folder` (relative path -> bytes; None for a folder), hidden ones included."""
    found: dict[str, bytes | None] = {}
    for path in sorted(folder.rglob("*")):
        found[str(path.relative_to(folder))] = None if path.is_dir() else path.read_bytes()
    return found


def only(folder: Path, *names: str) -> None:
    """Nothing but `names` (files or folders, `.legend/x` for the metadata) is in `folder`."""
    found = [p.name for p in folder.iterdir() if p.name != ".legend"]
    if (folder / ".legend").exists():
        inside = [f".legend/{p.name}" for p in (folder / ".legend").iterdir()]
        found += inside or [".legend"]  # an empty .legend/ is a leftover too
    assert sorted(found) == sorted(names), sorted(found)


def copy_direction(direction: Path, tmp_path: Path, name: str = "dir") -> Path:
    folder = tmp_path / name
    shutil.copytree(direction, folder)
    return folder


def edit_config(folder: Path, **changes: object) -> None:
    config = folder / "config.json"
    document = json.loads(config.read_text())
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    config.write_text(json.dumps(document))


def fields_unchanged(data: Path, out: Path, added: tuple[str, ...] = ("margin_raw", "margin")) -> list[dict]:
    """Every input row of a JSON Lines file comes back in `out` as it was (types, key order, absent keys), with only
    the `added` keys after them; returns the output rows."""
    original, got = read_jsonl(data), read_jsonl(out)
    assert len(got) == len(original)
    for before, after in zip(original, got):
        assert list(after)[: len(before)] == list(before)
        kept = {k: after[k] for k in before}
        assert json.dumps(kept) == json.dumps(before)  # 1 vs 1.0 vs "1", nested key order and absences
        assert tuple(k for k in after if k not in before) == added
    return got


def home_caches(tmp_path: Path) -> dict[str, str]:
    """Environment pointing every Hugging Face cache at empty folders under `tmp_path` (to see what a run leaves)."""
    root = tmp_path / "caches"
    env = {
        "HF_HOME": str(root / "hf_home"),
        "HF_DATASETS_CACHE": str(root / "datasets"),
        "XDG_CACHE_HOME": str(root / "xdg"),
    }
    for value in env.values():
        os.makedirs(value, exist_ok=True)
    return env
