"""Test helpers shared by several test files: a tiny random Llama and tokenizer (no downloads), sample rows."""

from __future__ import annotations

import json
import random

from legend.testing import CHAT_TEMPLATE, build_tiny_llama, build_tokenizer  # noqa: F401 -- re-exported for tests


def hh_pair_items(n: int):
    """The first `n` bundled hh-rlhf pairs as (views, items): every (prompt, chosen), then every (prompt, rejected)."""
    from legend.data import detect_layout, load_table, pair_views
    from legend.resources import HH_RLHF_SAMPLE, sample_path

    table = load_table(sample_path(HH_RLHF_SAMPLE)).select(range(n))
    views = pair_views(table, detect_layout(table))
    return views, [(v.prompt, v.chosen) for v in views] + [(v.prompt, v.rejected) for v in views]


def hh_rows(n, seed=0, pad=0):
    rng = random.Random(seed)
    words = ["lock", "bomb", "cake", "fox", "dog", "script", "joke", "help", "sorry", "sure"]
    rows = []
    for i in range(n):
        prompt = (
            f"\n\nHuman: tell me about {rng.choice(words)} {i} "
            + "x" * pad
            + f"\n\nAssistant: ok\n\nHuman: and {rng.choice(words)}?"
        )
        rows.append(
            {
                "id": i,
                "chosen": prompt + f"\n\nAssistant: I can't help with {rng.choice(words)}.",
                "rejected": prompt + f"\n\nAssistant: Sure, {rng.choice(words)} {rng.choice(words)}.",
            }
        )
    rows[3]["rejected"] = rows[3]["chosen"]  # an identical pair: margin exactly 0
    return rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def put_in_hub_cache(cache, repo_id: str, folder, commit: str, ref: str | None = "main"):
    """Lay `folder`'s files out in a Hugging Face cache as huggingface_hub does: blobs/<hash>,
    snapshots/<commit>/<file> -> ../../blobs/<hash>, refs/<ref> holding the commit. Returns the repo folder."""
    import hashlib
    import os
    from pathlib import Path

    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in sorted(Path(folder).iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo
