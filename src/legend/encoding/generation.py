"""Generating answers: prompts rendered and tokenised the way encoding renders them, left-truncated, left-padded.

The one generator behind `legend induce` (greedy harmful answers, optionally continuing a prefill)
and best-of-n sampling. A prompt longer than `max_prompt_length` tokens loses its start, never its
end, where the turn to be continued begins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..models import LoadedModel
from .config import Message
from .templates import batch_ids, render, template_kind


@dataclass(frozen=True)
class GenerationConfig:
    """How answers are generated: greedy by default, sampled with `do_sample` (then seeded per batch).

    >>> GenerationConfig(do_sample=True, temperature=0.0)
    Traceback (most recent call last):
    ...
    ValueError: temperature must be positive when sampling
    """

    max_new_tokens: int = 128
    batch_size: int = 16  # prompts per `generate` call
    max_prompt_length: int = 512  # longer prompts lose their start
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    num_return_sequences: int = 1
    seed: int = 0  # with do_sample, each batch reseeds torch with seed + the index of its first prompt
    longest_first: bool = True  # batch prompts of similar length (greedy); False keeps input order (sampling)
    progress: bool = False
    description: str = "generate"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.num_return_sequences < 1:
            raise ValueError("max_new_tokens, batch_size and num_return_sequences must be at least 1")
        if self.max_prompt_length < 1:
            raise ValueError("max_prompt_length must be at least 1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be positive when sampling")


def prompt_texts(
    tokenizer: object,
    prompts: Sequence[Sequence[Message]],
    prefills: Sequence[str] | None = None,
    system: str | None = None,
) -> list[str]:
    """The text each generation continues: the prompt rendered up to the assistant's turn, then its prefill.

    `system` adds a system message first (chat templates only).

    >>> prompt_texts(None, [[{"role": "user", "content": "Hi"}]], ["Sure,"])
    ['Human: Hi\\n\\nAssistant: Sure,']
    """
    kind = template_kind(tokenizer)
    head = [{"role": "system", "content": system}] if system and kind == "chat" else []
    fills = list(prefills) if prefills is not None else [""] * len(prompts)
    return [render(tokenizer, head + list(prompt), "", kind)[0] + fill for prompt, fill in zip(prompts, fills)]


def generate(
    lm: LoadedModel,
    prompts: Sequence[Sequence[Message]],
    config: GenerationConfig = GenerationConfig(),
    *,
    prefills: Sequence[str] | None = None,
    system: str | None = None,
) -> list[list[str]]:
    """`config.num_return_sequences` answers to each prompt, in prompt order (each a list, in sample order).

    Args:
        lm: the model.
        prompts: each prompt's messages (the answer is the assistant's next turn).
        config: greedy or sampling, lengths, batching.
        prefills: text that starts each answer (kept at the start of the answer returned).
        system: a system message put before each prompt (chat templates only).

    Returns:
        For each prompt, its answers (stripped), prefill included.
    """
    tokenizer, model = lm.tokenizer, lm.model
    kind = template_kind(tokenizer)
    texts = prompt_texts(tokenizer, prompts, prefills, system)
    fills = list(prefills) if prefills is not None else [""] * len(prompts)
    ids = batch_ids(tokenizer, texts, kind == "plain")
    ids = [row[-config.max_prompt_length :] for row in ids]  # left truncation keeps the turn to continue
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i])) if config.longest_first else range(len(texts))
    order = list(order)
    answers: list[list[str]] = [[] for _ in texts]
    bar = tqdm(total=len(texts), desc=config.description, unit="prompt", disable=not config.progress)
    try:
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):  # left padding: every row continues at its own end
                input_ids[row, width - len(ids[index]) :] = torch.tensor(ids[index], dtype=torch.long)
                mask[row, width - len(ids[index]) :] = 1
            options: dict = {"do_sample": config.do_sample, "num_return_sequences": config.num_return_sequences}
            if config.do_sample:
                options.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
                torch.manual_seed(config.seed + start)
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids.to(lm.device),
                    attention_mask=mask.to(lm.device),
                    max_new_tokens=config.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    **options,
                )
            decoded = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
            # generate() repeats each prompt num_return_sequences times in a row.
            k = config.num_return_sequences
            for row, index in enumerate(batch):
                answers[index] = [(fills[index] + text).strip() for text in decoded[row * k : (row + 1) * k]]
            bar.update(len(batch))
    finally:
        bar.close()
    return answers
