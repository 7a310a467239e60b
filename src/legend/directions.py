"""Concept directions: estimators, held-out separation, and the Direction artifact.

A direction points from the harmful side of a concept to the harmless side in the hidden space of
one layer. The paper's Standard Margin Vector is the normalised mean difference; PCA of paired
differences and a logistic probe are offered too. A Direction is saved as a folder:
`direction.safetensors` (the unit vector) + `config.json` (everything needed to reproduce it and to
refuse a model it was not made for) + `README.md` (a model card: what it is, how it was made and
checked, how to use it). `Direction.from_pretrained` reads a folder or a Hugging Face Hub repo (through
the local HF cache when offline); `Direction.push_to_hub` uploads the folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .data import ContrastPair
from .encoding import POOLINGS, EncodeConfig, encode, question_items, resolve_layer, template_kind
from .errors import DirectionMismatch
from .io import atomic_folder
from .metrics import auc, pair_accuracy
from .models import LoadedModel

CONFIG_FILE = "config.json"
VECTOR_FILE = "direction.safetensors"
CARD_FILE = "README.md"
HUB_FILES = (CONFIG_FILE, VECTOR_FILE, CARD_FILE)  # what `from_pretrained` fetches of a Hub repo
SEPARATION_CAVEAT = (
    "Held-out separation is measured on contrast pairs (the same kind of answers the direction was fitted "
    "on) and saturates easily; it is no evidence that the margins agree with preferences on real preference "
    "data. Check that with `legend evaluate` on labelled pairs."
)
FORMAT_VERSION = 1


# ---------------------------------------------------------------- estimators
# Each takes paired embeddings (harmless[i] and harmful[i] answer the same question), returns a unit
# vector pointing to the harmless side.


def mean_difference(harmless: torch.Tensor, harmful: torch.Tensor) -> torch.Tensor:
    """The paper's Standard Margin Vector: normalised mean(harmless) - mean(harmful)."""
    return _unit(harmless.double().mean(0) - harmful.double().mean(0))


def pca_difference(harmless: torch.Tensor, harmful: torch.Tensor) -> torch.Tensor:
    """First principal component of the paired differences, signed to point to the harmless side.

    As in RepE, the differences are not centred: centring would remove the very shift between the
    two sides and leave only the noise's main axis.
    """
    diffs = (harmless - harmful).double()
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    component = vh[0]
    if (diffs @ component).mean() < 0:
        component = -component
    return _unit(component)


def logistic_probe(harmless: torch.Tensor, harmful: torch.Tensor) -> torch.Tensor:
    """Weights of an L2-regularised logistic regression (scikit-learn) separating harmless from harmful."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = torch.cat([harmless, harmful]).double().numpy()
    y = np.r_[np.ones(len(harmless)), np.zeros(len(harmful))]
    scaler = StandardScaler().fit(x)
    probe = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x), y)
    # Map the weights back to the unscaled space so the projection is a plain dot product.
    weights = probe.coef_[0] / np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    return _unit(torch.from_numpy(weights))


ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean_difference": mean_difference,
    "pca": pca_difference,
    "logistic": logistic_probe,
}


def _unit(vector: torch.Tensor) -> torch.Tensor:
    norm = vector.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("the direction is zero or not finite: harmful and harmless embeddings do not differ")
    return (vector / norm).float()


# ---------------------------------------------------------------- splits


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split of pair indices; at least one pair on each side when n >= 2."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(n * test_fraction))) if n >= 2 else 0
    return np.sort(order[n_test:]), np.sort(order[:n_test])


# ---------------------------------------------------------------- the artifact


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

    @classmethod
    def for_model(cls, lm: LoadedModel, vector: torch.Tensor, **fields: Any) -> Direction:
        """A direction built on `lm`: the model's id, fingerprint and sizes filled in, the rest from `fields`."""
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

    def check_compatible(self, lm: LoadedModel) -> None:
        """Refuse a model this direction was not made for."""
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
            save_file(
                {"direction": self.vector.float().contiguous()},
                str(tmp / VECTOR_FILE),
                metadata={"name": self.name, "layer": str(self.layer), "pooling": self.pooling},
            )
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2, default=_json_default) + "\n")
            (tmp / CARD_FILE).write_text(self.model_card(), encoding="utf-8")
        return target

    def model_card(self) -> str:
        """The folder's README.md: YAML metadata for the Hub, then what the direction is and how to use it."""
        import yaml

        meta: dict[str, Any] = {
            "library_name": "legend",
            "tags": ["legend", "representation-engineering", "safety", "preference-data"],
        }
        if _looks_like_repo_id(self.model_id) and not Path(self.model_id).exists():
            meta["base_model"] = self.model_id
        meta["legend"] = {
            "name": self.name,
            "model_id": self.model_id,
            "fingerprint": self.fingerprint,
            "layer": self.layer,
            "num_layers": self.num_layers,
            "pooling": self.pooling,
            "estimator": self.estimator,
            "template": self.template,
            "hidden_size": self.hidden_size,
        }
        heldout = self.heldout
        separation = (
            f"accuracy {heldout['accuracy']:.3f}, AUC {heldout['auc']:.3f} on {heldout['n_test']} held-out "
            f"contrast pairs (trained on {heldout['n_train']}, seed {heldout.get('seed')})"
            if "accuracy" in heldout
            else "not measured (no held-out split)"
        )
        selection = self.extra.get("selection") or {}
        if selection.get("by") == "preferences":
            evaluation = (
                f"chosen by agreement with labelled preferences (`{selection.get('select_on')}`): share of positive "
                f"margins {_number(selection.get('test_share_positive'))}, AUC {_number(selection.get('test_auc'))} "
                f"on {selection.get('n_test')} held-out preference pairs"
            )
        elif self.extra.get("evaluation"):
            evaluation = json.dumps(self.extra["evaluation"], default=_json_default)
        else:
            evaluation = "none recorded: run `legend evaluate` on labelled preference pairs before relying on it"
        lines = [
            f"# `{self.name}`: a Legend safety direction for `{self.model_id}`",
            "",
            "A unit vector in one layer's hidden space pointing from harmful to harmless answers, built by "
            "[legend](https://arxiv.org/abs/2406.08124) (Legend, Feng et al., AAAI 2025). Projecting "
            "e(prompt+chosen) - e(prompt+rejected) on it gives a preference pair's safety margin.",
            "",
            f"- model: `{self.model_id}`, weights fingerprint `{self.fingerprint}` (legend refuses other weights)",
            f"- layer {self.layer} of {self.num_layers} (hidden size {self.hidden_size}), pooling `{self.pooling}`, "
            f"estimator `{self.estimator}`, template `{self.template}`, max length {self.max_length}",
            f"- contrast data: {self.n_pairs} pairs"
            + (f" from `{self.extra['pairs_file']}`" if "pairs_file" in self.extra else ""),
            f"- held-out separation: {separation}",
            f"- evaluation on preference data: {evaluation}",
            "",
            f"> {SEPARATION_CAVEAT}",
            "",
            "## How to use",
            "",
            "```bash",
            "pip install legend",
            "legend annotate --direction <this repo id or folder> --data prefs.jsonl --out prefs/train.jsonl",
            "```",
            "",
            "```python",
            "from legend.directions import Direction",
            "",
            'direction = Direction.from_pretrained("<this repo id or folder>")',
            "```",
            "",
            "Files: `direction.safetensors` (the vector, key `direction`), `config.json` (how it was made).",
        ]
        front = yaml.safe_dump(json.loads(json.dumps(meta, default=_json_default)), sort_keys=False)
        return f"---\n{front}---\n" + "\n".join(lines) + "\n"

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
        if folder.exists() or not _looks_like_repo_id(name):
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
        known = {f for f in cls.__dataclass_fields__ if f != "vector"}
        direction = cls(vector=vector, **{k: v for k, v in config.items() if k in known})
        if direction.vector.shape != (direction.hidden_size,):
            raise ValueError(f"{vector_path}: vector shape {tuple(vector.shape)} != ({direction.hidden_size},)")
        if not direction.vector.is_floating_point() or not bool(torch.isfinite(direction.vector).all()):
            raise ValueError(f"{vector_path}: the vector must hold finite floating-point numbers")
        return direction


def _looks_like_repo_id(name: str) -> bool:
    """`user/name` as the Hub spells repo ids (huggingface_hub's own validation), not a path-like string."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


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


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------- settings

SELECT_MODES = ("none", "auto")


@dataclass(frozen=True)
class DirectionSettings:
    """How a direction is built (`legend direction`). Validated once; saved in the artifact's config.json.

    `layer`/`pooling`/`estimator` left None take the paper's defaults (last layer, last token, mean
    difference) when `select` is "none"; with `select="auto"` (or a `select_on` preference file) the
    ones left None are chosen by the sweep and the ones given are fixed.
    """

    layer: int | None = None
    pooling: str | None = None
    estimator: str | None = None
    select: str = "none"
    layer_stride: int = 1
    dev_fraction: float = 0.5
    template: str = "auto"
    max_length: int = 2048
    test_fraction: float = 0.2
    seed: int = 0
    name: str = "safety"
    encoding: EncodeConfig = field(default_factory=EncodeConfig)  # batching and progress

    def __post_init__(self) -> None:
        if self.select not in SELECT_MODES:
            raise ValueError(f"--select: expected 'auto' or 'none', got {self.select!r}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose from {', '.join(POOLINGS)}")
        if self.estimator is not None and self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose from {', '.join(ESTIMATORS)}")
        if self.template not in ("auto", "chat", "plain"):
            raise ValueError(f"unknown template {self.template!r}; choose from auto, chat, plain")
        if self.layer_stride < 1:
            raise ValueError("layer_stride must be at least 1")
        if not 0 < self.dev_fraction < 1:
            raise ValueError("dev_fraction must be between 0 and 1")
        if not 0 <= self.test_fraction < 1:
            raise ValueError("test_fraction must be in [0, 1)")
        if self.max_length < 2:
            raise ValueError("max_length must be at least 2")
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"direction name {self.name!r}: use letters, digits, '-' and '_' (it names columns)")

    @property
    def selecting(self) -> bool:
        return self.select == "auto"

    def with_paper_defaults(self) -> DirectionSettings:
        """Unset layer/pooling/estimator filled with the paper's choice (-1, last token, mean difference)."""
        return dataclasses.replace(
            self,
            layer=-1 if self.layer is None else self.layer,
            pooling=self.pooling or "last",
            estimator=self.estimator or "mean_difference",
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as saved in config.json (`settings`); batching is left out (it changes no number)."""
        return {k: v for k, v in asdict(self).items() if k != "encoding"}


# ---------------------------------------------------------------- building


@dataclass
class ContrastEmbeddings:
    """Embeddings of each pair's harmless and harmful answer, keyed by (layer, pooling)."""

    harmless: dict[tuple[int, str], torch.Tensor]
    harmful: dict[tuple[int, str], torch.Tensor]
    n_truncated: int


def embed_contrast_pairs(lm: LoadedModel, pairs: Sequence[ContrastPair], config: EncodeConfig) -> ContrastEmbeddings:
    """One encoding pass over both answers of every pair, for all layers/poolings in `config`."""
    questions = [p.question for p in pairs]
    items = question_items(questions, [p.harmless for p in pairs]) + question_items(
        questions, [p.harmful for p in pairs]
    )
    encoded = encode(lm, items, config)
    n = len(pairs)
    return ContrastEmbeddings(
        harmless={k: v[:n] for k, v in encoded.vectors.items()},
        harmful={k: v[n:] for k, v in encoded.vectors.items()},
        n_truncated=encoded.n_truncated,
    )


def fit_direction_vector(
    harmless: torch.Tensor,
    harmful: torch.Tensor,
    estimator: str = "mean_difference",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fit on a train split to measure held-out separation, then refit on all pairs."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    fit = ESTIMATORS[estimator]
    train, test = split_indices(len(harmless), test_fraction, seed)
    heldout: dict[str, Any] = {"test_fraction": test_fraction, "seed": seed, "n_train": len(train), "n_test": len(test)}
    if len(test) and len(train):
        vector = fit(harmless[train], harmful[train])
        heldout["accuracy"] = pair_accuracy(harmless[test], harmful[test], vector)
        heldout["auc"] = auc(harmless[test], harmful[test], vector)
    return fit(harmless, harmful), heldout


def build_direction(
    lm: LoadedModel, pairs: Sequence[ContrastPair], settings: DirectionSettings | None = None, **fields: Any
) -> Direction:
    """Build a concept direction from contrast pairs (question, harmful answer, harmless answer).

    `settings` (default DirectionSettings(); `fields` replace some of its fields) fixes the layer,
    pooling and estimator (unset ones take the paper's defaults). Both answers are embedded as
    `question ⊕ answer` with the same formatting annotation uses; the held-out separation
    accuracy/AUC is measured on a `test_fraction` split before refitting on all pairs.
    """
    settings = dataclasses.replace(settings or DirectionSettings(), **fields).with_paper_defaults()
    assert settings.layer is not None and settings.pooling is not None and settings.estimator is not None
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 contrast pairs to build a direction, got {len(pairs)}")
    kind = template_kind(lm.tokenizer, settings.template)
    config = dataclasses.replace(
        settings.encoding,
        layers=(settings.layer,),
        poolings=(settings.pooling,),
        template=kind,
        max_length=settings.max_length,
        description="direction",
    )
    embedded = embed_contrast_pairs(lm, pairs, config)
    key = (settings.layer, settings.pooling)
    vector, heldout = fit_direction_vector(
        embedded.harmless[key], embedded.harmful[key], settings.estimator, settings.test_fraction, settings.seed
    )
    return Direction.for_model(
        lm,
        vector,
        layer=resolve_layer(settings.layer, lm.num_layers),
        pooling=settings.pooling,
        template=kind,
        max_length=settings.max_length,
        estimator=settings.estimator,
        name=settings.name,
        n_pairs=len(pairs),
        heldout=heldout,
        extra={"n_truncated_texts": embedded.n_truncated, "settings": settings.to_dict()},
    )
