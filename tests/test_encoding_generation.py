"""The one generator (legend.encoding.generation): a long prompt loses its start, never the turn it continues.

Before issue 16 `induce` and best-of-n each called the tokenizer with right truncation, so a prompt longer
than the limit lost its end (the assistant turn being continued). The behaviour kept is encoding's: left
truncation. Checked against `model.generate` called directly on the prompt's last tokens.
"""

from __future__ import annotations

import torch

from legend.encoding import GenerationConfig, generate
from legend.encoding.generation import prompt_texts
from legend.encoding.templates import batch_ids, template_kind


def _ids(lm, text: str) -> list[int]:
    return batch_ids(lm.tokenizer, [text], template_kind(lm.tokenizer) == "plain")[0]


def _direct(lm, ids: list[int], new_tokens: int) -> str:
    """Greedy continuation of `ids`, by transformers alone."""
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    return lm.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).strip()


def test_a_prompt_longer_than_the_limit_keeps_its_end(tiny_lm):
    long_prompt = [{"role": "user", "content": "filler words " * 60 + "and the question at the very end?"}]
    short_prompt = [{"role": "user", "content": "A short one."}]
    text = prompt_texts(tiny_lm.tokenizer, [long_prompt])[0]
    limit = 24
    assert len(_ids(tiny_lm, text)) > 3 * limit  # the limit really cuts

    config = GenerationConfig(max_new_tokens=6, max_prompt_length=limit, batch_size=2)
    answers = generate(tiny_lm, [long_prompt, short_prompt], config)

    assert answers[0] == [_direct(tiny_lm, _ids(tiny_lm, text)[-limit:], 6)]
    short_text = prompt_texts(tiny_lm.tokenizer, [short_prompt])[0]
    assert answers[1] == [_direct(tiny_lm, _ids(tiny_lm, short_text)[-limit:], 6)]  # left-padded in a batch


def test_right_truncation_would_have_given_another_answer(tiny_lm):
    """The check above can fail: the prompt's first tokens are continued differently than its last ones."""
    long_prompt = [{"role": "user", "content": "filler words " * 60 + "and the question at the very end?"}]
    ids = _ids(tiny_lm, prompt_texts(tiny_lm.tokenizer, [long_prompt])[0])
    kept = generate(tiny_lm, [long_prompt], GenerationConfig(max_new_tokens=6, max_prompt_length=24))[0][0]
    assert kept == _direct(tiny_lm, ids[-24:], 6)
    assert kept != _direct(tiny_lm, ids[:24], 6)
