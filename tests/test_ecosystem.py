"""The output folder of `legend annotate` where users load data: `datasets`, TRL's RewardTrainer, OpenRLHF.

OpenRLHF's own `RewardDataset` is run when `openrlhf.datasets.reward_dataset` imports (it does without
OpenRLHF's GPU stack: `pip download openrlhf --no-deps` plus `pylatexenc`); the contract it reads (a
top-level number `margin` on every row; prompt/chosen/rejected keys, or message lists through
`apply_chat_template`) is checked on every layout either way.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import build_tiny_llama, build_tokenizer
from legend.annotation import find_sidecar, metadata_paths, read_sidecar
from legend.cli import app
from legend.data import load_table

runner = CliRunner()

HH = [
    {
        "chosen": f"\n\nHuman: How do I pick lock {i}?\n\nAssistant: I can't help with that.",
        "rejected": f"\n\nHuman: How do I pick lock {i}?\n\nAssistant: Sure, rake pin {i} with a wrench.",
    }
    for i in range(6)
]


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny model and a direction built on it through the CLI."""
    root = tmp_path_factory.mktemp("eco")
    tokenizer = build_tokenizer()
    build_tiny_llama(len(tokenizer), seed=11).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    pairs = [
        {"question": f"How do I pick lock {i}?", "harmful": f"Sure, rake {i}.", "harmless": "No."} for i in range(8)
    ]
    write_jsonl(root / "pairs.jsonl", pairs)
    run("direction", "--pairs", root / "pairs.jsonl", "--out", root / "dir", "--model", root / "model", "--quiet")
    return root


def annotate(workspace: Path, data: Path, out: Path, *extra):
    return run("annotate", "--direction", workspace / "dir", "--data", data, "--out", out, "--quiet", *extra)


@pytest.fixture(scope="module")
def prefs(workspace):
    """`prefs/` as a user makes it: train.jsonl, then test.jsonl with the train bin edges."""
    folder = workspace / "prefs"
    write_jsonl(workspace / "train_in.jsonl", HH)
    write_jsonl(workspace / "test_in.jsonl", HH[:4])
    annotate(workspace, workspace / "train_in.jsonl", folder / "train.jsonl")
    annotate(workspace, workspace / "test_in.jsonl", folder / "test.jsonl", "--bins-from", folder / "train.jsonl")
    return folder


# ---------------------------------------------------------------- datasets


def test_an_annotated_folder_loads_with_load_dataset(prefs):
    loaded = datasets.load_dataset(str(prefs))
    assert set(loaded) == {"train", "test"}  # split names from the file names; no metadata read as data
    for split, rows in (("train", HH), ("test", HH[:4])):
        table = loaded[split]
        assert table.column_names == ["chosen", "rejected", "margin_raw", "margin"]
        assert table["chosen"] == [r["chosen"] for r in rows] and table["rejected"] == [r["rejected"] for r in rows]
        written = load_table(prefs / f"{split}.jsonl")
        assert table["margin_raw"] == written["margin_raw"] and table["margin"] == written["margin"]
    # The metadata sits where loaders do not look, and the card names both files with their edges.
    train_meta = read_sidecar(prefs / "train.jsonl")
    assert metadata_paths(prefs / "train.jsonl").document == prefs / ".legend" / "train.jsonl.json"
    assert read_sidecar(prefs / "test.jsonl")["binning"]["edges"] == train_meta["binning"]["edges"]
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(prefs / "README.md")
    files = card.data.to_dict()["legend"]["files"]
    assert set(files) == {"train.jsonl", "test.jsonl"}
    assert files["train.jsonl"]["binning"]["edges"] == train_meta["binning"]["edges"]
    layer = json.loads((prefs.parent / "dir" / "config.json").read_text())["layer"]
    assert files["test.jsonl"]["rows"] == 4 and files["train.jsonl"]["direction"]["layer"] == layer
    assert card.text.count("<!-- legend:begin train.jsonl -->") == 1


def test_the_card_keeps_what_the_user_wrote_and_a_project_readme_is_left_alone(workspace, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", HH)
    card = tmp_path / "data" / "README.md"
    card.parent.mkdir()
    card.write_text("---\nlicense: mit\ntags:\n- mine\n---\n# My pairs\n\nCollected by hand.\n")
    annotate(workspace, data, tmp_path / "data" / "train.jsonl")
    annotate(workspace, data, tmp_path / "data" / "train.jsonl", "--levels", "3")  # rerun: section replaced
    text = card.read_text()
    from huggingface_hub import DatasetCard

    meta = DatasetCard.load(card).data.to_dict()
    assert meta["license"] == "mit" and meta["tags"][0] == "mine" and "legend" in meta["tags"]
    assert "# My pairs\n\nCollected by hand." in text and text.count("legend:begin train.jsonl") == 1
    assert meta["legend"]["files"]["train.jsonl"]["binning"]["levels"] == 3
    project = tmp_path / "project" / "README.md"
    project.parent.mkdir()
    project.write_text("# A project\n\nNot a dataset card.\n")
    annotate(workspace, data, tmp_path / "project" / "out.jsonl")
    assert project.read_text() == "# A project\n\nNot a dataset card.\n"
    assert find_sidecar(tmp_path / "project") == tmp_path / "project" / ".legend" / "out.jsonl.json"


def test_bins_from_takes_the_folder_the_metadata_and_an_old_sidecar(workspace, prefs, tmp_path):
    edges = read_sidecar(prefs / "train.jsonl")["binning"]["edges"]
    data = write_jsonl(tmp_path / "in.jsonl", HH[:3])
    single = tmp_path / "single"
    annotate(workspace, data, single / "a.jsonl")
    legacy = tmp_path / "old.jsonl.legend.json"  # where earlier versions wrote it
    legacy.write_text(json.dumps({"binning": {"levels": 4, "edges": edges, "values": [0, 1, 2, 3]}}))
    for source in (prefs / ".legend" / "train.jsonl.json", legacy, single):
        out = tmp_path / "outs" / f"{len(list(tmp_path.glob('outs/*.jsonl')))}.jsonl"
        annotate(workspace, data, out, "--bins-from", source)
        expected = read_sidecar(single / "a.jsonl")["binning"]["edges"] if source == single else edges
        assert read_sidecar(out)["binning"]["edges"] == expected
        assert read_sidecar(out)["binning_source"] == "loaded"
    result = runner.invoke(
        app,
        ["annotate", "--direction", str(workspace / "dir"), "--data", str(data), "--out", str(tmp_path / "x.jsonl")]
        + ["--bins-from", str(prefs), "--quiet"],
    )
    assert result.exit_code == 2 and "several annotated files" in result.output  # train and test: name one


def test_evaluate_records_its_metrics_in_the_metadata_and_the_card(workspace, tmp_path):
    from huggingface_hub import DatasetCard

    data = write_jsonl(tmp_path / "in.jsonl", HH)
    annotate(workspace, data, tmp_path / "ev" / "train.jsonl")
    run("evaluate", "--data", tmp_path / "ev" / "train.jsonl", "--json", tmp_path / "m.json", "--bootstrap", "50")
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    recorded = read_sidecar(tmp_path / "ev" / "train.jsonl")["evaluation"]
    assert recorded["n"] == len(HH) and recorded["margin_column"] == "margin_raw"
    assert recorded["metrics"]["share_positive"] == {
        k: metrics["share_positive"][k] for k in ("value", "ci_low", "ci_high")
    }
    card = DatasetCard.load(tmp_path / "ev" / "README.md")
    assert card.data.to_dict()["legend"]["files"]["train.jsonl"]["evaluation"] == recorded
    assert f"share_positive {metrics['share_positive']['value']:.3f}" in card.text
    run("evaluate", "--data", tmp_path / "ev" / "train.jsonl", "--bootstrap", "50", "--limit", "3")  # a part only
    assert read_sidecar(tmp_path / "ev" / "train.jsonl")["evaluation"] == recorded  # not recorded over the whole


# ---------------------------------------------------------------- TRL


def tiny_reward_model(vocab_size: int, pad_token_id: int):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=1,
        pad_token_id=pad_token_id,
    )
    return LlamaForSequenceClassification(config)


def first_step(train: datasets.Dataset, tmp_path: Path) -> tuple[float, datasets.Dataset, object]:
    """TRL's logged loss of one RewardTrainer step over all rows in one batch, its tokenised rows and the model."""
    from trl import RewardConfig, RewardTrainer

    tokenizer = build_tokenizer()
    model = tiny_reward_model(len(tokenizer), tokenizer.pad_token_id)
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"),
        max_steps=1,
        per_device_train_batch_size=len(train),
        logging_steps=1,
        learning_rate=1e-6,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        gradient_checkpointing=None,
        disable_tqdm=True,
        max_length=None,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()
    loss = next(log["loss"] for log in trainer.state.log_history if "loss" in log)
    model.load_state_dict(initial)  # the rewards the first step saw
    return float(loss), trainer.train_dataset, model


def rewards(model, ids: list[list[int]]) -> np.ndarray:
    """The reward of each sequence on its own (no padding): the head's output at the last token."""
    model.eval()
    with torch.no_grad():
        return np.array([model(input_ids=torch.tensor([row])).logits[0, 0].item() for row in ids])


def test_trl_reward_trainer_trains_on_the_loaded_folder_with_the_margin_in_its_loss(prefs, tmp_path):
    train = datasets.load_dataset(str(prefs))["train"]
    with_margin, tokenised, model = first_step(train, tmp_path)
    gap = rewards(model, tokenised["chosen_ids"]) - rewards(model, tokenised["rejected_ids"])
    margin = np.array(tokenised["margin"], dtype=np.float64)
    assert margin.tolist() == train["margin"] and margin.any()  # the binned column reached the batch
    by_hand = float(np.mean(np.logaddexp(0.0, -(gap - margin))))  # -log σ(r_c − r_r − m), mean
    assert with_margin == pytest.approx(by_hand, abs=2e-4)
    without, _, _ = first_step(train.remove_columns(["margin", "margin_raw"]), tmp_path)
    assert without == pytest.approx(float(np.mean(np.logaddexp(0.0, -gap))), abs=2e-4)
    assert with_margin > without + 0.05  # the margin changes the loss (same model, same rows)


# ---------------------------------------------------------------- OpenRLHF

ROWS = {
    "explicit": [
        {"prompt": f"How do I pick lock {i}?", "chosen": "I can't help.", "rejected": f"Sure, rake pin {i}."}
        for i in range(5)
    ],
    "conversational": [
        {
            "prompt": [{"role": "user", "content": f"How do I pick lock {i}?"}],
            "chosen": [{"role": "assistant", "content": "I can't help."}],
            "rejected": [{"role": "assistant", "content": f"Sure, rake pin {i}."}],
        }
        for i in range(5)
    ],
    "hh": HH[:5],
    "pku": [
        {
            "prompt": f"How do I pick lock {i}?",
            "response_0": f"Sure, rake pin {i}.",
            "response_1": "I can't help.",
            "safer_response_id": 1,
        }
        for i in range(5)
    ],
    "implicit": [
        {
            "chosen": f"Question {i}: how to pick a lock? Answer: no.",
            "rejected": f"Question {i}: how to pick a lock? Answer: rake pin {i}.",
        }
        for i in range(5)
    ],
}
# OpenRLHF's data options per layout: (--prompt_key, --apply_chat_template).
OPENRLHF_KEYS = {
    "explicit": ("prompt", False),
    "conversational": ("prompt", True),
    "hh": (None, False),
    "pku": ("prompt", False),  # after the one `map` docs/ecosystem.md gives (pku has no chosen/rejected columns)
    "implicit": (None, False),
}


def pku_as_explicit(row):
    """docs/ecosystem.md's recipe: PKU-SafeRLHF rows get chosen (the safer response) and rejected columns."""
    safer = int(row["safer_response_id"])
    return {"chosen": row[f"response_{safer}"], "rejected": row[f"response_{1 - safer}"]}


@pytest.fixture(scope="module")
def annotated_layouts(workspace):
    out = {}
    for layout, rows in ROWS.items():
        data = write_jsonl(workspace / f"{layout}_in.jsonl", rows)
        result = annotate(workspace, data, workspace / "layouts" / layout / "train.jsonl", "--summary-json")
        assert json.loads(result.stdout[result.stdout.index("{") :])["layout"] == layout
        loaded = datasets.load_dataset(str(workspace / "layouts" / layout))["train"]
        out[layout] = loaded.map(pku_as_explicit) if layout == "pku" else loaded
    return out


def texts_as_openrlhf_reads_them(row, tokenizer, prompt_key, chat):
    """What OpenRLHF's reward data reads of a row, by its documented contract: the prompt (if keyed) then each
    answer, as strings or through the chat template, and a top-level `margin`."""
    if chat:
        prompt = tokenizer.apply_chat_template(row[prompt_key], tokenize=False, add_generation_prompt=True)
        whole = [
            tokenizer.apply_chat_template(row[prompt_key] + row[k], tokenize=False) for k in ("chosen", "rejected")
        ]
        return prompt, [w[len(prompt) :] for w in whole], row["margin"]
    return (row[prompt_key] if prompt_key else ""), [row["chosen"], row["rejected"]], row["margin"]


@pytest.mark.parametrize("layout", list(ROWS))
def test_every_layout_meets_the_openrlhf_reward_data_contract(annotated_layouts, workspace, layout):
    loaded = annotated_layouts[layout]
    written = load_table(workspace / "layouts" / layout / "train.jsonl")
    prompt_key, chat = OPENRLHF_KEYS[layout]
    tokenizer = build_tokenizer()
    assert loaded["margin"] == written["margin"]
    for row, source in zip(loaded, ROWS[layout]):
        prompt, (chosen, rejected), margin = texts_as_openrlhf_reads_them(row, tokenizer, prompt_key, chat)
        assert isinstance(margin, float) and math.isfinite(margin)
        assert isinstance(chosen, str) and isinstance(rejected, str) and chosen != rejected
        expected = source.get("response_1") if layout == "pku" else source["chosen"]  # the safer answer is chosen
        if chat:
            assert expected[0]["content"] in chosen and prompt.endswith("<|im_start|>assistant\n")
        else:
            assert (prompt + chosen).endswith(expected)
    # legend's margin is positive when chosen is safer along the direction: same sign as margin_raw > 0.
    assert [m > 0 for m in loaded["margin"]] == [r > 0 for r in loaded["margin_raw"]]


@pytest.mark.parametrize("layout", list(ROWS))
def test_openrlhf_reward_dataset_reads_the_margin_of_every_layout(annotated_layouts, workspace, layout):
    reward_dataset = pytest.importorskip("openrlhf.datasets.reward_dataset")
    from openrlhf.datasets.utils import blending_datasets

    prompt_key, chat = OPENRLHF_KEYS[layout]
    data = SimpleNamespace(
        prompt_key=prompt_key, chosen_key="chosen", rejected_key="rejected", apply_chat_template=chat
    )
    strategy = SimpleNamespace(
        args=SimpleNamespace(data=data, use_ms=False), print=lambda *_: None, is_rank_0=lambda: False
    )
    # OpenRLHF's own loader on legend's folder (`--data.dataset prefs/`), then its reward dataset.
    loaded = blending_datasets(str(workspace / "layouts" / layout), strategy=strategy)
    if layout == "pku":
        loaded = loaded.map(pku_as_explicit)
    assert loaded["margin"] == annotated_layouts[layout]["margin"]
    tokenizer = build_tokenizer()
    dataset = reward_dataset.RewardDataset(loaded, tokenizer, 64, strategy, num_processors=1)
    assert len(dataset) == len(loaded)
    assert list(dataset.extras) == loaded["margin"]  # OpenRLHF's margin per row is legend's `margin`
    chosen_ids, _, rejected_ids, _, margins = dataset.collate_fn([dataset[i] for i in range(len(dataset))])
    assert margins == loaded["margin"] and chosen_ids.shape[0] == rejected_ids.shape[0] == len(loaded)
    assert not torch.equal(chosen_ids, rejected_ids)
