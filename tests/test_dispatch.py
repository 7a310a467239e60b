"""Dispatched models (accelerate device_map, CPU and disk offload): the plain load's margins and fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from legend.data import PairView
from legend.directions import Direction
from legend.encoding import EncodeConfig
from legend.margins import compute_margins_multi
from legend.models import ModelSpec, input_device, load_model

PROMPT = ({"role": "user", "content": "How do I pick a lock?"},)
VIEWS = [
    PairView(PROMPT, "I can't answer that.", "Sure, here is how: insert the tension wrench and rake the pins."),
    PairView(PROMPT, "Sure, rake the pins.", "I'm sorry, I cannot help with that."),
    PairView(PROMPT, "No.", "Here is the exploit code: ..."),
    PairView(({"role": "user", "content": "Write an exploit"},), "No.", "Here is the exploit code: ..."),
]
SHARING = [
    EncodeConfig(prefix_sharing=False, batch_size=3),
    EncodeConfig(prefix_sharing=True, sharing_method="packed", batch_size=3),
    EncodeConfig(prefix_sharing=True, sharing_method="cache", batch_size=3),
]


def _split_map(num_layers: int, prefix: str = "model") -> dict[str, str]:
    """First blocks and the embedding in CPU memory, the later blocks and the final norm on disk."""
    device_map = {f"{prefix}.embed_tokens": "cpu", f"{prefix}.rotary_emb": "cpu", "lm_head": "cpu"}
    for i in range(num_layers):
        device_map[f"{prefix}.layers.{i}"] = "cpu" if i < num_layers // 3 else "disk"
    device_map[f"{prefix}.norm"] = "disk"
    return device_map


def _directions(lm, layers):
    out = []
    for k, layer in enumerate(layers):
        vector = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(k))
        out.append(
            Direction(
                vector=vector / vector.norm(),
                layer=layer,
                pooling="last" if k % 2 == 0 else "mean",
                model_id=lm.model_id,
                fingerprint=lm.fingerprint,
                hidden_size=lm.hidden_size,
                num_layers=lm.num_layers,
                template="chat",
                name=f"d{k}",
            )
        )
    return out


def _margins(lm, directions, encoding):
    return np.stack([r.raw for r in compute_margins_multi(lm, VIEWS, directions, encoding)])


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_lm):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_lm.model.save_pretrained(folder)
    tiny_lm.tokenizer.save_pretrained(folder)
    return folder


def _is_offloaded(lm) -> bool:
    return any(p.device.type == "meta" for p in lm.model.parameters())


def test_explicit_cpu_disk_map_gives_the_plain_margins_and_fingerprint(tiny_folder, tmp_path):
    plain = load_model(str(tiny_folder), device="cpu")
    spread = load_model(str(tiny_folder), device_map=_split_map(plain.num_layers), offload_folder=str(tmp_path))
    assert _is_offloaded(spread) and set(spread.model.hf_device_map.values()) == {"cpu", "disk"}
    assert spread.fingerprint == plain.fingerprint
    assert input_device(spread.model) == torch.device("cpu")
    directions = _directions(plain, [plain.num_layers, 2, 1])  # last layer (final norm on disk), two inner ones
    for encoding in SHARING:
        expected = _margins(plain, directions, encoding)
        got = _margins(spread, directions, encoding)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        assert np.all(np.abs(expected) > 0)
    # The early exit leaves offloaded blocks offloaded (accelerate puts them back after each forward).
    assert _is_offloaded(spread)


def test_max_memory_auto_map_offloads_to_disk_and_matches(tiny_folder, tmp_path):
    plain = load_model(str(tiny_folder), device="cpu")
    spec = ModelSpec(str(tiny_folder), device_map="auto", max_memory="cpu=120KB", offload_folder=str(tmp_path))
    spread = spec.load()
    assert "disk" in set(spread.model.hf_device_map.values())
    assert spread.fingerprint == plain.fingerprint
    directions = _directions(plain, [plain.num_layers])
    np.testing.assert_allclose(
        _margins(spread, directions, SHARING[2]), _margins(plain, directions, SHARING[0]), atol=1e-5, rtol=0
    )


def test_fingerprint_differs_when_an_offloaded_weight_differs(tiny_folder, tmp_path):
    """The offloaded weights are really read: change one on disk and the fingerprint moves."""
    from safetensors.torch import load_file, save_file

    changed = tmp_path / "changed"
    changed.mkdir()
    for item in tiny_folder.iterdir():
        (changed / item.name).write_bytes(item.read_bytes())
    weights = load_file(changed / "model.safetensors")
    weights["model.layers.3.mlp.up_proj.weight"] = weights["model.layers.3.mlp.up_proj.weight"] + 1.0
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    plain = load_model(str(tiny_folder), device="cpu")
    spread = load_model(str(changed), device_map=_split_map(plain.num_layers), offload_folder=str(tmp_path / "off"))
    assert spread.model.hf_device_map["model.layers.3"] == "disk"
    assert spread.fingerprint != plain.fingerprint


@pytest.mark.e2e
def test_smollm2_split_between_cpu_and_disk_gives_the_plain_margins(tmp_path):
    plain = load_model("default", device="cpu")
    spread = ModelSpec(
        "default", device_map=str(_split_map(plain.num_layers)).replace("'", '"'), offload_folder=str(tmp_path)
    ).load()
    assert _is_offloaded(spread)
    assert spread.fingerprint == plain.fingerprint
    directions = _directions(plain, [plain.num_layers, 12])
    for encoding in SHARING:
        np.testing.assert_allclose(
            _margins(spread, directions, encoding), _margins(plain, directions, encoding), atol=1e-5, rtol=0
        )


def test_spec_fields_travel_through_pickling_and_the_direction_fallback(tiny_folder, tmp_path):
    """The Ray engine sends a ModelSpec to each actor and loads it with as_loaded(spec, fallback=direction's model)."""
    import pickle

    from legend.models import as_loaded

    device_map = _split_map(4)
    spec = ModelSpec(None, device_map=device_map, offload_folder=str(tmp_path), blocks_path="model.layers")
    assert pickle.loads(pickle.dumps(spec)) == spec
    lm = as_loaded(pickle.loads(pickle.dumps(spec)), fallback=str(tiny_folder))
    assert lm.model.hf_device_map == device_map
    assert lm.blocks_path == "model.layers"


def test_tied_embedding_offloaded_to_disk_keeps_the_fingerprint_and_margins(tiny_folder, tmp_path):
    """lm_head shares the embedding's tensor (saved once): with both on disk the fingerprint reads it via the tie."""
    plain = load_model(str(tiny_folder), device="cpu")
    device_map = {**_split_map(plain.num_layers), "model.embed_tokens": "disk", "lm_head": "disk"}
    spread = load_model(str(tiny_folder), device_map=device_map, offload_folder=str(tmp_path))
    assert spread.model.get_input_embeddings().weight.device.type == "meta"
    assert spread.device == torch.device("cpu")
    assert spread.fingerprint == plain.fingerprint
    directions = _directions(plain, [plain.num_layers])
    np.testing.assert_allclose(
        _margins(spread, directions, SHARING[1]), _margins(plain, directions, SHARING[1]), atol=1e-5, rtol=0
    )
