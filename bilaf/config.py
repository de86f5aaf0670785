"""`params.yaml`: the single source of truth for every stage, validated before any compute.

One pydantic schema, used by Dagster, the DVC stages, the CLI and the benchmarks. Every section and
every key must be written out: a missing one is an error naming it, never a silent default (the
defaults live in `bilaf.defaults`, for code that builds parameters itself). Unknown
sections and keys, wrong types and out-of-range values are errors naming the key; the cross-field
rules (cores against the budget; the budget against the pool, for every source) run before any
pipeline step. Every error is a `ValueError` starting "params: <key>".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bilaf import defaults
from bilaf.errors import InvalidInputError, MissingFileError

PARAMS_FILE = "params.yaml"
OPTIONAL_SECTIONS = ("compute",)  # where the work runs, not what it computes: defaults when left out
# Train items of the sources whose size is known without reading them (null train_size = all).
SOURCE_TRAIN_ITEMS = {"fashion-mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}


class _Section(BaseModel):
    """A params.yaml section: strict types (an int is accepted for a float), no unknown keys, and
    finite numbers only (YAML's `.inf` and `.nan` are floats that every bound would let through)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


class DataParams(_Section):
    source: Literal["fashion-mnist", "image-folder", "cifar10", "cifar100"] = defaults.SOURCE
    root: str | None = None
    train_size: int | None = Field(defaults.TRAIN_SIZE, gt=0)
    test_size: int | None = Field(defaults.TEST_SIZE, gt=0)
    seed: int = Field(defaults.DATA_SEED, ge=0)
    on_unreadable: Literal["skip", "fail"] = defaults.ON_UNREADABLE

    @model_validator(mode="after")
    def _root_for_folders(self) -> DataParams:
        if self.source == "image-folder" and self.root is None:
            raise InvalidInputError("data.root is required when data.source is image-folder")
        return self


class FeatureParams(_Section):
    backbone: str = defaults.BACKBONE
    weights: str = defaults.WEIGHTS
    image_size: int = Field(defaults.IMAGE_SIZE, ge=16)
    batch_size: int = Field(defaults.EMBEDDING_BATCH_SIZE, ge=1)


class CoreParams(_Section):
    method: Literal["activeft", "kmeans", "kcenter", "random"] = defaults.CORE_METHOD
    n_cores: int = Field(defaults.N_CORES, ge=1)
    seed: int = Field(defaults.SEED, ge=0)


class DenoiseParams(_Section):
    n_neighbors: int = Field(defaults.N_NEIGHBORS, ge=1)
    ring_fraction: float = Field(defaults.RING_FRACTION, gt=0, le=1)
    removal_ratio: float = Field(defaults.REMOVAL_RATIO, ge=0, lt=1)
    variant: Literal["default", "repo"] = defaults.DENOISE_VARIANT


class BoundaryParams(_Section):
    budget: int = Field(defaults.BUDGET, ge=1)
    penalty: float = Field(defaults.PENALTY, ge=1)


class LaterRoundsParams(_Section):
    """Rounds that can learn from labels of 2+ classes (round 1, which has none, is one-shot)."""

    method: Literal["bilaf", "activeft", "kmeans", "kcenter", "random", "margin"] = defaults.LATER_METHOD
    n_cores: int = Field(defaults.LATER_N_CORES, ge=0)

    @model_validator(mode="after")
    def _cores_for_bilaf_only(self) -> LaterRoundsParams:
        if self.n_cores and self.method != "bilaf":
            raise InvalidInputError(
                f"later_rounds.n_cores applies to method bilaf only (coverage cores beside its "
                f"class-boundary picks); method {self.method} picks all of a round itself, so set it to 0"
            )
        return self


class AnnotationParams(_Section):
    labels: Literal["ground-truth", "imported"] = defaults.LABELS


class FinetuneParams(_Section):
    epochs: int = Field(defaults.FINETUNE_EPOCHS, ge=1)
    image_size: int = Field(defaults.FINETUNE_IMAGE_SIZE, ge=16)
    batch_size: int = Field(defaults.FINETUNE_BATCH_SIZE, ge=1)
    lr: float = Field(defaults.FINETUNE_LR, gt=0)
    seed: int = Field(defaults.FINETUNE_SEED, ge=0)


class EvaluationParams(_Section):
    knn_k: int = Field(defaults.KNN_K, ge=1)


class ComputeParams(_Section):
    """Where the heavy work runs (embedding shards, the selection's shards): ``local`` (this
    process), a Dask scheduler's address (``tcp://host:port``) or a scheduler file. Outputs are the
    same wherever it runs, so this section is in no lineage (``Params.section_names`` leaves it out)
    and may be left out of params.yaml. ``$BILAF_DASK_SCHEDULER`` overrides ``scheduler``, and
    ``$BILAF_EMBEDDING_CACHE`` ``embedding_cache`` (null: the project's `.cache/embeddings`; a folder
    or an ``s3://bucket/prefix`` URL every worker reaches)."""

    scheduler: str = Field(defaults.SCHEDULER, min_length=1)
    embedding_cache: str | None = None


class Params(BaseModel):
    """Every section of params.yaml; ``Params()`` holds every default."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    data: DataParams = DataParams()
    features: FeatureParams = FeatureParams()
    core: CoreParams = CoreParams()
    denoise: DenoiseParams = DenoiseParams()
    boundary: BoundaryParams = BoundaryParams()
    later_rounds: LaterRoundsParams = LaterRoundsParams()
    annotation: AnnotationParams = AnnotationParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluation: EvaluationParams = EvaluationParams()
    compute: ComputeParams = ComputeParams()

    @model_validator(mode="after")
    def _budget_rules(self) -> Params:
        if self.core.n_cores > self.boundary.budget:
            raise InvalidInputError(
                f"core.n_cores ({self.core.n_cores}) must not exceed boundary.budget ({self.boundary.budget})"
            )
        if self.later_rounds.n_cores > self.boundary.budget:
            raise InvalidInputError(
                f"later_rounds.n_cores ({self.later_rounds.n_cores}) must not exceed boundary.budget "
                f"({self.boundary.budget})"
            )
        known = self.data.train_size or SOURCE_TRAIN_ITEMS.get(self.data.source)
        if known is not None and self.boundary.budget > known:
            size = (
                f"data.train_size ({known})"
                if self.data.train_size
                else f"the {known} train items of {self.data.source}"
            )
            raise InvalidInputError(f"boundary.budget ({self.boundary.budget}) must not exceed {size}")
        return self

    def section(self, name: str) -> dict[str, Any]:
        """One section as plain values, in declaration order."""
        return getattr(self, name).model_dump()

    def section_hash(self, name: str) -> str:
        """Stable hash of one section: the Dagster data version of its parameters."""
        return section_hash_of(self.section(name))

    @classmethod
    def section_names(cls) -> tuple[str, ...]:
        """The sections that decide what the stages compute: every lineage records them. ``compute``
        says only where the work runs, so it is not one of them."""
        return tuple(name for name in cls.model_fields if name not in OPTIONAL_SECTIONS)


def section_hash_of(values: Mapping[str, Any]) -> str:
    """The hash of one section's values (as `Params.section_hash` computes it)."""
    canonical = json.dumps(dict(values), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def validated_section(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """One section's values checked on their own (no cross-section rules), with types restored."""
    try:
        return Params.model_fields[name].annotation.model_validate(dict(values)).model_dump()
    except ValidationError as error:
        raise InvalidInputError(f"params: {name}.{_describe(error.errors()[0])}") from None


def params_from_mapping(raw: Mapping[str, Any] | None) -> Params:
    """Validate a parsed params.yaml: every section and key present, each value valid."""
    if not isinstance(raw, Mapping):
        raise InvalidInputError(f"params: the file must hold a mapping of sections, got {type(raw).__name__}")
    names = Params.section_names()
    unknown = sorted(set(raw) - set(names) - set(OPTIONAL_SECTIONS))
    if unknown:
        raise InvalidInputError(f"params: {unknown[0]} is not a known section (known: {[*names, *OPTIONAL_SECTIONS]})")
    for name in [*names, *(section for section in OPTIONAL_SECTIONS if section in raw)]:
        if name not in raw:
            raise InvalidInputError(
                f"params: section {name} is missing (its keys and defaults: {getattr(Params(), name).model_dump()})"
            )
        section = raw[name]
        if not isinstance(section, Mapping):
            raise InvalidInputError(f"params: {name} must be a mapping of keys, got {section!r}")
        fields = Params.model_fields[name].annotation.model_fields
        unknown = sorted(set(section) - set(fields))
        if unknown:
            raise InvalidInputError(f"params: {name}.{unknown[0]} is not a known key (known: {sorted(fields)})")
        for key in fields:
            if key not in section:
                raise InvalidInputError(
                    f"params: {name}.{key} is missing (its default: {getattr(getattr(Params(), name), key)!r})"
                )
    try:
        return Params.model_validate(dict(raw))
    except ValidationError as error:
        raise InvalidInputError(f"params: {_describe(error.errors()[0])}") from None


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_TYPES = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool"}


def _describe(error: Mapping[str, Any]) -> str:
    """One pydantic error as "<key> <what is wrong>, got <value>"."""
    key = ".".join(str(part) for part in error["loc"])
    kind, value = error["type"], error.get("input")
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind in _BOUNDS:
        interval = _interval(error["loc"])
        return f"{key} must be {interval or _BOUNDS[kind] + ' ' + _number(next(iter(error['ctx'].values())))}, got {value!r}"
    if kind == "finite_number":
        return f"{key} must be a finite number, got {value!r}"
    if kind == "literal_error":
        return f"{key} must be one of [{error['ctx']['expected']}], got {value!r}"
    if kind in _TYPES:
        return f"{key} must be {_TYPES[kind]}, got {value!r}"
    return f"{key}: {error['msg']}, got {value!r}"


def _interval(location: tuple) -> str | None:
    """ "in [0, 1)" for a field bounded on both sides, None otherwise."""
    if len(location) != 2:
        return None
    section = Params.model_fields[location[0]].annotation
    bounds = {type(item).__name__.lower(): item for item in section.model_fields[location[1]].metadata}
    low = bounds.get("ge") or bounds.get("gt")
    high = bounds.get("le") or bounds.get("lt")
    if low is None or high is None:
        return None
    left = f"[{_number(low.ge)}" if "ge" in bounds else f"({_number(low.gt)}"
    right = f"{_number(high.le)}]" if "le" in bounds else f"{_number(high.lt)})"
    return f"in {left}, {right}"


def _number(value: float) -> str:
    return f"{value:g}"


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"params: file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InvalidInputError(f"params: {path} is not valid YAML: {error}") from error
    return params_from_mapping(raw)
