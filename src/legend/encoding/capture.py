"""Reading hidden states out of a transformers model: find the decoder blocks, hook the layers asked for,
stop the forward after the deepest one.

The hooks live on the model's modules, which threads sharing one loaded model also share: every
forward that captures runs under that model's lock (`model_lock`), so two threads annotating with one
model get their own states, one forward at a time, instead of each other's.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from ..models import LoadedModel

logger = logging.getLogger("legend.encoding")

BLOCK_NAMES = ("layers", "h", "blocks", "decoder.layers")
NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")


class _StopForward(Exception):
    """Raised by a hook once the deepest needed layer has run, so later layers are skipped."""


def _attribute(root: Any, path: str) -> Any:
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
    return module


def find_blocks(base: torch.nn.Module, num_layers: int, path: str | None = None) -> torch.nn.ModuleList | None:
    """The list of decoder blocks of a base model (Llama/Mistral/Qwen `layers`, GPT-2 `h`, ...), or None.

    `path` is a user's dotted path to them (see `model_blocks`), tried instead of the known names.
    """
    for name in (path,) if path else BLOCK_NAMES:
        module = _attribute(base, name)
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            return module
    return None


def find_final_norm(base: torch.nn.Module, path: str | None = None) -> torch.nn.Module | None:
    """The norm applied after the last block (what output_hidden_states[-1] includes), or None."""
    for name in (path,) if path else NORM_NAMES:
        module = _attribute(base, name)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _resolve_override(lm: LoadedModel, path: str, what: str) -> torch.nn.Module:
    """A user-named module, looked up from the model (e.g. "model.layers") or from its base model ("layers")."""
    for root in (lm.model, lm.model.base_model):
        module = _attribute(root, path)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(f"{what} {path!r}: no such module in {type(lm.model).__name__}")


def model_blocks(lm: LoadedModel) -> tuple[torch.nn.ModuleList | None, torch.nn.Module | None]:
    """The decoder blocks and final norm the hooks use: the user's `blocks_path`/`norm_path`, else the known names.

    A user path that does not lead to a ModuleList of `num_layers` blocks is an error (not a
    silent fallback). Without an override, a model whose blocks (or norm) are not found runs the
    slower full path (every layer's states, no early exit, no prompt cache); that is logged once
    per model, naming what was looked for.
    """
    base = lm.model.base_model
    if lm.blocks_path:
        module = _resolve_override(lm, lm.blocks_path, "--blocks-path")
        if not isinstance(module, torch.nn.ModuleList) or len(module) != lm.num_layers:
            size = len(module) if isinstance(module, torch.nn.ModuleList) else "not a ModuleList"
            raise ValueError(
                f"--blocks-path {lm.blocks_path!r}: expected a ModuleList of the model's {lm.num_layers} decoder "
                f"blocks, found {type(module).__name__} ({size})"
            )
        blocks: torch.nn.ModuleList | None = module
    else:
        blocks = find_blocks(base, lm.num_layers)
    norm = _resolve_override(lm, lm.norm_path, "--norm-path") if lm.norm_path else find_final_norm(base)
    if blocks is None or norm is None:
        _warn_slow_path(lm, blocks is None, norm is None)
    return blocks, norm


_WARNED: weakref.WeakSet = weakref.WeakSet()


def _warn_slow_path(lm: LoadedModel, no_blocks: bool, no_norm: bool) -> None:
    if lm.model in _WARNED:
        return
    _WARNED.add(lm.model)
    base = type(lm.model.base_model).__name__
    missing = []
    if no_blocks:
        missing.append(
            f"no ModuleList of {lm.num_layers} decoder blocks at {', '.join(BLOCK_NAMES)} of {base} "
            "(pass --blocks-path, e.g. model.layers)"
        )
    if no_norm:
        missing.append(f"no final norm at {', '.join(NORM_NAMES)} of {base} (pass --norm-path, e.g. model.norm)")
    logger.warning(
        "legend: %s; falling back to output_hidden_states (every layer's states, no early exit%s): slower",
        "; ".join(missing),
        ", no prompt cache" if no_blocks else " when the last layer is read",
    )


_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.Lock:
    """The one lock of a loaded model: held while a forward with capture hooks runs on it."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


def _first_tensor(output: Any) -> torch.Tensor:
    first: torch.Tensor = output[0] if isinstance(output, (tuple, list)) else output
    return first


def capture_hidden(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    position_ids: torch.Tensor | None = None,
    cache: object | None = None,
) -> dict[int, torch.Tensor]:
    """Run the base model and return the hidden states [batch, seq, hidden] of `layers` (0..L).

    Hooks read the needed layers and stop the forward after the deepest one; no logits and no
    copy of every layer's states are made. Unknown architectures fall back to output_hidden_states.
    `attention_mask` is the usual 2D padding mask, or a ready 4D mask (with `position_ids`) for packed rows.
    With a transformers `cache` (a DynamicCache) the run continues from the keys/values it holds and
    adds its own, for the blocks that ran. Thread-safe: forwards on one model run one at a time.
    """
    with model_lock(lm.model):
        return _capture(lm, input_ids, attention_mask, layers, position_ids, cache)


def _capture(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    position_ids: torch.Tensor | None,
    cache: object | None,
) -> dict[int, torch.Tensor]:
    base = lm.model.base_model
    num_layers = lm.num_layers
    blocks, norm = model_blocks(lm)
    wanted = sorted(set(layers))
    extra: dict[str, Any] = {} if position_ids is None else {"position_ids": position_ids}
    use_cache = cache is not None
    if use_cache:
        extra["cache"] = cache
    if blocks is None or (num_layers in wanted and norm is None):
        hidden = base(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=use_cache, **extra
        ).hidden_states
        return {layer: hidden[layer] for layer in wanted}

    captured: dict[int, torch.Tensor] = {}
    deepest = wanted[-1]
    handles = []

    def keep(layer: int, tensor: torch.Tensor) -> None:
        captured[layer] = tensor
        if layer == deepest:
            raise _StopForward

    if 0 in wanted:
        # The input of the first block, which (unlike the embedding module's output) includes any scaling.
        handles.append(
            blocks[0].register_forward_pre_hook(
                lambda _m, args, kwargs: keep(0, args[0] if args else kwargs["hidden_states"]), with_kwargs=True
            )
        )
    for layer in wanted:
        if 0 < layer < num_layers:
            handles.append(
                blocks[layer - 1].register_forward_hook(
                    lambda _m, _a, out, layer=layer: keep(layer, _first_tensor(out))
                )
            )
    if num_layers in wanted:
        assert norm is not None  # checked above: without a final norm the plain path runs
        handles.append(norm.register_forward_hook(lambda _m, _a, out: keep(num_layers, _first_tensor(out))))
    try:
        base(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **extra)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured
