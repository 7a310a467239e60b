"""Text to token ids: the chat or plain template, prefix + answer tokenisation, and left truncation.

A text to encode is a (prompt messages, response) pair. It is rendered with the model's chat
template when it has one (else the plain template below) and tokenised as prefix + answer so the
answer span is known exactly; a text longer than the limit loses its start, never its answer's end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from .config import EncodeConfig, Item, Message, TokenizedText

PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


class TemplateError(ValueError):
    """The tokenizer's chat template failed to render a conversation (its own `raise_exception`, or a bug in it).

    `item` is the index of the text that failed among those rendered (None when not known).
    """

    def __init__(self, message: str, item: int | None = None) -> None:
        super().__init__(message)
        self.item = item


def template_kind(tokenizer: Any, template: str = "auto") -> Literal["chat", "plain"]:
    """ "chat" when asked, or when "auto" and the tokenizer has a chat template; else "plain"."""
    if template == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if template not in ("chat", "plain"):
        raise ValueError(f"unknown template {template!r}; choose from auto, chat, plain")
    return "chat" if template == "chat" else "plain"


def render(tokenizer: Any, prompt: Sequence[Message], response: str, kind: Literal["chat", "plain"]) -> tuple[str, str]:
    """Return (prefix, answer) strings; prefix + answer is the full text the model reads.

    >>> render(None, [{"role": "user", "content": "Hi"}], "Hello.", "plain")
    ('Human: Hi\\n\\nAssistant: ', 'Hello.')
    """
    if kind == "plain":
        prefix = "".join(f"{PLAIN_ROLES.get(m['role'], m['role'].title())}: {m['content']}\n\n" for m in prompt)
        return prefix + "Assistant: ", response
    messages = [dict(m) for m in prompt]
    try:
        prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) if messages else ""
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    except Exception as err:  # jinja2's TemplateError (raise_exception), or any bug in the template
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TemplateError(
            f"the chat template of {name!r} failed ({first}); use --template plain (when building the direction), "
            "or fix the conversation it refuses"
        ) from None
    if prefix and full.startswith(prefix):
        # Drop the template's trailing newline so the last token is the end-of-turn marker.
        return prefix, full[len(prefix) :].rstrip("\n")
    # Templates that rewrite earlier turns (rare): keep the generation prompt, append the response.
    return prefix, response + (getattr(tokenizer, "eos_token", None) or "")


def render_prompt(tokenizer: Any, prompt: Sequence[Message], kind: Literal["chat", "plain"]) -> str:
    """The text that starts the assistant's turn after `prompt` (what a generator continues)."""
    return render(tokenizer, prompt, "", kind)[0]


def tokenize_items(tokenizer: Any, items: Sequence[Item], config: EncodeConfig) -> list[TokenizedText]:
    """Tokenise (prompt, response) items as prefix ids + answer ids, truncating from the left."""
    kind = template_kind(tokenizer, config.template)
    rendered = []
    for index, (prompt, response) in enumerate(items):
        try:
            rendered.append(render(tokenizer, prompt, response, kind))
        except TemplateError as err:
            raise TemplateError(str(err), item=index) from None
    unique_prefixes = list(dict.fromkeys(prefix for prefix, _ in rendered))
    # Plain text needs the tokenizer's BOS; chat templates already write their own special tokens.
    prefix_ids = dict(zip(unique_prefixes, batch_ids(tokenizer, unique_prefixes, kind == "plain")))
    answer_ids = batch_ids(tokenizer, [answer for _, answer in rendered], False)
    out = []
    for (prefix, _), answer in zip(rendered, answer_ids):
        out.append(truncate_left(prefix_ids[prefix], answer, config.length_limit))
    return out


def batch_ids(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    """Token ids of each text (with the tokenizer's special tokens when `special`)."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=special)["input_ids"]


def truncate_left(prefix: Sequence[int], answer: Sequence[int], max_length: int) -> TokenizedText:
    """prefix + answer cut from the left to `max_length` tokens; the answer start moves with the cut.

    >>> truncate_left([1, 2, 3], [4, 5], 4)
    TokenizedText(ids=(2, 3, 4, 5), answer_start=2, truncated=True, answer_tokens=2)
    """
    if not answer:
        # An empty answer still needs a position to read: use the last prompt token.
        answer, prefix = prefix[-1:], prefix[:-1]
    ids = list(prefix) + list(answer)
    cut = max(0, len(ids) - max_length)
    return TokenizedText(
        ids=tuple(ids[cut:]), answer_start=max(0, len(prefix) - cut), truncated=cut > 0, answer_tokens=len(answer)
    )


def template_tokens(tokenizer: Any, kind: Literal["chat", "plain"]) -> int:
    """Tokens the template itself takes: an empty question and an empty answer, rendered and tokenised.

    >>> from legend.testing import build_tokenizer
    >>> template_tokens(build_tokenizer(), "plain") > 0
    True
    """
    prefix, answer = render(tokenizer, [{"role": "user", "content": ""}], "", kind)
    ids = batch_ids(tokenizer, [prefix], kind == "plain")[0] + batch_ids(tokenizer, [answer], False)[0]
    return len(ids)


def check_max_length(tokenizer: Any, template: str, max_length: int | None, option: str = "--max-length") -> None:
    """Refuse a max length the template alone fills: every text would be cut to template tokens (margins all 0).

    Args:
        tokenizer: the model's tokenizer.
        template: "auto", "chat" or "plain".
        max_length: the limit asked for (None: the default, always enough).
        option: how the limit is named in the error.

    Raises:
        ValueError: naming the option, the template's size and the least workable value; TemplateError when the
            template cannot render even an empty conversation.
    """
    if max_length is None:
        return
    kind = template_kind(tokenizer, template)
    needed = template_tokens(tokenizer, kind)
    if max_length <= needed:
        raise ValueError(
            f"{option} {max_length} is too short: the {kind} template alone takes {needed} tokens (an empty question "
            f"and answer), so nothing of a question or answer would be left; give more than {needed} (room for the "
            "answers: the default is 2048)"
        )


def question_items(questions: Sequence[str], answers: Sequence[str]) -> list[tuple[tuple[Message, ...], str]]:
    """(question, answer) pairs as single-turn items.

    >>> question_items(["Why?"], ["Because."])
    [(({'role': 'user', 'content': 'Why?'},), 'Because.')]
    """
    return [(({"role": "user", "content": q},), a) for q, a in zip(questions, answers)]
