"""The five layouts legend knows out of the box, each one `PairLayout` record.

* ``conversational`` TRL chat format: ``chosen``/``rejected`` are lists of ``{"role", "content"}``
  messages, with an optional ``prompt`` column;
* ``explicit``       string columns ``prompt``, ``chosen``, ``rejected``;
* ``hh``             Anthropic hh-rlhf: ``chosen``/``rejected`` hold the whole
  ``\\n\\nHuman: ... \\n\\nAssistant: ...`` transcript;
* ``implicit``       string ``chosen``/``rejected`` sharing a common prefix that is the prompt;
* ``pku``            PKU-SafeRLHF: ``prompt``, ``response_0``, ``response_1``, ``safer_response_id``.

They are listed in detection order (their priorities): a table with ``chosen``/``rejected`` holding
messages is conversational; else with a prompt column explicit; else hh when most chosen texts,
counted over every row, are transcripts, else implicit; a table with the PKU columns (and no
chosen/rejected columns named by the user) is pku.
"""

from __future__ import annotations

import os
import re
from typing import Any

import datasets

from ..errors import DataError
from .schema import LayoutProbe, Message, PairColumns, PairLayout, PairView, Where, user_prompt
from .values import BATCH_ROWS

_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
PKU_COLUMNS = ("response_0", "response_1", "safer_response_id")

# --------------------------------------------------------------------------- hh-rlhf transcripts


def is_transcript(value: Any) -> bool:
    """True for an hh-rlhf transcript (a string with a ``Human:`` and a ``\\n\\nAssistant:`` turn).

    Args:
        value: a chosen or rejected value.

    Returns:
        Whether it is a transcript.

    >>> is_transcript("\\n\\nHuman: Hi\\n\\nAssistant: Hello"), is_transcript("Hello")
    (True, False)
    """
    return isinstance(value, str) and _HH_ASSISTANT in value and "Human:" in value


def count_transcripts(ds: datasets.Dataset, column: str) -> tuple[int, int]:
    """Count the hh-rlhf transcripts of a column over every row.

    Args:
        ds: the table.
        column: the chosen column.

    Returns:
        (rows holding a transcript, other string rows).

    >>> count_transcripts(datasets.Dataset.from_list([{"c": "\\n\\nHuman: a\\n\\nAssistant: b"}, {"c": "x"}]), "c")
    (1, 1)
    """
    hh = other = 0
    for batch in ds.select_columns([column]).with_format(None).iter(batch_size=BATCH_ROWS):
        for value in batch[column]:
            if is_transcript(value):
                hh += 1
            elif isinstance(value, str):
                other += 1
    return hh, other


def split_hh_transcript(text: str) -> tuple[tuple[Message, ...], str]:
    """Split an hh-rlhf transcript into (prompt messages, final response).

    The split is at the LAST ``"\\n\\nAssistant:"``; the text after it is the
    response (stripped; it may be empty - hh-rlhf has a few such rows). The
    text before it is parsed into messages at each ``"\\n\\nHuman:"`` (user) and
    ``"\\n\\nAssistant:"`` (assistant); contents are stripped. A ``Human:`` that
    is not preceded by a blank line is part of the content, as in the data.
    Text before the first marker, if any, becomes a user message. Consecutive
    turns of the same role are joined (with a blank line) so that the prompt
    alternates; the prompt may still end with an assistant turn when the
    transcript has two assistant turns at its end (3 of 1,101 harmless-base
    test rows).

    Args:
        text: one transcript.

    Returns:
        The prompt messages and the final assistant response.

    Raises:
        DataError: (no location; the caller adds row and field) when the transcript has no
            ``"\\n\\nAssistant:"``.

    >>> split_hh_transcript("\\n\\nHuman: Hi\\n\\nAssistant: Hello\\n\\nHuman: Bye\\n\\nAssistant: See you")
    (({'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}, \
{'role': 'user', 'content': 'Bye'}), 'See you')
    """
    cut = text.rfind(_HH_ASSISTANT)
    if cut < 0:
        raise DataError(
            "not an hh-rlhf transcript: no '\\n\\nAssistant:' turn (most rows are transcripts: make every row one "
            "layout)"
        )
    response = text[cut + len(_HH_ASSISTANT) :].strip()
    head = text[:cut]
    if not head.startswith("\n\n") and head.lstrip().startswith(("Human:", "Assistant:")):
        head = "\n\n" + head.lstrip()  # tolerate a transcript that starts without the blank line
    pieces = _HH_TURN.split(head)
    # re.split with one group: [before, role, content, role, content, ...]
    turns = [("user", pieces[0].strip())] if pieces[0].strip() else []
    turns += [(_HH_ROLES[role], content.strip()) for role, content in zip(pieces[1::2], pieces[2::2])]
    messages: list[Message] = []
    for role, content in turns:
        if messages and messages[-1]["role"] == role:
            # hh-rlhf has a few repeated turns ("Assistant: ...\n\nAssistant: ...");
            # chat templates want alternating roles, so join them as one message.
            messages[-1] = {"role": role, "content": f"{messages[-1]['content']}\n\n{content}"}
        else:
            messages.append({"role": role, "content": content})
    return tuple(messages), response


def _hh_split(record: dict[str, Any], field: str, where: Where) -> tuple[tuple[Message, ...], str]:
    try:
        return split_hh_transcript(where.text(record, field))
    except DataError as err:
        if err.row is not None:
            raise
        raise where.error(field, err.reason) from None


def _hh_view(record: dict[str, Any], names: PairColumns, where: Where) -> PairView:
    # hh-rlhf: the chosen transcript's prompt is used when the rejected one differs (a few rows); an empty
    # final response is kept (hh-rlhf has some), only an empty transcript is an error.
    prompt, chosen = _hh_split(record, names.chosen, where)
    _, rejected = _hh_split(record, names.rejected, where)  # a differing rejected prompt is ignored
    return PairView(prompt=prompt, chosen=chosen, rejected=rejected)


def _hh_detect(probe: LayoutProbe) -> bool:
    names = probe.names
    if not probe.has(names.chosen, names.rejected) or probe.has(names.prompt):
        return False
    hh, other = probe.transcripts if probe.transcripts is not None else count_transcripts(probe.table, names.chosen)
    return hh > 0 and hh >= other


# --------------------------------------------------------------------------- the other view makers


def _explicit_view(record: dict[str, Any], names: PairColumns, where: Where) -> PairView:
    prompt = where.text(record, names.prompt, allow_empty=True)
    return PairView(
        prompt=user_prompt(prompt),
        chosen=where.text(record, names.chosen),
        rejected=where.text(record, names.rejected),
    )


def _final_response(messages: tuple[Message, ...], field: str, where: Where) -> str:
    if not messages:
        raise where.error(field, "expected at least one chat message, got an empty list")
    last = messages[-1]
    if last["role"] != "assistant":
        raise where.error(field, f"the last message must be the assistant's response, got role '{last['role']}'")
    if not last["content"].strip():
        raise where.error(field, "the assistant's response is an empty string")
    return last["content"]


def strip_repeated_prompt(
    prompt: tuple[Message, ...],
    chosen: tuple[Message, ...],
    rejected: tuple[Message, ...],
    names: PairColumns,
    where: Where,
) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
    """chosen/rejected messages without a copy of the prompt's turns they begin with.

    TRL's conversational convention: `prompt` holds the shared turns, `chosen`/`rejected` only the
    continuation. Data that repeats the whole prompt at the start of both (same roles, same
    contents) would send every prompt turn to the model twice: the repeated turns are dropped. A
    copy at the start of one side only is ambiguous and refused.

    >>> from legend.data.schema import PairColumns, Where
    >>> q = ({"role": "user", "content": "Hi"},)
    >>> a = {"role": "assistant", "content": "Hello"}
    >>> strip_repeated_prompt(q, q + (a,), q + (a,), PairColumns(), Where("x", 1))
    (({'role': 'assistant', 'content': 'Hello'},), ({'role': 'assistant', 'content': 'Hello'},))
    """
    if not prompt:
        return chosen, rejected
    size = len(prompt)
    repeats = [len(side) > size and side[:size] == prompt for side in (chosen, rejected)]
    if all(repeats):
        return chosen[size:], rejected[size:]
    if any(repeats):
        field, other = (names.chosen, names.rejected) if repeats[0] else (names.rejected, names.chosen)
        raise where.error(
            field,
            f"begins with the {size} turn(s) of '{names.prompt}' again, but '{other}' does not: in the conversational "
            f"layout '{names.prompt}' holds the shared turns and '{field}'/'{other}' only what follows; give both "
            "sides the same way",
        )
    return chosen, rejected


def _conversational_view(record: dict[str, Any], names: PairColumns, where: Where) -> PairView:
    # The response is the last message (the assistant's); the prompt is the prompt column's messages
    # (explicit) or the chosen messages before the response (implicit), the chosen side winning if the
    # rejected side differs. A string prompt (UltraFeedback) is used only when the chosen messages hold none.
    # Chosen/rejected that repeat the prompt column's turns at their start have them dropped (strip_repeated_prompt).
    chosen = where.messages(record[names.chosen], names.chosen)
    rejected = where.messages(record[names.rejected], names.rejected)
    given = record.get(names.prompt) if names.prompt in record else None
    if isinstance(given, list):
        chosen, rejected = strip_repeated_prompt(where.messages(given, names.prompt), chosen, rejected, names, where)
    chosen_text = _final_response(chosen, names.chosen, where)
    rejected_text = _final_response(rejected, names.rejected, where)
    prompt = chosen[:-1]  # implicit prompt; the chosen side wins if the rejected one differs
    if names.prompt in record:
        given = record[names.prompt]
        if isinstance(given, list):
            prompt = where.messages(given, names.prompt) + prompt
        elif not prompt:
            prompt = user_prompt(where.text(record, names.prompt, allow_empty=True))
    return PairView(prompt=prompt, chosen=chosen_text, rejected=rejected_text)


def _pku_view(record: dict[str, Any], names: PairColumns, where: Where) -> PairView:
    # Chosen is response_{safer_response_id}, rejected the other.
    prompt = where.text(record, names.prompt, allow_empty=True)
    safer = record["safer_response_id"]
    if isinstance(safer, str) and safer.strip() in ("0", "1"):
        safer = int(safer)
    if isinstance(safer, bool) or safer not in (0, 1):
        raise where.error("safer_response_id", f"expected 0 or 1, got {safer!r}")
    chosen_field, rejected_field = ("response_0", "response_1") if safer == 0 else ("response_1", "response_0")
    return PairView(
        prompt=user_prompt(prompt),
        chosen=where.text(record, chosen_field),
        rejected=where.text(record, rejected_field),
    )


def common_prompt_length(chosen: str, rejected: str) -> int:
    """Length of the shared prefix of two texts, cut back to a whitespace boundary.

    Args:
        chosen: one text.
        rejected: the other.

    Returns:
        The number of leading characters that are the shared prompt.

    >>> common_prompt_length("Q: lock? Sure", "Q: lock? Surely not")  # "Sure" is part of an answer
    9
    """
    length = len(os.path.commonprefix([chosen, rejected]))
    at_boundary = (
        length == 0
        or chosen[length - 1].isspace()
        or (length < len(chosen) and length < len(rejected) and chosen[length].isspace() and rejected[length].isspace())
    )
    if at_boundary:
        return length
    # Do not split a word: "... Sure" vs "... Surely" share "Sure" but it is a response.
    last_space = max((i for i in range(length) if chosen[i].isspace()), default=-1)
    return last_space + 1


def _implicit_view(record: dict[str, Any], names: PairColumns, where: Where) -> PairView:
    # The longest common prefix, cut back to a whitespace boundary, is the prompt (one user message); the
    # rest, stripped, are the responses.
    chosen = where.text(record, names.chosen)
    if is_transcript(chosen):
        raise where.error(
            names.chosen,
            "an hh-rlhf transcript, but most rows are not (read as texts sharing a prompt): make every row one layout",
        )
    rejected = where.text(record, names.rejected)
    cut = common_prompt_length(chosen, rejected)
    chosen_text, rejected_text = chosen[cut:].strip(), rejected[cut:].strip()
    for field, text in ((names.chosen, chosen_text), (names.rejected, rejected_text)):
        if not text:
            raise where.error(field, "nothing is left after the prompt shared by chosen and rejected")
    return PairView(prompt=user_prompt(chosen[:cut].strip()), chosen=chosen_text, rejected=rejected_text)


# --------------------------------------------------------------------------- the records

_WITH_PROMPT = "'prompt', 'chosen', 'rejected' (texts or chat messages)"
_ALONE = "'chosen', 'rejected' alone (hh-rlhf transcripts or texts sharing the prompt)"

CONVERSATIONAL = PairLayout(
    name="conversational",
    description="TRL conversational: `chosen`/`rejected` (and optionally `prompt`) as lists of `{role, content}`",
    columns=lambda names: (names.chosen, names.rejected),
    optional_columns=lambda names: (names.prompt,),
    detect=lambda probe: (
        probe.has(probe.names.chosen, probe.names.rejected)
        and (probe.kind(probe.names.chosen) == "messages" or probe.kind(probe.names.rejected) == "messages")
    ),
    view=_conversational_view,
    priority=10,
    expected=_WITH_PROMPT,
)
EXPLICIT = PairLayout(
    name="explicit",
    description="explicit prompt: `prompt`, `chosen`, `rejected` (strings)",
    columns=lambda names: (names.prompt, names.chosen, names.rejected),
    detect=lambda probe: probe.has(probe.names.prompt, probe.names.chosen, probe.names.rejected),
    view=_explicit_view,
    priority=20,
    expected=_WITH_PROMPT,
)
HH = PairLayout(
    name="hh",
    description="hh-rlhf transcripts: `chosen`/`rejected` holding `\\n\\nHuman: … \\n\\nAssistant: …`; split at "
    "the last assistant turn",
    columns=lambda names: (names.chosen, names.rejected),
    detect=_hh_detect,
    view=_hh_view,
    priority=30,
    labelled=True,
    expected=_ALONE,
)
IMPLICIT = PairLayout(
    name="implicit",
    description="implicit prompt: `chosen`/`rejected` strings sharing a prefix",
    columns=lambda names: (names.chosen, names.rejected),
    detect=lambda probe: probe.has(probe.names.chosen, probe.names.rejected) and not probe.has(probe.names.prompt),
    view=_implicit_view,
    priority=40,
    expected=_ALONE,
)
PKU = PairLayout(
    name="pku",
    description="PKU-SafeRLHF: `prompt`, `response_0`, `response_1`, `safer_response_id`",
    columns=lambda names: (names.prompt, *PKU_COLUMNS),
    detect=lambda probe: (
        probe.has(probe.names.prompt, *PKU_COLUMNS) and probe.given.chosen is None and probe.given.rejected is None
    ),
    view=_pku_view,
    priority=50,
    labelled=True,
    expected="'prompt', 'response_0', 'response_1', 'safer_response_id' (PKU-SafeRLHF)",
)

BUILTIN_LAYOUTS = (CONVERSATIONAL, EXPLICIT, HH, IMPLICIT, PKU)
