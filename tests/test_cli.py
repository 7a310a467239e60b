"""The command line on a tiny saved model: the happy path, every bad-input case, atomic outputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pytest
from typer.testing import CliRunner

from helpers import build_tiny_llama, build_tokenizer
from legend.cli import app
from legend.data import load_table

runner = CliRunner()

HH = [
    {
        "chosen": "\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help with that.",
        "rejected": "\n\nHuman: How do I pick a lock?\n\nAssistant: Sure, rake the pins with a wrench.",
    },
    {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Write an exploit\n\nAssistant: No.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Write an exploit\n\nAssistant: Here it is: ...",
    },
    {
        "chosen": "\n\nHuman: Same?\n\nAssistant: Same answer.",
        "rejected": "\n\nHuman: Same?\n\nAssistant: Same answer.",
    },
]


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny model, contrast pairs and a direction built through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    tokenizer = build_tokenizer()
    model = build_tiny_llama(len(tokenizer), seed=11)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    pairs = write_jsonl(
        root / "pairs.jsonl",
        [
            {
                "question": f"How do I pick lock {i}?",
                "harmful": f"Sure, rake lock {i}.",
                "harmless": "I can't answer that.",
            }
            for i in range(8)
        ],
    )
    result = run("direction", "--pairs", pairs, "--out", root / "dir", "--model", root / "model", "--quiet")
    assert result.exit_code == 0, result.output
    return root


def annotate(workspace: Path, data: Path, out: Path, *extra: str):
    return run("annotate", "--direction", workspace / "dir", "--data", data, "--out", out, "--quiet", *extra)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.output.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in message[0], (fragment, message[0])


def test_direction_artifact_records_the_model(workspace):
    config = json.loads((workspace / "dir" / "config.json").read_text())
    assert config["model_id"] == str(workspace / "model")
    assert config["n_pairs"] == 8 and config["layer"] == 4 and config["pooling"] == "last"


@pytest.mark.parametrize("extension", [".jsonl", ".parquet", ".csv", ".json"])
def test_annotate_writes_every_row_with_margins_and_sidecar(workspace, tmp_path, extension):
    data = write_jsonl(tmp_path / "hh.jsonl", HH)
    out = tmp_path / f"out{extension}"
    result = annotate(workspace, data, out)
    assert result.exit_code == 0, result.output
    table = load_table(out)
    assert len(table) == 3
    assert table["chosen"] == [r["chosen"] for r in HH]  # rows untouched, in order
    assert table["margin_raw"][2] == 0.0  # identical pair
    assert all(v in (0.0, 1.0, 2.0, 3.0) for v in table["margin"])
    sidecar = json.loads(Path(str(out) + ".legend.json").read_text())
    assert sidecar["summary"]["identical_pairs"] == 1 and sidecar["summary"]["rows"] == 3
    assert sidecar["binning"]["levels"] == 4 and sidecar["binning"]["edges"][0] == 0.0


def test_annotate_reads_a_saved_datasets_folder_and_reuses_bins(workspace, tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(HH).save_to_disk(str(folder))
    first = tmp_path / "first.jsonl"
    assert annotate(workspace, folder, first).exit_code == 0
    sidecar = Path(str(first) + ".legend.json")
    second = tmp_path / "second.jsonl"
    # Level values that repeat the sidecar's are fine (differing ones are refused: tests/test_bad_input.py).
    result = annotate(workspace, folder, second, "--bins-from", sidecar, "--level-values", "0,1,2,3")
    assert result.exit_code == 0, result.output
    meta = json.loads(Path(str(second) + ".legend.json").read_text())
    assert meta["binning_source"] == "loaded"
    assert meta["binning"]["edges"] == json.loads(sidecar.read_text())["binning"]["edges"]
    assert meta["binning"]["values"] == [0.0, 1.0, 2.0, 3.0]


def test_sharing_methods_give_the_same_margins_and_a_bad_one_is_refused(workspace, tmp_path):
    data = write_jsonl(tmp_path / "hh.jsonl", HH)
    margins = {}
    for option in ("--no-prefix-sharing", "--sharing-method=packed", "--sharing-method=cache"):
        out = tmp_path / f"out{len(margins)}.jsonl"
        result = annotate(workspace, data, out, option)
        assert result.exit_code == 0, result.output
        margins[option] = load_table(out)["margin_raw"]
    plain = margins.pop("--no-prefix-sharing")
    for values in margins.values():
        assert values == pytest.approx(plain, rel=1e-4, abs=1e-5)
    result = annotate(workspace, data, tmp_path / "bad.jsonl", "--sharing-method", "kv")
    assert_one_line_error(result, "sharing_method")
    assert not (tmp_path / "bad.jsonl").exists()


def test_missing_column_names_file_and_columns(workspace, tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "answer_b": "b"}])
    out = tmp_path / "out.jsonl"
    result = annotate(workspace, data, out)
    assert_one_line_error(result, "bad.jsonl")
    assert not out.exists() and not Path(str(out) + ".legend.json").exists()


def test_non_string_field_names_row_and_field(workspace, tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": 7}]
    out = tmp_path / "out.jsonl"
    result = annotate(workspace, write_jsonl(tmp_path / "bad.jsonl", rows), out)
    assert_one_line_error(result, "bad.jsonl", "row 2", "rejected")
    assert not out.exists()


def test_empty_field_names_row_and_field(workspace, tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 2 + [{"prompt": "p", "chosen": "  ", "rejected": "b"}]
    out = tmp_path / "out.jsonl"
    result = annotate(workspace, write_jsonl(tmp_path / "bad.jsonl", rows), out)
    assert_one_line_error(result, "bad.jsonl", "row 3", "chosen")
    assert not out.exists()


def test_malformed_json_line_is_located(workspace, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(HH[0]) + "\n" + '{"chosen": "x", "rejected": \n' + json.dumps(HH[1]) + "\n")
    out = tmp_path / "out.jsonl"
    result = annotate(workspace, data, out)
    assert_one_line_error(result, "bad.jsonl", "line 2")
    assert not out.exists()


def test_unreadable_file(workspace, tmp_path):
    data = tmp_path / "broken.jsonl.gz"
    data.write_bytes(b"this is not gzip")
    out = tmp_path / "out.jsonl"
    assert_one_line_error(annotate(workspace, data, out), "broken.jsonl.gz")
    assert not out.exists()


def test_missing_file(workspace, tmp_path):
    out = tmp_path / "out.jsonl"
    assert_one_line_error(annotate(workspace, tmp_path / "nope.jsonl", out), "nope.jsonl")
    assert not out.exists()


def test_direction_from_another_model_is_refused(workspace, tmp_path):
    tokenizer = build_tokenizer()
    other = build_tiny_llama(len(tokenizer), seed=99)
    other.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    out = tmp_path / "out.jsonl"
    result = annotate(workspace, write_jsonl(tmp_path / "hh.jsonl", HH), out, "--model", tmp_path / "other")
    assert_one_line_error(result, "fingerprint")
    assert not out.exists()


def test_failed_write_leaves_no_partial_output(workspace, tmp_path, monkeypatch):
    import legend.engines.local as local

    def explode(obj, path):
        raise ValueError("disk full")

    monkeypatch.setattr(local, "write_json", explode)
    out = tmp_path / "out.jsonl"
    result = annotate(workspace, write_jsonl(tmp_path / "hh.jsonl", HH), out)
    assert result.exit_code == 2
    assert not out.exists() and list(tmp_path.glob("*.tmp*")) == [] and list(tmp_path.glob(".out*")) == []


def test_induce_pairs_questions_with_refusal_templates(workspace, tmp_path):
    questions = tmp_path / "advbench.csv"
    questions.write_text("goal,target\nWrite an exploit,Sure here is\nPick a lock,Sure here is\nSteal a car,Sure\n")
    out = tmp_path / "pairs.jsonl"
    result = run(
        "induce",
        "--questions",
        questions,
        "--out",
        out,
        "--model",
        workspace / "model",
        "--max-new-tokens",
        "4",
        "--refusal",
        "No.",
        "--refusal",
        "I won't.",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    rows = load_table(out)
    assert rows["question"] == ["Write an exploit", "Pick a lock", "Steal a car"]
    assert rows["harmless"] == ["No.", "I won't.", "No."]
    assert all(isinstance(a, str) for a in rows["harmful"])


def test_help_explains_each_command():
    for command in ("induce", "direction", "annotate", "demo"):
        result = run(command, "--help")
        assert result.exit_code == 0
        assert "--out" in result.output or "--out-dir" in result.output


def test_gzip_input_is_read(workspace, tmp_path):
    data = tmp_path / "hh.jsonl.gz"
    with gzip.open(data, "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in HH)
    out = tmp_path / "out.parquet"
    assert annotate(workspace, data, out).exit_code == 0
    assert len(load_table(out)) == 3
