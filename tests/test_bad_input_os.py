"""Nothing silent, round two (issue 17), classes 3, 4 and 6: OS errors and damaged files in one line, nothing left
behind, the permissions the umask gives.

OS errors are injected (a read-only file system and a full disk by monkeypatching the OS calls, which works
as root too; a chmod-ed folder where the tests do not run as root); signals and the dataset cache are tried
with real subprocesses.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import legend
from helpers import write_jsonl
from hostile import (
    MISSING_MODEL,
    OUT_FILES,
    annotate,
    assert_one_line_error,
    home_caches,
    only,
    run,
    snapshot,
)

SRC = str(Path(legend.__file__).parents[1])


def _pairs(n: int = 6) -> list[dict]:
    return [{"prompt": f"Question {i}?", "chosen": f"I can't help {i}.", "rejected": f"Sure {i}."} for i in range(n)]


@pytest.fixture
def no_model_load(monkeypatch):
    from legend.engines import local

    monkeypatch.setattr(local, "load_encoder", lambda *a, **k: pytest.fail("the model was loaded before the error"))


@pytest.fixture(scope="module")
def annotated(tiny_cli_model, tmp_path_factory):
    """An annotated file (with its metadata and card) to run evaluate and report on."""
    _, direction = tiny_cli_model
    folder = tmp_path_factory.mktemp("annotated")
    data = write_jsonl(folder / "in.jsonl", _pairs(12))
    result = annotate(direction, data, folder / "out.jsonl")
    assert result.exit_code == 0, result.output
    return folder / "out.jsonl"


def read_only(monkeypatch, folder: Path, code: int = errno.EROFS) -> None:
    """Every file or folder creation under `folder` fails with `code` (a read-only file system, as root too)."""
    real_open, real_mkdir = os.open, os.mkdir
    inside = str(folder.resolve())

    def refuse(path, *args, **kwargs):
        if os.path.abspath(os.fspath(path)).startswith(inside):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return None

    def checked_open(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def checked_mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", checked_open)
    monkeypatch.setattr(os, "mkdir", checked_mkdir)


# ---------------------------------------------------------------- OS errors: one line naming the path


def _commands(tiny_cli_model, annotated: Path, tmp_path: Path, target: Path) -> dict[str, list[object]]:
    model, direction = tiny_cli_model
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"question": f"q{i}", "harmful": "h", "harmless": "s"} for i in range(4)]
    )
    questions = write_jsonl(tmp_path / "questions.jsonl", [{"question": "How?"}])
    return {
        "annotate": ["annotate", "--direction", direction, "--data", annotated.parent / "in.jsonl", "--out",
                     target / "out.jsonl", "-q"],
        "direction": ["direction", "--recipe", "paper", "--pairs", pairs, "--out", target / "dir", "--model", model],
        "induce": ["induce", "--questions", questions, "--out", target / "pairs.jsonl", "--model", model],
        "evaluate": ["evaluate", "--data", annotated, "--json", target / "metrics.json", "--random-directions", 0],
        "report": ["report", "--data", annotated, "--out", target / "report.html", "--random-directions", 0],
        "audit": ["audit", "--data", annotated, "--out", target / "audited.jsonl"],
    }  # fmt: skip


COMMANDS = ["annotate", "direction", "induce", "evaluate", "report", "audit"]
OUTPUT_NAME = {"annotate": "out.jsonl", "direction": "dir", "induce": "pairs.jsonl", "evaluate": "metrics.json",
               "report": "report.html", "audit": "audited.jsonl"}  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_an_output_folder_that_cannot_be_written_is_one_line_before_any_work(
    tiny_cli_model, annotated, tmp_path, monkeypatch, command, code
):
    from legend.models import loaded

    target = tmp_path / "ro"
    target.mkdir()
    args = _commands(tiny_cli_model, annotated, tmp_path, target)[command]
    before, outside = snapshot(tmp_path), snapshot(annotated.parent)
    monkeypatch.setattr(loaded, "load_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    read_only(monkeypatch, target, code)
    result = run(*args)
    assert_one_line_error(result, f"error: {target / OUTPUT_NAME[command]}: {os.strerror(code)}")
    assert snapshot(tmp_path) == before and snapshot(annotated.parent) == outside


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_chmod_read_only_folder_is_one_line(tiny_cli_model, tmp_path):
    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o555)
    try:
        result = annotate(direction, data, target / "out.jsonl")
        assert_one_line_error(result, f"error: {target / 'out.jsonl'}: Permission denied")
        assert list(target.iterdir()) == []
    finally:
        target.chmod(0o755)


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_under_a_regular_file_is_one_line(tiny_cli_model, annotated, tmp_path, command):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    args = _commands(tiny_cli_model, annotated, tmp_path, blocker / "sub")[command]
    before = snapshot(tmp_path)
    result = run(*args)
    assert_one_line_error(
        result, f"error: {blocker / 'sub' / OUTPUT_NAME[command]}: Not a directory ({blocker} is a file)"
    )
    assert snapshot(tmp_path) == before


class _FullDisk:
    """A text file whose writes fail with ENOSPC once `room` characters were written."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, text: str) -> int:
        self.room -= len(text)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.handle.write(text)

    def __getattr__(self, name: str):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_a_full_disk_during_the_write_is_one_line_and_leaves_only_what_resumes(tiny_cli_model, tmp_path, monkeypatch):
    """ENOSPC while the output is written: one line naming the output, no temporary, no lock, no empty .legend/;
    the finished chunks stay for the rerun (a full disk is fixed by freeing space, and then nothing is computed
    again), which leaves only the output and its metadata."""
    import builtins

    from legend.io import tables  # ChunkWriter opens the output there

    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", _pairs(9))
    before = data.read_bytes()
    out = tmp_path / "out.jsonl"

    def small_disk(path, mode="r", *args, **kwargs):
        handle = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 -- returned, closed by the writer
        return _FullDisk(handle, 600) if "w" in mode and Path(path).name.startswith(".out.jsonl.") else handle

    with monkeypatch.context() as patch:
        patch.setattr(tables, "open", small_disk, raising=False)
        result = annotate(direction, data, out, "--chunk-rows", 3)
    assert_one_line_error(result, f"error: {out}: No space left on device")
    only(tmp_path, "in.jsonl", ".out.jsonl.legend-work")
    assert data.read_bytes() == before
    result = annotate(direction, data, out, "--chunk-rows", 3, "--summary-json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["resume"]["chunks_reused"] == 3
    only(tmp_path, "in.jsonl", *OUT_FILES)


def test_a_full_disk_writing_metrics_is_one_line(annotated, tmp_path, monkeypatch):
    import builtins

    from legend.io import json_file  # write_json opens the file there

    def full(path, mode="r", *args, **kwargs):
        handle = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 -- returned, closed by the writer
        return _FullDisk(handle, 0) if "w" in mode else handle

    monkeypatch.setattr(json_file, "open", full, raising=False)
    target = tmp_path / "metrics.json"
    result = run("evaluate", "--data", annotated, "--json", target, "--random-directions", 0, "--no-record")
    assert_one_line_error(result, f"error: {target}: No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_os_error_lines_name_the_path_and_the_errno_words():
    from legend.cli.app import error_line

    assert error_line(OSError(errno.EROFS, "Read-only file system", "/ro/x")) == "/ro/x: Read-only file system"
    assert error_line(PermissionError(errno.EACCES, "Permission denied", "/a")) == "/a: Permission denied"
    assert error_line(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) == (
        "/a -> /b: Invalid cross-device link"
    )
    assert error_line(FileNotFoundError("pairs.jsonl: no such file")) == "pairs.jsonl: no such file"


# ---------------------------------------------------------------- an existing dataset card checked before any work

CARDS = {
    "malformed YAML": ("---\ntags: [a, b\n---\n# x\n", "the YAML front matter is not valid YAML (line 2"),
    "python tag": (
        "---\nbad: !!python/object:os.system {}\n---\n# x\n",
        "the YAML front matter uses a tag 'tag:yaml.org,2002:python/object:os.system' that legend does not construct",
    ),
    "legend: 5": ("---\nlegend: 5\n---\n# x\n", "'legend' in the front matter is int: expected a mapping"),
    "tags: 5": ("---\ntags: 5\n---\n# x\n", "'tags' in the front matter is int: expected a list of strings"),
    "tags: text": ("---\ntags: mine\n---\n# x\n", "'tags' in the front matter is str: expected a list of strings"),
    "files as a list": (
        "---\nlegend:\n  files: [a, b]\n---\n# x\n",
        "'legend.files' in the front matter is a list: expected a mapping of file name to entry",
    ),
    "a list": ("---\n- a\n- b\n---\n# x\n", "the YAML front matter is not a mapping"),
}


@pytest.mark.parametrize("case", sorted(CARDS))
def test_a_dataset_card_legend_cannot_update_is_refused_before_any_work(tiny_cli_model, tmp_path, case, no_model_load):
    _, direction = tiny_cli_model
    text, message = CARDS[case]
    card = tmp_path / "README.md"
    card.write_text(text)
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())
    result = annotate(direction, data, tmp_path / "out.jsonl")
    assert_one_line_error(result, f"error: {card}: {message}")
    assert card.read_text() == text
    only(tmp_path, "in.jsonl", "README.md")


def test_a_card_broken_after_the_check_is_a_warning_not_a_failure(tiny_cli_model, tmp_path, monkeypatch):
    """Once the output is in place nothing fails the run: a card another program broke meanwhile is left alone."""
    from legend.engines import local

    _, direction = tiny_cli_model
    card = tmp_path / "README.md"
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())
    real = local.ChunkWriter.__exit__

    def break_card(self, *args):
        card.write_text("---\ntags: 5\n---\n")
        return real(self, *args)

    monkeypatch.setattr(local.ChunkWriter, "__exit__", break_card)
    result = annotate(direction, data, tmp_path / "out.jsonl")
    assert result.exit_code == 0, result.output
    assert f"warning: the dataset card was not updated ({card}: 'tags' in the front matter is int" in result.output
    assert card.read_text() == "---\ntags: 5\n---\n"
    only(tmp_path, "in.jsonl", "README.md", "out.jsonl", ".legend/out.jsonl.json")


# ---------------------------------------------------------------- a chat template that raises


def _model_with_template(model: Path, tmp_path: Path, template: str) -> Path:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    (folder / "chat_template.jinja").write_text(template)
    return folder


NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_a_chat_template_that_raises_on_a_row_is_one_line_naming_the_row(tiny_cli_model, tmp_path):
    from legend.data import ContrastPair
    from legend.directions import DirectionSettings, build_direction
    from legend.models import load_model

    model, _ = tiny_cli_model
    picky = _model_with_template(model, tmp_path, NO_SYSTEM)
    lm = load_model(str(picky))
    pairs = [ContrastPair(f"Lock {i}?", f"Sure, rake {i}.", "I can't.") for i in range(6)]
    build_direction(lm, pairs, DirectionSettings(layer=2, pooling="mean")).save(tmp_path / "dir")
    rows = [{"prompt": [{"role": "user", "content": f"Q{i}?"}], "chosen": [{"role": "assistant", "content": "No."}],
             "rejected": [{"role": "assistant", "content": f"Yes {i}."}]} for i in range(5)]  # fmt: skip
    rows[3]["prompt"] = [{"role": "system", "content": "Be nice."}] + rows[3]["prompt"]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    result = annotate(tmp_path / "dir", data, tmp_path / "out.jsonl", "--chunk-rows", 2)
    assert_one_line_error(
        result,
        f"error: {data}: row 4: the chat template of '{picky}' failed (System role not supported); use --template "
        "plain (when building the direction), or fix the conversation it refuses (its chosen answer)",
    )
    only(tmp_path, "in.jsonl", "model", "dir")


def test_a_chat_template_that_always_raises_is_one_line_before_the_model_loads(tiny_cli_model, tmp_path, no_model_load):
    model, direction = tiny_cli_model
    broken = _model_with_template(model, tmp_path, "{{ raise_exception('this template is broken') }}")
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())
    result = annotate(direction, data, tmp_path / "out.jsonl", "--model", broken)
    assert_one_line_error(result, f"error: the chat template of '{broken}' failed (this template is broken)")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"question": "q", "harmful": "h", "harmless": "s"}] * 4)
    result = run("direction", "--recipe", "paper", "--pairs", pairs, "--out", tmp_path / "d", "--model", broken)
    assert_one_line_error(result, f"error: the chat template of '{broken}' failed (this template is broken)")
    only(tmp_path, "in.jsonl", "pairs.jsonl", "model")


# ---------------------------------------------------------------- --push-to-hub that cannot work


@pytest.fixture
def contrast_pairs(tmp_path):
    return write_jsonl(
        tmp_path / "pairs.jsonl", [{"question": f"q{i}", "harmful": "h", "harmless": "s"} for i in range(4)]
    )


def test_push_to_hub_offline_fails_before_the_build(tmp_path, contrast_pairs, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = run("direction", "--recipe", "paper", "--pairs", contrast_pairs, "--out", tmp_path / "dir",
                 "--push-to-hub", "user/safety-dir", "--model", MISSING_MODEL)  # fmt: skip
    assert_one_line_error(
        result,
        "error: --push-to-hub user/safety-dir: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE is set)",
    )
    only(tmp_path, "pairs.jsonl")


def test_push_to_hub_without_a_reachable_hub_fails_before_the_build(tmp_path, contrast_pairs, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    result = run("direction", "--recipe", "paper", "--pairs", contrast_pairs, "--out", tmp_path / "dir",
                 "--push-to-hub", "user/safety-dir", "--model", MISSING_MODEL)  # fmt: skip
    assert_one_line_error(result, "error: --push-to-hub user/safety-dir: the Hub cannot take an upload now (")
    assert "nothing was built" in result.output
    only(tmp_path, "pairs.jsonl")


def test_a_failed_upload_after_the_build_keeps_the_direction(tiny_cli_model, tmp_path, contrast_pairs, monkeypatch):
    from legend.directions import Direction

    model, _ = tiny_cli_model
    monkeypatch.setattr(Direction, "check_push", staticmethod(lambda *a, **k: None))

    def offline(self, repo_id, **kwargs):
        raise ConnectionError("the network went away")

    monkeypatch.setattr(Direction, "push_to_hub", offline)
    out = tmp_path / "dir"
    result = run("direction", "--recipe", "paper", "--pairs", contrast_pairs, "--out", out, "--push-to-hub",
                 "user/safety-dir", "--model", model)  # fmt: skip
    assert result.exit_code == 2
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith(
            f"error: {out}: the direction is saved there, but the upload to user/safety-dir failed (the network went "
            "away)"
        )
    )
    assert Direction.load(out).layer == 4


# ---------------------------------------------------------------- damaged embedding differences


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no tensor"])
@pytest.mark.parametrize("command", ["evaluate", "report"])
def test_damaged_embedding_differences_are_one_line(annotated, tmp_path, command, damage):
    import shutil

    import numpy as np
    from safetensors.numpy import save_file

    from legend.annotation.differences import differences_path, write_differences

    folder = tmp_path / "copy"
    shutil.copytree(annotated.parent, folder)
    data = folder / annotated.name
    stored = differences_path(data)
    if damage == "no tensor":
        stored.parent.mkdir(parents=True, exist_ok=True)
        save_file({"other": np.zeros((12, 32), dtype=np.float32)}, str(stored))
        message = f"{stored}: no embedding differences of 'margin_raw' (it holds: other)"
    else:
        write_differences(stored, {"margin_raw": np.zeros((12, 32), dtype=np.float32)})
        whole = stored.read_bytes()
        stored.write_bytes(b"\x00\xffnot safetensors" if damage == "garbage" else whole[: len(whole) // 2])
        message = f"{stored}: not a readable safetensors file ("
    before = snapshot(folder)
    args = ["--json", tmp_path / "m.json", "--no-record"] if command == "evaluate" else ["--out", tmp_path / "r.html"]
    result = run(command, "--data", data, *args)
    assert_one_line_error(result, f"error: {message}")
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


# ---------------------------------------------------------------- nothing left behind


def test_a_failing_out_in_new_folders_leaves_no_folder(tiny_cli_model, tmp_path):
    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())
    result = annotate(direction, data, tmp_path / "new1" / "new2" / "new3" / "o.jsonl", "--model", MISSING_MODEL)
    assert_one_line_error(result, f"error: model '{MISSING_MODEL}': could not be loaded")
    only(tmp_path, "in.jsonl")


def test_a_late_failure_leaves_no_folder_and_no_empty_metadata_folder(tiny_cli_model, tmp_path, monkeypatch):
    from legend.engines import local

    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())

    def fails(self, chunk, *args, **kwargs):
        raise legend.DataError("the write failed", source="somewhere")

    monkeypatch.setattr(local.ChunkWriter, "write", fails)
    result = annotate(direction, data, tmp_path / "new1" / "new2" / "o.jsonl")
    assert_one_line_error(result, "error: somewhere: the write failed")
    only(tmp_path, "in.jsonl")
    (tmp_path / "kept").mkdir()  # an existing folder stays, without a .legend/ in it
    result = annotate(direction, data, tmp_path / "kept" / "o.jsonl")
    assert_one_line_error(result, "error: somewhere: the write failed")
    assert list((tmp_path / "kept").iterdir()) == []


def test_a_failing_direction_or_metrics_in_new_folders_leaves_no_folder(annotated, tmp_path, contrast_pairs):
    result = run("direction", "--recipe", "paper", "--pairs", contrast_pairs, "--out", tmp_path / "n1" / "n2" / "dir",
                 "--model", MISSING_MODEL)  # fmt: skip
    assert_one_line_error(result, f"error: model '{MISSING_MODEL}': could not be loaded")
    result = run("evaluate", "--data", annotated, "--json", tmp_path / "n1" / "m.json", "--margin-column", "nope")
    assert_one_line_error(result, "no column 'nope'")
    only(tmp_path, "pairs.jsonl")


CACHE_RUN = """
import sys
from legend.cli import app
app(sys.argv[1:], prog_name="legend")
"""


def test_reading_local_files_leaves_nothing_in_the_datasets_cache(tiny_cli_model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, direction = tiny_cli_model
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rows = _pairs()
    write_jsonl(inputs / "in.jsonl", rows)
    (inputs / "in.csv").write_text(
        "prompt,chosen,rejected\n" + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in rows)
    )
    pq.write_table(pa.Table.from_pylist(rows), inputs / "in.parquet")
    (inputs / "in.json").write_text(json.dumps(rows))
    env = {**os.environ, **home_caches(tmp_path), "PYTHONPATH": SRC}
    caches = tmp_path / "caches"
    before = snapshot(caches)
    for name in ("in.jsonl", "in.csv", "in.parquet", "in.json"):
        args = ["annotate", "--direction", str(direction), "--data", str(inputs / name), "--out",
                str(tmp_path / "out" / f"{name}.jsonl"), "-q"]  # fmt: skip
        done = subprocess.run([sys.executable, "-c", CACHE_RUN, *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert snapshot(caches) == before


# ---------------------------------------------------------------- SIGTERM / SIGINT release the output lock

SLOW_RUN = """
import os, sys, time
from pathlib import Path
from legend.engines import local

real = local.chunk_margins
def slow(*args, **kwargs):
    Path(os.environ["LEGEND_TEST_READY"]).write_text("ready")
    time.sleep(60)
    return real(*args, **kwargs)
local.chunk_margins = slow
from legend.cli import app
app(sys.argv[1:], prog_name="legend")
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_releases_the_output_lock(tiny_cli_model, tmp_path, signum):
    from legend.io import lock_path

    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", _pairs(4))
    out = tmp_path / "out.jsonl"
    ready = tmp_path.parent / f"{tmp_path.name}.ready"
    env = {**os.environ, "PYTHONPATH": SRC, "LEGEND_TEST_READY": str(ready)}
    args = ["annotate", "--direction", str(direction), "--data", str(data), "--out", str(out), "-q"]
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A job started in the background (nohup, `cmd &`) inherits SIGINT ignored, and Python then keeps it
        # ignored: give the child the default disposition a terminal's Ctrl-C meets.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert lock_path(out).exists()
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        ready.unlink(missing_ok=True)
    assert child.returncode == 128 + signum, stderr  # 143 for SIGTERM, 130 for SIGINT, as a shell reports them
    assert not lock_path(out).exists()
    only(tmp_path, "in.jsonl")
    result = annotate(direction, data, out)  # and the next run is not blocked
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- permissions: what the umask gives


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_and_folders_get_the_umask_permissions(tiny_cli_model, tmp_path, umask_022, contrast_pairs):
    from legend.annotation.differences import differences_path

    model, direction = tiny_cli_model
    result = run(
        "direction", "--recipe", "paper", "--pairs", contrast_pairs, "--out", tmp_path / "dir", "--model", model
    )
    assert result.exit_code == 0, result.output
    assert _mode(tmp_path / "dir") == 0o755  # atomic_folder's mkdtemp made it 0700
    assert {p.name: _mode(p) for p in (tmp_path / "dir").iterdir()} == {
        "README.md": 0o644,
        "config.json": 0o644,
        "direction.safetensors": 0o644,  # safetensors writes 0600
    }
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())
    for suffix in (".jsonl", ".parquet", ".csv"):
        out = tmp_path / "prefs" / f"out{suffix}"
        assert annotate(direction, data, out, "--keep-differences").exit_code == 0
        assert _mode(out) == 0o644
    assert _mode(tmp_path / "prefs") == 0o755 and _mode(tmp_path / "prefs" / ".legend") == 0o755
    assert _mode(tmp_path / "prefs" / "README.md") == 0o644
    assert {_mode(p) for p in (tmp_path / "prefs" / ".legend").iterdir()} == {0o644}
    stored = differences_path(tmp_path / "prefs" / "out.jsonl")
    assert stored.is_file() and _mode(stored) == 0o644  # kept differences, written in the annotation's pass


def test_a_replaced_file_keeps_its_permissions(tiny_cli_model, tmp_path, umask_022):
    _, direction = tiny_cli_model
    card = tmp_path / "README.md"
    card.write_text("---\nlicense: mit\n---\n# Mine\n")
    card.chmod(0o600)
    data = write_jsonl(tmp_path / "in.jsonl", _pairs())
    assert annotate(direction, data, tmp_path / "out.jsonl").exit_code == 0
    assert _mode(card) == 0o600 and "legend:begin out.jsonl" in card.read_text()


def test_another_umask_is_followed(tmp_path):
    from legend.io import atomic_folder, write_json

    previous = os.umask(0o027)
    try:
        with atomic_folder(tmp_path / "made") as folder:
            (folder / "inside.txt").write_text("x")
        write_json({"a": 1}, tmp_path / "made.json")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "made") == 0o750 and _mode(tmp_path / "made" / "inside.txt") == 0o640
    assert _mode(tmp_path / "made.json") == 0o640
