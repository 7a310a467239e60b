"""The Direction artifact: a unit vector in one layer's hidden space, with how it was made.

Saved as a folder: `direction.safetensors` (the unit vector) + `config.json` (everything needed to
reproduce it and to refuse a model it was not made for) + `README.md` (a model card, `card.py`).
`Direction.from_pretrained` reads a folder or a Hugging Face Hub repo (through the local HF cache
when offline); `Direction.push_to_hub` uploads the folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .._version import __version__
from ..encoding import POOLINGS, TEMPLATES, EncodeConfig, ModelIdentity, template_kind
from ..errors import DirectionMismatch
from ..io import atomic_folder, write_safetensors
from ..models import tokenizer_fingerprint
from .card import direction_card, json_default, looks_like_repo_id

CONFIG_FILE = "config.json"
VECTOR_FILE = "direction.safetensors"
CARD_FILE = "README.md"
HUB_FILES = (CONFIG_FILE, VECTOR_FILE, CARD_FILE)  # what `from_pretrained` fetches of a Hub repo
FORMAT_VERSION = 1
NORM_TOLERANCE = 1e-3
"""A direction's vector must have norm 1 within this (a margin is a projection on a unit vector)."""
log = logging.getLogger("legend.directions")


def check_vector(vector: torch.Tensor, hidden_size: int) -> None:
    """A ValueError unless `vector` is a finite floating-point unit vector (norm 1 ± `NORM_TOLERANCE`) of
    `hidden_size` numbers: a zero vector makes every margin 0, a tiny or huge one scales them all.

    >>> check_vector(torch.zeros(4), 4)
    Traceback (most recent call last):
    ...
    ValueError: the vector must be a unit vector (norm 1 ± 0.001), got norm 0: every margin would be 0
    """
    if tuple(vector.shape) != (hidden_size,):
        raise ValueError(f"vector shape {tuple(vector.shape)} != ({hidden_size},) (the hidden size)")
    if not vector.is_floating_point() or not bool(torch.isfinite(vector).all()):
        raise ValueError("the vector must hold finite floating-point numbers")
    norm = float(vector.double().norm())
    if not math.isfinite(norm) or abs(norm - 1.0) > NORM_TOLERANCE:
        effect = "every margin would be 0" if norm == 0 else "every margin would be scaled by it"
        raise ValueError(
            f"the vector must be a unit vector (norm 1 ± {NORM_TOLERANCE:g}), got norm {norm:.6g}: {effect}"
        )


@dataclass
class Direction:
    """A unit vector in one layer's hidden space, with the settings that produced it."""

    vector: torch.Tensor
    layer: int
    pooling: str
    model_id: str
    fingerprint: str
    hidden_size: int
    num_layers: int
    template: str = "chat"
    max_length: int = 2048
    estimator: str = "mean_difference"
    name: str = "safety"
    n_pairs: int = 0
    heldout: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # What decides the token ids (`legend.models.tokenizer_fingerprint`): tokenizer, added tokens, chat template and
    # the template setting. None for directions saved before legend recorded it (then not checked, with a warning).
    tokenizer_fingerprint: dict[str, str] | None = None

    def __post_init__(self) -> None:
        check_vector(self.vector, self.hidden_size)

    @classmethod
    def for_model(cls, lm: ModelIdentity, vector: torch.Tensor, **fields: Any) -> Direction:
        """A direction built on `lm`: the model's id, fingerprint, sizes and tokenizer fingerprint filled in, the
        rest from `fields`."""
        tokenizer = getattr(lm, "tokenizer", None)
        if tokenizer is not None and "tokenizer_fingerprint" not in fields:
            fields["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer, fields.get("template", "chat"))
        return cls(
            vector=vector,
            model_id=lm.model_id,
            fingerprint=lm.fingerprint,
            hidden_size=lm.hidden_size,
            num_layers=lm.num_layers,
            **fields,
        )

    def encode_config(self, base: EncodeConfig | None = None, **overrides: Any) -> EncodeConfig:
        """The encoding settings that reproduce this direction's inputs.

        Batching and prefix sharing come from `base` (default: EncodeConfig()); the layer, pooling,
        template and max_length are this direction's (a `max_length` set in `base` wins), and
        `overrides` replace any field last.
        """
        base = base or EncodeConfig()
        fields: dict[str, Any] = dict(
            layers=(self.layer,),
            poolings=(self.pooling,),
            template=self.template,
            max_length=base.max_length or self.max_length,
        )
        fields.update(overrides)
        return dataclasses.replace(base, **fields)

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Refuse a tokenizer or chat template other than the one this direction was built with (the same weights
        would then read other token ids); a direction that records none is used with a warning."""
        if self.tokenizer_fingerprint is None:
            if not self.__dict__.get("_warned_no_tokenizer"):
                self.__dict__["_warned_no_tokenizer"] = True
                log.warning(
                    "warning: direction %r records no tokenizer fingerprint (saved by an older legend): its tokenizer "
                    "and chat template cannot be checked against the model's; rebuild it to have them checked",
                    self.name,
                )
            return
        recorded = self.tokenizer_fingerprint
        kind = template_kind(tokenizer, self.template) if self.template in TEMPLATES else self.template
        mine = tokenizer_fingerprint(tokenizer, kind)
        names = {"tokens": "tokenizer (vocabulary, added or special tokens)", "chat_template": "chat template"}
        differ = [names[k] for k in names if recorded.get(k) != mine.get(k)]
        if recorded.get("template") != mine.get("template"):
            differ.append(f"template ({recorded.get('template')} vs {mine.get('template')})")
        if differ:
            raise DirectionMismatch(
                f"direction {self.name!r} was built with another {' and '.join(differ)} than the model in use has: "
                "the same text would become other token ids, so its margins would not mean the same; use the "
                f"tokenizer it was built with ({self.model_id!r}) or rebuild the direction"
            )

    def check_compatible(self, lm: ModelIdentity) -> None:
        """Refuse a model this direction was not made for: hidden size, weights, and tokenizer with its template."""
        if lm.hidden_size != self.hidden_size:
            raise DirectionMismatch(
                f"direction {self.name!r} has hidden size {self.hidden_size} but model {lm.model_id!r} has "
                f"{lm.hidden_size}: it was built with {self.model_id!r}"
            )
        if lm.fingerprint != self.fingerprint:
            raise DirectionMismatch(
                f"direction {self.name!r} was built with {self.model_id!r} (fingerprint {self.fingerprint}) "
                f"but the model in use is {lm.model_id!r} (fingerprint {lm.fingerprint})"
            )
        tokenizer = getattr(lm, "tokenizer", None)
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)

    def config(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "vector"}
        data.update(
            format_version=FORMAT_VERSION,
            legend_version=__version__,
            torch_version=torch.__version__,
            transformers_version=_transformers_version(),
            python_version=platform.python_version(),
        )
        return data

    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact folder atomically (a temp folder renamed into place)."""
        target = Path(path)
        with atomic_folder(target) as tmp:
            write_safetensors(  # reproducible bytes: the same direction always gives the same file
                tmp / VECTOR_FILE,
                {"direction": self.vector.detach().float().cpu().contiguous().numpy()},
                {"name": self.name, "layer": str(self.layer), "pooling": self.pooling},
            )
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2, default=json_default) + "\n")
            (tmp / CARD_FILE).write_text(self.model_card(), encoding="utf-8")
        return target

    def model_card(self) -> str:
        """The folder's README.md: YAML metadata for the Hub, then what the direction is and how to use it."""
        return direction_card(self)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike[str],
        revision: str | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
    ) -> Direction:
        """A direction from a local folder, or from a Hugging Face Hub repo id (`user/safety-dir-llama3`).

        Hub files go through huggingface_hub's cache (`snapshot_download`, only the artifact's files);
        offline (`HF_HUB_OFFLINE=1`, or `local_files_only=True`) the cached snapshot of `revision`
        (default: main) is used. A local folder wins over a Hub id of the same name.
        """
        name = os.fspath(path_or_repo_id)
        folder = Path(name).expanduser()
        if folder.exists() or not looks_like_repo_id(name):
            if not folder.exists():
                raise FileNotFoundError(f"{name}: no such direction folder (nor a Hub repo id user/name)")
            return cls.load(folder)
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        offline = constants.HF_HUB_OFFLINE if local_files_only is None else local_files_only
        try:
            snapshot = snapshot_download(
                name,
                revision=revision,
                allow_patterns=list(HUB_FILES),
                cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                local_files_only=offline,
                token=token,
            )
        except LocalEntryNotFoundError:
            where = "the local Hugging Face cache (offline)" if offline else "the Hub, nor in the local cache"
            raise FileNotFoundError(
                f"{name}: not a local folder, and revision {revision or 'main'} is not in {where}"
            ) from None
        except (HfHubHTTPError, OSError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise FileNotFoundError(f"{name}: not a local folder, and the Hub did not give it ({reason})") from None
        direction = cls.load(snapshot)
        direction.extra["hub"] = {"repo_id": name, "revision": revision or "main", "commit": Path(snapshot).name}
        return direction

    @staticmethod
    def check_push(repo_id: str, *, token: str | None = None, api: Any = None) -> None:
        """Before any work: a ValueError in one line unless an upload to Hub repo `repo_id` can work now (a valid
        repo id, not offline, a token the Hub accepts: one fast `whoami` request)."""
        if not looks_like_repo_id(repo_id):
            raise ValueError(f"--push-to-hub {repo_id!r}: expected a Hub repo id, user/name")
        from huggingface_hub import HfApi, constants

        if constants.HF_HUB_OFFLINE:
            raise ValueError(
                f"--push-to-hub {repo_id}: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE is set), so "
                "nothing can be uploaded; build without --push-to-hub and push the folder later"
            )
        api = api or HfApi(token=token)
        try:
            api.whoami()
        except Exception as err:  # no token (LocalTokenNotFoundError), a refused token, no network (httpx errors)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            if type(err).__name__ == "LocalTokenNotFoundError":
                first = "no Hugging Face token: log in with `hf auth login` or set HF_TOKEN"
            raise ValueError(
                f"--push-to-hub {repo_id}: the Hub cannot take an upload now ({first}); nothing was built"
            ) from None

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        api: Any = None,
    ) -> Any:
        """Save the artifact (vector, config, model card) and upload it to a Hub model repo (created if needed).

        Returns huggingface_hub's CommitInfo. `api` is an `HfApi` to use (default: a new one with `token`).
        """
        import tempfile

        from huggingface_hub import HfApi

        api = api or HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="legend-direction-") as tmp:
            folder = self.save(Path(tmp) / "direction")
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                repo_type="model",
                revision=revision,
                commit_message=commit_message or f"legend direction {self.name!r} for {self.model_id}",
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Direction:
        folder = Path(path)
        config_path, vector_path = folder / CONFIG_FILE, folder / VECTOR_FILE
        if not config_path.is_file() or not vector_path.is_file():
            raise FileNotFoundError(f"{folder}: not a direction folder (needs {CONFIG_FILE} and {VECTOR_FILE})")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{config_path}: cannot read ({exc})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
        _check_config(config, config_path)
        try:
            tensors = load_file(str(vector_path))
        except Exception as exc:  # safetensors raises its own error type for a damaged file
            raise ValueError(f"{vector_path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
        if "direction" not in tensors:
            raise ValueError(f"{vector_path}: no tensor named 'direction' (found: {', '.join(tensors) or 'none'})")
        vector = tensors["direction"]
        try:
            check_vector(vector, config["hidden_size"])
        except ValueError as err:
            raise ValueError(f"{vector_path}: {err}") from None
        known = {f for f in cls.__dataclass_fields__ if f != "vector"}
        return cls(vector=vector, **{k: v for k, v in config.items() if k in known})


# Fields a direction's config.json must hold, with their types (others have defaults).
_REQUIRED_CONFIG = {
    "layer": int,
    "pooling": str,
    "model_id": str,
    "fingerprint": str,
    "hidden_size": int,
    "num_layers": int,
}
_OPTIONAL_CONFIG = {"template": str, "max_length": int, "estimator": str, "name": str, "n_pairs": int}


def _check_config(config: dict[str, Any], path: Path) -> None:
    """A one-line ValueError naming the file and field for a config.json a direction cannot come from."""
    missing = [k for k in _REQUIRED_CONFIG if k not in config]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}: not a direction config")
    for key, kind in {**_REQUIRED_CONFIG, **_OPTIONAL_CONFIG}.items():
        if key in config and (not isinstance(config[key], kind) or isinstance(config[key], bool)):
            raise ValueError(f"{path}: field '{key}': expected {kind.__name__}, got {type(config[key]).__name__}")
    if config["pooling"] not in POOLINGS:
        raise ValueError(f"{path}: field 'pooling': {config['pooling']!r} is not one of {', '.join(POOLINGS)}")
    for key in ("heldout", "extra"):
        if key in config and not isinstance(config[key], dict):
            raise ValueError(f"{path}: field '{key}': expected an object, got {type(config[key]).__name__}")
    if "template" in config and config["template"] not in TEMPLATES:
        raise ValueError(f"{path}: field 'template': {config['template']!r} is not one of {', '.join(TEMPLATES)}")
    for key, least in (("max_length", 2), ("hidden_size", 1), ("num_layers", 1), ("n_pairs", 0)):
        if key in config and config[key] < least:
            raise ValueError(f"{path}: field '{key}': {config[key]} is below {least}")
    layers = config["num_layers"]
    if not -(layers + 1) <= config["layer"] <= layers:
        raise ValueError(f"{path}: field 'layer': {config['layer']} is out of range for {layers} layers (0..{layers})")
    name = config.get("name", "safety")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"{path}: field 'name': {name!r}: use letters, digits, '-' and '_' (it names columns)")
    tokenizer = config.get("tokenizer_fingerprint")
    if tokenizer is not None and not (
        isinstance(tokenizer, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in tokenizer.items())
    ):
        raise ValueError(f"{path}: field 'tokenizer_fingerprint': expected an object of strings")


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
