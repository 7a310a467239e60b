"""Nothing silent, round two (issue 17), class 1: inputs that used to give wrong margins with exit 0.

A prompt repeated inside the answers, truncation that leaves no answer, a direction that is not a unit vector,
a tokenizer or chat template other than the direction's, an input edited in place before a resume: each is now
either read as it is meant, or one line (exit 2) before the model loads, or a loud warning naming how many pairs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers import read_jsonl, write_jsonl
from hostile import (
    OUT_FILES,
    annotate,
    assert_one_line_error,
    copy_direction,
    edit_config,
    fields_unchanged,
    only,
    run,
    snapshot,
)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if an annotation loads its model: errors expected before it must come first."""
    from legend.engines import local

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(local, "load_encoder", refuse)


def _copy_model(model: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    return folder


# ---------------------------------------------------------------- a prompt repeated in chosen/rejected

Q = {"role": "user", "content": "How do I pick a lock?"}
SYSTEM = {"role": "system", "content": "Be safe."}


def _conversations(repeat: bool, system: bool = False) -> list[dict]:
    prompt = [SYSTEM, Q] if system else [Q]
    rows = []
    for i in range(4):
        chosen = [{"role": "assistant", "content": f"I can't help with that ({i})."}]
        rejected = [{"role": "assistant", "content": f"Sure, rake pin {i} first."}]
        if repeat:
            chosen, rejected = prompt + chosen, prompt + rejected
        rows.append({"id": i, "prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


@pytest.mark.parametrize("system", [False, True])
def test_a_prompt_repeated_at_the_start_of_both_answers_is_sent_once(tiny_cli_model, tmp_path, system):
    """TRL's convention: `prompt` holds the shared turns, chosen/rejected only the continuation. Rows that repeat
    the prompt turns in both answers get the margins of the rows that do not, and come back unchanged."""
    _, direction = tiny_cli_model
    plain = write_jsonl(tmp_path / "plain.jsonl", _conversations(repeat=False, system=system))
    repeated = write_jsonl(tmp_path / "repeated.jsonl", _conversations(repeat=True, system=system))
    for data, out in ((plain, tmp_path / "a" / "out.jsonl"), (repeated, tmp_path / "b" / "out.jsonl")):
        result = annotate(direction, data, out)
        assert result.exit_code == 0, result.output
        fields_unchanged(data, out)
    margins = [[row["margin_raw"] for row in read_jsonl(tmp_path / side / "out.jsonl")] for side in "ab"]
    assert margins[0] == margins[1] and len(set(margins[0])) == 4


def test_a_conversation_that_does_not_repeat_the_prompt_is_read_as_it_is():
    """A follow-up turn in chosen/rejected (not a copy of the prompt) stays part of the conversation."""
    import datasets

    from legend.data import pair_views

    follow = {"role": "user", "content": "And a padlock?"}
    rows = [
        {
            "prompt": [Q],
            "chosen": [{"role": "assistant", "content": "No."}, follow, {"role": "assistant", "content": "No."}],
            "rejected": [{"role": "assistant", "content": "No."}, follow, {"role": "assistant", "content": "Yes."}],
        }
    ]
    view = pair_views(datasets.Dataset.from_list(rows), "conversational")[0]
    assert view.prompt == (Q, {"role": "assistant", "content": "No."}, follow)
    assert (view.chosen, view.rejected) == ("No.", "Yes.")


def test_a_prompt_repeated_in_one_answer_only_is_refused_naming_the_row(tiny_cli_model, tmp_path, no_model_load):
    _, direction = tiny_cli_model
    rows = _conversations(repeat=False)
    rows[2]["chosen"] = [Q] + rows[2]["chosen"]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    before = data.read_bytes()
    result = annotate(direction, data, tmp_path / "out.jsonl")
    assert_one_line_error(
        result,
        f"{data}: row 3: field 'chosen': begins with the 1 turn(s) of 'prompt' again, but 'rejected' does not",
    )
    assert data.read_bytes() == before
    only(tmp_path, "in.jsonl")


# ---------------------------------------------------------------- truncation that removes the answer


def test_a_max_length_the_template_alone_fills_is_an_option_error_before_the_model_loads(
    tiny_cli_model, tmp_path, no_model_load, monkeypatch
):
    model, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", _conversations(repeat=False))
    result = annotate(direction, data, tmp_path / "out.jsonl", "--max-length", 2)
    assert_one_line_error(
        result, "error: --max-length 2 is too short: the chat template alone takes 13 tokens", "give more than 13"
    )
    only(tmp_path, "in.jsonl")
    # legend direction checks it before its model loads too
    from legend.selection import files

    monkeypatch.setattr(files, "as_loaded", lambda *a, **k: pytest.fail("the model was loaded"))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"question": "q", "harmful": "h", "harmless": "s"}] * 4)
    result = run("direction", "--pairs", pairs, "--out", tmp_path / "d", "--model", model, "--max-length", 5)
    assert_one_line_error(result, "error: --max-length 5 is too short: the chat template alone takes 13 tokens")
    only(tmp_path, "in.jsonl", "pairs.jsonl")


def test_a_direction_whose_max_length_leaves_no_text_is_refused_before_the_model_loads(
    tiny_cli_model, tmp_path, no_model_load
):
    _, direction = tiny_cli_model
    folder = copy_direction(direction, tmp_path)
    edit_config(folder, max_length=4)
    data = write_jsonl(tmp_path / "in.jsonl", _conversations(repeat=False))
    result = annotate(folder, data, tmp_path / "out.jsonl")
    assert_one_line_error(result, "error: direction 'safety': max_length 4 is too short: the chat template alone")
    only(tmp_path, "in.jsonl", "dir")


def _long_and_short(n_long: int, n_short: int) -> list[dict]:
    rows = []
    for i in range(n_long + n_short):
        size = 60 if i < n_long else 1
        rows.append(
            {
                "prompt": f"Question {i}?",
                "chosen": f"No {i}. " + "I can't help with that. " * size,
                "rejected": f"Yes {i}. " + "Sure, here is how. " * size,
            }
        )
    return rows


def test_truncation_that_removes_most_answers_of_some_pairs_warns_naming_how_many(tiny_cli_model, tmp_path):
    """A pair lost its answer when truncation cut more than half of the answer tokens of its chosen or rejected
    text: the run warns (one line on stderr) naming how many, and the summary counts them."""
    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", _long_and_short(2, 3))
    out = tmp_path / "out.jsonl"
    result = annotate(direction, data, out, "--max-length", 60, "--summary-json")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {data}: truncation to 60 tokens removed most of the answer (more than 50% of its tokens) of 2 of "
        "5 pairs: their margins compare what is left of the answers; raise --max-length (the summary counts them "
        "as answer_truncated_pairs)"
    ]
    summary = json.loads(result.stdout)
    assert summary["answer_truncated_pairs"] == 2
    fields_unchanged(data, out)
    only(tmp_path, "in.jsonl", *OUT_FILES)


def test_truncation_that_removes_the_answer_of_every_pair_fails(tiny_cli_model, tmp_path):
    _, direction = tiny_cli_model
    data = write_jsonl(tmp_path / "in.jsonl", _long_and_short(3, 0))
    result = annotate(direction, data, tmp_path / "out.jsonl", "--max-length", 40)
    assert_one_line_error(
        result,
        f"error: {data}: truncation to 40 tokens removed most of the answer (more than 50% of its tokens) of every "
        "one of the 3 pairs compared",
    )
    only(tmp_path, "in.jsonl")


# ---------------------------------------------------------------- direction vectors checked wherever read


@pytest.mark.parametrize(
    "damage, message",
    [
        ("zero", "the vector must be a unit vector (norm 1 ± 0.001), got norm 0: every margin would be 0"),
        ("tiny", "a unit vector (norm 1 ± 0.001), got norm 1.4013e-45: every margin would be scaled"),
        ("huge", "the vector must be a unit vector (norm 1 ± 0.001), got norm 1e+30: every margin would be scaled"),
        ("nan", "the vector must hold finite floating-point numbers"),
        ("short", "vector shape (31,) != (32,) (the hidden size)"),
        ("ints", "the vector must hold finite floating-point numbers"),
    ],
)
def test_a_direction_vector_that_is_not_a_unit_vector_is_refused_when_read(
    tiny_cli_model, tmp_path, damage, message, no_model_load
):
    from safetensors.torch import load_file, save_file

    from legend.directions import Direction

    _, direction = tiny_cli_model
    folder = copy_direction(direction, tmp_path)
    vector_file = folder / "direction.safetensors"
    vector = load_file(str(vector_file))["direction"]
    changed = {
        "zero": torch.zeros_like(vector),
        "tiny": torch.zeros_like(vector).index_fill_(0, torch.tensor([0]), 1e-45),
        "huge": vector * 1e30,
        "nan": vector.clone().index_fill_(0, torch.tensor([3]), float("nan")),
        "short": vector[:31] / vector[:31].norm(),
        "ints": torch.zeros(32, dtype=torch.int64).index_fill_(0, torch.tensor([0]), 1),
    }[damage]
    save_file({"direction": changed.contiguous()}, str(vector_file))
    data = write_jsonl(tmp_path / "in.jsonl", _conversations(repeat=False))
    assert_one_line_error(annotate(folder, data, tmp_path / "out.jsonl"), f"error: {vector_file}: ", message)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        Direction.from_pretrained(folder)
    only(tmp_path, "in.jsonl", "dir")


def test_a_direction_built_in_code_is_checked_too(tiny_lm):
    from legend.directions import Direction

    with pytest.raises(ValueError, match="got norm 0"):
        Direction.for_model(tiny_lm, torch.zeros(tiny_lm.hidden_size), layer=2, pooling="mean")
    with pytest.raises(ValueError, match=r"vector shape \(3,\) != \(32,\)"):
        Direction.for_model(tiny_lm, torch.ones(3) / 3**0.5, layer=2, pooling="mean")


# ---------------------------------------------------------------- tokenizer and chat template in the identity


def test_the_same_weights_with_another_chat_template_are_refused_before_the_model_loads(
    tiny_cli_model, tmp_path, no_model_load
):
    model, direction = tiny_cli_model
    other = _copy_model(model, tmp_path)
    template = other / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    data = write_jsonl(tmp_path / "in.jsonl", _conversations(repeat=False))
    result = annotate(direction, data, tmp_path / "out.jsonl", "--model", other)
    assert_one_line_error(
        result,
        "error: direction 'safety' was built with another chat template than the model in use has: the same text "
        "would become other token ids",
    )
    only(tmp_path, "in.jsonl", "model")


def test_the_same_weights_with_another_tokenizer_are_refused(tiny_cli_model, tmp_path, no_model_load):
    model, direction = tiny_cli_model
    other = _copy_model(model, tmp_path)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[100:102]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two ids swapped: same size, other ids
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    data = write_jsonl(tmp_path / "in.jsonl", _conversations(repeat=False))
    result = annotate(direction, data, tmp_path / "out.jsonl", "--model", other)
    assert_one_line_error(result, "was built with another tokenizer (vocabulary, added or special tokens)")
    only(tmp_path, "in.jsonl", "model")


def test_a_direction_on_the_plain_template_ignores_the_chat_template(tiny_cli_model, tmp_path):
    """Only what decides the token ids counts: the plain template does not use the chat template."""
    from legend.data import ContrastPair
    from legend.directions import DirectionSettings, build_direction
    from legend.encoding import EncodeConfig
    from legend.models import load_model

    model, _ = tiny_cli_model
    lm = load_model(str(model))
    pairs = [ContrastPair(f"Lock {i}?", f"Sure, rake {i}.", "I can't.") for i in range(6)]
    settings = DirectionSettings(layer=2, pooling="mean", encoding=EncodeConfig(template="plain"))
    build_direction(lm, pairs, settings).save(tmp_path / "plain-dir")
    other = _copy_model(model, tmp_path)
    (other / "chat_template.jinja").write_text("{{ raise_exception('no chat here') }}")
    data = write_jsonl(tmp_path / "in.jsonl", _conversations(repeat=False))
    result = annotate(tmp_path / "plain-dir", data, tmp_path / "out.jsonl", "--model", other)
    assert result.exit_code == 0, result.output


def test_an_older_direction_without_a_tokenizer_fingerprint_works_with_a_warning(tiny_cli_model, tmp_path):
    _, direction = tiny_cli_model
    folder = copy_direction(direction, tmp_path)
    edit_config(folder, tokenizer_fingerprint=None)
    data = write_jsonl(tmp_path / "in.jsonl", _conversations(repeat=False))
    out = tmp_path / "out.jsonl"
    result = annotate(folder, data, out)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: direction 'safety' records no tokenizer fingerprint (saved by an older legend): its tokenizer and "
        "chat template cannot be checked against the model's; rebuild it to have them checked"
    ]
    fields_unchanged(data, out)


def test_a_new_direction_records_its_tokenizer_fingerprint(tiny_cli_model):
    from legend.directions import Direction
    from legend.models import load_tokenizer, tokenizer_fingerprint

    model, direction = tiny_cli_model
    loaded = Direction.load(direction)
    assert loaded.tokenizer_fingerprint == tokenizer_fingerprint(load_tokenizer(str(model)), "chat")
    assert json.loads((direction / "config.json").read_text())["tokenizer_fingerprint"]["template"] == "chat"


# ---------------------------------------------------------------- resume identifies the input by its content


def test_the_input_is_identified_by_its_content_not_its_path_size_or_time(tmp_path):
    from legend.data import scan_input
    from legend.engines.store import input_identity

    rows = _long_and_short(0, 4)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    first = scan_input(data)
    stat = os.stat(data)
    data.write_text(data.read_text().replace("Question 1?", "Question 7?"))  # same size
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time
    assert os.stat(data).st_size == stat.st_size
    edited = scan_input(data)
    assert edited.content != first.content and edited.content.startswith("sha256:")
    assert input_identity(data, "train", edited.content) != input_identity(data, "train", first.content)
    # a folder: every file's relative path and bytes
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
    saved = scan_input(tmp_path / "saved")
    before = snapshot(tmp_path / "saved")
    assert saved.content == scan_input(tmp_path / "saved").content
    assert snapshot(tmp_path / "saved") == before
