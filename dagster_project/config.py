"""`params.yaml`: the single source of truth for every stage, validated before any compute.

Each section is a frozen dataclass. Unknown keys, wrong types and out-of-range values raise
`ValueError` naming the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

PARAMS_FILE = "params.yaml"


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ValueError(f"params: {key} {message}")


@dataclasses.dataclass(frozen=True)
class DataParams:
    source: Literal["fashion-mnist", "image-folder", "cifar10", "cifar100"] = "fashion-mnist"
    root: str | None = None
    train_size: int | None = 10_000
    test_size: int | None = 2_000
    seed: int = 0
    on_unreadable: Literal["skip", "fail"] = "skip"

    def __post_init__(self) -> None:
        for key in ("train_size", "test_size"):
            value = getattr(self, key)
            _require(value is None or value > 0, f"data.{key}", f"must be positive or null, got {value}")
        _require(self.source != "image-folder" or self.root is not None, "data.root",
                 "is required when data.source is image-folder")


@dataclasses.dataclass(frozen=True)
class FeatureParams:
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "packaged"
    image_size: int = 128
    batch_size: int = 64

    def __post_init__(self) -> None:
        _require(self.image_size >= 16, "features.image_size", f"must be >= 16, got {self.image_size}")
        _require(self.batch_size >= 1, "features.batch_size", f"must be >= 1, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class CoreParams:
    method: Literal["activeft", "kmeans", "kcenter", "random"] = "activeft"
    n_cores: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.n_cores >= 1, "core.n_cores", f"must be >= 1, got {self.n_cores}")


@dataclasses.dataclass(frozen=True)
class DenoiseParams:
    n_neighbors: int = 10
    ring_fraction: float = 0.1
    removal_ratio: float = 0.1
    variant: Literal["default", "repo"] = "default"

    def __post_init__(self) -> None:
        _require(self.n_neighbors >= 1, "denoise.n_neighbors", f"must be >= 1, got {self.n_neighbors}")
        _require(0 < self.ring_fraction <= 1, "denoise.ring_fraction",
                 f"must be in (0, 1], got {self.ring_fraction}")
        _require(0 <= self.removal_ratio < 1, "denoise.removal_ratio",
                 f"must be in [0, 1), got {self.removal_ratio}")


@dataclasses.dataclass(frozen=True)
class BoundaryParams:
    budget: int = 250
    penalty: float = 1.1

    def __post_init__(self) -> None:
        _require(self.budget >= 1, "boundary.budget", f"must be >= 1, got {self.budget}")
        _require(self.penalty >= 1, "boundary.penalty", f"must be >= 1, got {self.penalty}")


@dataclasses.dataclass(frozen=True)
class LaterRoundsParams:
    """Rounds that can learn from labels of 2+ classes (round 1, which has none, is one-shot)."""

    method: Literal["bilaf", "activeft", "kmeans", "kcenter", "random", "margin"] = "bilaf"
    n_cores: int = 0

    def __post_init__(self) -> None:
        _require(self.n_cores >= 0, "later_rounds.n_cores", f"must be >= 0, got {self.n_cores}")
        _require(self.n_cores == 0 or self.method == "bilaf", "later_rounds.n_cores",
                 f"applies to method bilaf only (coverage cores beside its class-boundary picks); "
                 f"method {self.method} picks all of a round itself, so set it to 0")


@dataclasses.dataclass(frozen=True)
class AnnotationParams:
    labels: Literal["ground-truth", "imported"] = "ground-truth"


@dataclasses.dataclass(frozen=True)
class FinetuneParams:
    epochs: int = 12
    image_size: int = 96
    batch_size: int = 32
    lr: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "finetune.epochs", f"must be >= 1, got {self.epochs}")
        _require(self.image_size >= 16, "finetune.image_size", f"must be >= 16, got {self.image_size}")
        _require(self.batch_size >= 1, "finetune.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.lr > 0, "finetune.lr", f"must be > 0, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class EvaluationParams:
    knn_k: int = 20

    def __post_init__(self) -> None:
        _require(self.knn_k >= 1, "evaluation.knn_k", f"must be >= 1, got {self.knn_k}")


@dataclasses.dataclass(frozen=True)
class Params:
    data: DataParams = DataParams()
    features: FeatureParams = FeatureParams()
    core: CoreParams = CoreParams()
    denoise: DenoiseParams = DenoiseParams()
    boundary: BoundaryParams = BoundaryParams()
    later_rounds: LaterRoundsParams = LaterRoundsParams()
    annotation: AnnotationParams = AnnotationParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluation: EvaluationParams = EvaluationParams()

    def __post_init__(self) -> None:
        _require(self.core.n_cores <= self.boundary.budget, "core.n_cores",
                 f"({self.core.n_cores}) must not exceed boundary.budget ({self.boundary.budget})")
        _require(self.later_rounds.n_cores <= self.boundary.budget, "later_rounds.n_cores",
                 f"({self.later_rounds.n_cores}) must not exceed boundary.budget ({self.boundary.budget})")
        if self.data.train_size is not None:
            _require(self.boundary.budget <= self.data.train_size, "boundary.budget",
                     f"({self.boundary.budget}) must not exceed data.train_size ({self.data.train_size})")

    def section(self, name: str) -> dict[str, Any]:
        """One section as plain values, in declaration order."""
        return dataclasses.asdict(getattr(self, name))

    def section_hash(self, name: str) -> str:
        """Stable hash of one section: the Dagster data version of its parameters."""
        canonical = json.dumps(self.section(name), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @classmethod
    def section_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field annotation (int, float, str, Literal, Optional)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        choices = typing.get_args(annotation)
        _require(value in choices, key, f"must be one of {list(choices)}, got {value!r}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    _require(isinstance(value, annotation) and not (annotation is int and isinstance(value, bool)),
             key, f"must be {annotation.__name__}, got {value!r}")
    return value


def _build_section(cls: type, values: Mapping[str, Any], name: str) -> Any:
    _require(isinstance(values, Mapping), name, f"must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    _require(not unknown, f"{name}.{unknown[0]}" if unknown else name,
             f"is not a known key (known: {sorted(known)})")
    return cls(**{key: _coerce(value, hints[key], f"{name}.{key}") for key, value in values.items()})


def params_from_mapping(raw: Mapping[str, Any] | None) -> Params:
    """Validate a parsed params mapping; missing keys take their defaults."""
    raw = raw or {}
    _require(isinstance(raw, Mapping), "file", "must hold a mapping of sections")
    hints = typing.get_type_hints(Params)
    unknown = sorted(set(raw) - set(Params.section_names()))
    _require(not unknown, unknown[0] if unknown else "",
             f"is not a known section (known: {list(Params.section_names())})")
    sections = {name: _build_section(hints[name], raw[name] or {}, name) for name in raw}
    return Params(**sections)


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"params: file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"params: {path} is not valid YAML: {error}") from error
    return params_from_mapping(raw)
