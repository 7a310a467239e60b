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
    # `legend direction` without options: the recommended recipe (mean pooling, mean difference, layer chosen).
    assert config["n_pairs"] == 8 and config["pooling"] == "mean" and config["estimator"] == "mean_difference"
    assert config["extra"]["recipe"] == "legend" and config["extra"]["selection"]["chosen"]["layer"] == config["layer"]


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
    sidecar = json.loads((tmp_path / ".legend" / f"out{extension}.json").read_text())
    assert sidecar["summary"]["identical_pairs"] == 1 and sidecar["summary"]["rows"] == 3
    assert sidecar["binning"]["levels"] == 4 and sidecar["binning"]["edges"][0] == 0.0


def test_annotate_reads_a_saved_datasets_folder_and_reuses_bins(workspace, tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(HH).save_to_disk(str(folder))
    first = tmp_path / "first.jsonl"
    assert annotate(workspace, folder, first).exit_code == 0
    sidecar = tmp_path / ".legend" / "first.jsonl.json"
    second = tmp_path / "second.jsonl"
    # Level values that repeat the sidecar's are fine (differing ones are refused: tests/test_bad_input.py).
    result = annotate(workspace, folder, second, "--bins-from", sidecar, "--level-values", "0,1,2,3")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / ".legend" / "second.jsonl.json").read_text())
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
    import legend.engines.outputs as outputs  # sidecar_with writes the metadata JSON there

    def explode(obj, path):
        raise ValueError("disk full")

    monkeypatch.setattr(outputs, "write_json", explode)
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


# ---------------------------------------------------------------- one name per option across commands


def command_options() -> dict[str, dict[str, set[str]]]:
    """Every command's options as {command: {parameter name: its flags}}, read from the click command tree."""
    import typer.main

    group = typer.main.get_command(app)
    return {
        name: {p.name: set(p.opts) | set(p.secondary_opts) for p in command.params if p.name}
        for name, command in group.commands.items()  # type: ignore[attr-defined]
    }


PAIR_COMMANDS = ("annotate", "evaluate", "audit", "train-rm", "eval-rm", "ensemble-margins", "compare-rm", "dpo")


def test_every_pair_reading_command_spells_the_columns_the_same_way():
    options = command_options()
    for command in PAIR_COMMANDS:
        for column in ("prompt", "chosen", "rejected"):
            assert options[command][f"{column}_column"] == {f"--{column}-column"}, command


def test_shared_options_have_one_spelling_in_every_command():
    """The same parameter has the same flags wherever it appears (the aliases included)."""
    expected = {
        "model": {"--model", "-m"},
        "limit": {"--limit"},
        "seed": {"--seed"},
        "batch_size": {"--batch-size"},
        "dtype": {"--dtype"},
        "device": {"--device"},
        "quiet": {"--quiet", "-q"},
        "trust_remote_code": {"--trust-remote-code", "--no-trust-remote-code"},
        "max_length": {"--max-length"},
        "learning_rate": {"--learning-rate"},
        "epochs": {"--epochs"},
        "grad_accum": {"--grad-accum"},
        "lora_r": {"--lora-r"},
        "margin_column": {"--margin-column"},
    }
    options = command_options()
    for command, params in options.items():
        for name, flags in expected.items():
            if name in params:
                assert flags <= params[name], (command, name, params[name])
    # best-of-n's policy is its --model/-m (the old --policy still works).
    assert {"--model", "-m", "--policy"} <= options["best-of-n"]["policy"]
    for command in ("train-rm", "eval-rm", "ensemble-margins", "compare-rm", "dpo", "best-of-n"):
        assert "--quiet" in options[command]["quiet"] and "--trust-remote-code" in options[command]["trust_remote_code"]
    for command in ("eval-rm", "best-of-n", "annotate", "evaluate", "audit"):
        assert {"dtype", "device"} <= set(options[command]), command


def test_training_option_help_comes_from_the_settings_fields():
    from legend.rewards.fields import DPOFields, RewardFields

    for command, cls, field in (
        ("train-rm", RewardFields, "template"),
        ("train-rm", RewardFields, "train_layers"),
        ("dpo", DPOFields, "offset_transform"),
    ):
        flag = "--" + field.replace("_", "-")
        result = run(command, "--help")
        assert result.exit_code == 0
        words = " ".join(result.output.split())
        metadata_help = " ".join(next(f for f in fields_of(cls) if f.name == field).metadata["help"].split())
        assert flag in words and metadata_help[:40] in words, (command, field)


def fields_of(cls):
    import dataclasses

    return dataclasses.fields(cls)


def test_deprecated_columns_alias_maps_to_the_three_options():
    from legend.cli.options import column_names

    assert column_names(legacy="q, a ,b") == ("q", "a", "b")
    assert column_names("p", None, "r") == ("p", None, "r")
    with pytest.raises(ValueError, match="expected prompt,chosen,rejected"):
        column_names(legacy="q,a")
    with pytest.raises(ValueError, match="either --columns or"):
        column_names("p", legacy="q,a,b")


@pytest.mark.parametrize(
    "command,extra,message",
    [
        ("train-rm", ["--out", "x"], "no column 'margin'"),
        ("eval-rm", [], "no column 'margin'"),
        ("compare-rm", [], "no column 'margin'"),
        ("ensemble-margins", ["--out", "x.jsonl", "--k", "9"], "cannot be split into 9 folds"),
        ("dpo", ["--out", "x", "--bf16", "false"], "no column 'margin'"),
    ],
)
def test_reward_and_dpo_commands_check_the_data_before_loading_weights(tmp_path, command, extra, message):
    """The model does not exist: the data's error (naming the file) must come first, as one line."""
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "level": "x"}] * 3)
    model = ["--model", str(tmp_path / "no-such-model")]
    if command == "eval-rm":
        extra = ["--level-column", "level"]
        message = "row 1: field 'level'"
    if command == "compare-rm":
        data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3)
    result = run(command, "--data", data, *model, "--quiet", *extra)
    assert_one_line_error(result, message)
    assert "no-such-model" not in result.output


def test_best_of_n_reads_the_direction_before_the_policy(tmp_path):
    prompts = tmp_path / "q.csv"
    prompts.write_text("goal\nHow?\n")
    result = run(
        "best-of-n", "--prompts", prompts, "-r", tmp_path / "rm", "--out", tmp_path / "r.json",
        "--model", tmp_path / "no-such-policy", "--direction", tmp_path / "no-such-direction",
    )  # fmt: skip
    assert result.exit_code == 2 and "no-such-direction" in result.output, result.output


def test_an_extra_trl_argument_may_not_set_an_option_twice(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.0}])
    result = run("train-rm", "--data", data, "--out", tmp_path / "x", "--arg", "num_train_epochs=3")
    assert_one_line_error(result, "num_train_epochs with --epochs")
    result = run("dpo", "--data", data, "--out", tmp_path / "x", "--max_length", "9")
    assert_one_line_error(result, "max_length with --max-length")
    result = run("train-rm", "--data", data, "--out", tmp_path / "x", "--no_such_field", "1")
    assert_one_line_error(result, "not a valid LegendRewardConfig setting")


def every_command(group=None, path=()):
    """(command path, click command) of every command and sub-command of the app."""
    import click
    import typer.main

    group = group or typer.main.get_command(app)
    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from every_command(command, (*path, name))


def test_every_help_text_is_printed_as_written():
    """No markup eats text: each command's description and each option's help appear in its --help whole
    (brackets included, e.g. `pip install 'legend[ray]'`), only re-wrapped."""
    import re

    def squeeze(text: str) -> str:  # wrapping changes whitespace (and rich would draw boxes): compare the rest
        return re.sub(r"[\s\u2500-\u257f]", "", text)

    commands = list(every_command())
    assert len(commands) >= 10
    bracketed = 0
    for path, command in commands:
        result = runner.invoke(app, [*path, "--help"], terminal_width=80)
        assert result.exit_code == 0, (path, result.output)
        shown = squeeze(result.output)
        shown_params = [p for p in command.params if not getattr(p, "hidden", False)]  # hidden aliases print nothing
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in shown_params]
        for text in texts:
            assert squeeze(text.split("\f")[0]) in shown, (path, text)
            bracketed += "[" in text
    assert bracketed >= 1  # the class of text that rich markup ate is among those checked
    assert "'legend[ray]'" in runner.invoke(app, ["annotate", "--help"], terminal_width=80).output


def test_annotate_reads_a_direction_by_hub_id_from_the_local_cache_offline(workspace, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from helpers import put_in_hub_cache

    put_in_hub_cache(tmp_path / "hub", "user/safety-dir-tiny", workspace / "dir", "a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # huggingface_hub reads env at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    data = write_jsonl(tmp_path / "hh.jsonl", HH)
    by_id = run("annotate", "--direction", "user/safety-dir-tiny", "--data", data, "--out", tmp_path / "a.jsonl", "-q")
    assert by_id.exit_code == 0, by_id.output
    assert annotate(workspace, data, tmp_path / "b.jsonl").exit_code == 0
    assert load_table(tmp_path / "a.jsonl")["margin_raw"] == load_table(tmp_path / "b.jsonl")["margin_raw"]
    missing = run("annotate", "--direction", "user/not-cached", "--data", data, "--out", tmp_path / "c.jsonl")
    assert_one_line_error(missing, "user/not-cached", "not in the local Hugging Face cache")


def test_direction_push_to_hub_uploads_the_folder(workspace, tmp_path, monkeypatch):
    from unittest import mock

    import huggingface_hub

    uploaded = {}
    api = mock.create_autospec(huggingface_hub.HfApi, instance=True)
    api.upload_folder.side_effect = lambda **kw: uploaded.update(
        repo_id=kw["repo_id"], files=sorted(p.name for p in Path(kw["folder_path"]).iterdir())
    )
    monkeypatch.setattr(huggingface_hub, "HfApi", mock.Mock(return_value=api))
    pairs = workspace / "pairs.jsonl"
    result = run(
        "direction", "--pairs", pairs, "--out", tmp_path / "dir", "--model", workspace / "model", "--quiet",
        "--push-to-hub", "user/safety-dir-tiny",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert uploaded == {
        "repo_id": "user/safety-dir-tiny",
        "files": ["README.md", "config.json", "direction.safetensors"],
    }
    api.create_repo.assert_called_once()
    assert (tmp_path / "dir" / "README.md").is_file()  # the local folder has its card too


def test_the_cli_keeps_freed_memory_for_reuse_unless_told_not_to(monkeypatch):
    """glibc's mallopt is set at start-up (fewer page faults per forward); LEGEND_MALLOC_TUNING=0 turns it off."""
    import sys

    from legend.cli import keep_freed_memory

    monkeypatch.setenv("LEGEND_MALLOC_TUNING", "0")
    assert keep_freed_memory() is False
    monkeypatch.delenv("LEGEND_MALLOC_TUNING")
    assert keep_freed_memory() is sys.platform.startswith("linux")
