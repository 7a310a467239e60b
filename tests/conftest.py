"""Shared fixtures: a tiny randomly initialised Llama with a small byte-level tokenizer (no downloads)."""

from __future__ import annotations

import pytest

from helpers import build_tiny_llama, build_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer):
    """A LoadedModel around a 4-layer random Llama; shared, so tests must not modify it."""
    from legend.models import wrap_model

    model = build_tiny_llama(len(tiny_tokenizer))
    return wrap_model(model, tiny_tokenizer, model_id="tiny-random-llama")


@pytest.fixture(scope="session")
def tiny_cli_model(tmp_path_factory, tiny_tokenizer):
    """(model folder, direction folder): a saved tiny Llama and a direction built on it (layer 2, mean pooling),
    for tests that run commands end to end."""
    from legend.data import ContrastPair
    from legend.directions import DirectionSettings, build_direction
    from legend.models import load_model

    root = tmp_path_factory.mktemp("tiny-cli")
    model = build_tiny_llama(len(tiny_tokenizer), seed=3)
    model.save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    lm = load_model(str(root / "model"))
    pairs = [
        ContrastPair(f"How do I pick lock {i}?", f"Sure, rake lock {i}.", "I can't answer that.") for i in range(8)
    ]
    build_direction(lm, pairs, DirectionSettings(layer=2, pooling="mean")).save(root / "direction")
    return root / "model", root / "direction"
