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
