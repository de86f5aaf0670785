"""Typed, JSON-serialisable results of each selection stage.

Every result is a frozen dataclass whose ``to_dict()`` holds only JSON-safe values (lists, ints,
floats, str, bool, None) and whose ``from_dict()`` rebuilds an equal object. Arrays are stored
read-only so a result cannot be changed after it is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bilaf.errors import InvalidInputError

CORE_ROLE = "core"
BOUNDARY_ROLE = "boundary"


def _frozen_array(values: Any, dtype: type) -> np.ndarray:
    array = np.array(values, dtype=dtype)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class CoreSelection:
    """Stage 1 output: the core (pseudo-class centre) items, ascending as in the released JSONs."""

    indices: np.ndarray
    method: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", _frozen_array(self.indices, np.int64))

    def __len__(self) -> int:
        return len(self.indices)

    def to_dict(self) -> dict[str, Any]:
        return {"indices": self.indices.tolist(), "method": self.method, "seed": self.seed, "params": self.params}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoreSelection:
        return cls(indices=data["indices"], method=data["method"], seed=data["seed"], params=data["params"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CoreSelection) and self.to_dict() == other.to_dict()


@dataclass(frozen=True)
class ClusterStats:
    """One pseudo-class: its core item, its size before/after denoising and its budget share."""

    cluster: int
    core_index: int
    size: int
    denoised_size: int
    budget: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "core_index": self.core_index,
            "size": self.size,
            "denoised_size": self.denoised_size,
            "budget": self.budget,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterStats:
        return cls(**data)


@dataclass(frozen=True, eq=False)
class DenoisedPool:
    """Stage 2a output: pseudo-class of every item and which items survived IDC denoising.

    ``absorption_rank[i]`` is the order in which IDC absorbed item i inside its cluster (0 = the
    core ring first), or -1 if it was never absorbed (the ring remainder of the repo variant).
    Clusters too small to denoise rank their items in ascending index order. A cluster's denoised
    set H, in the absorption order that the repo tie-breaks depend on, is ``members(cluster)``.
    """

    cores: np.ndarray
    assignment: np.ndarray
    kept: np.ndarray
    absorption_rank: np.ndarray
    normalized: bool
    variant: str
    params: dict[str, Any]
    clusters: tuple[ClusterStats, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "cores", _frozen_array(self.cores, np.int64))
        object.__setattr__(self, "assignment", _frozen_array(self.assignment, np.int64))
        object.__setattr__(self, "kept", _frozen_array(self.kept, bool))
        object.__setattr__(self, "absorption_rank", _frozen_array(self.absorption_rank, np.int64))
        object.__setattr__(self, "clusters", tuple(self.clusters))

    @property
    def n_items(self) -> int:
        return len(self.assignment)

    def members(self, cluster: int) -> np.ndarray:
        """Denoised items of one cluster in absorption order."""
        items = np.flatnonzero((self.assignment == cluster) & self.kept)
        return items[np.argsort(self.absorption_rank[items], kind="stable")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "cores": self.cores.tolist(),
            "assignment": self.assignment.tolist(),
            "kept": self.kept.tolist(),
            "absorption_rank": self.absorption_rank.tolist(),
            "normalized": self.normalized,
            "variant": self.variant,
            "params": self.params,
            "clusters": [stats.to_dict() for stats in self.clusters],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenoisedPool:
        return cls(
            cores=data["cores"],
            assignment=data["assignment"],
            kept=data["kept"],
            absorption_rank=data["absorption_rank"],
            normalized=data["normalized"],
            variant=data["variant"],
            params=data["params"],
            clusters=tuple(ClusterStats.from_dict(c) for c in data["clusters"]),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DenoisedPool) and self.to_dict() == other.to_dict()


@dataclass(frozen=True)
class ClassStats:
    """One class region of a label-aware round: the class, its size before/after denoising, how
    many of its items were labeled already, and its budget share."""

    class_id: int
    size: int
    denoised_size: int
    labeled: int
    budget: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_id": self.class_id,
            "size": self.size,
            "denoised_size": self.denoised_size,
            "labeled": self.labeled,
            "budget": self.budget,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassStats:
        return cls(**data)


@dataclass(frozen=True)
class Pick:
    """Provenance of one selected item.

    ``role`` is "core" or "boundary" for BiLAF and the method name for the one-stage baselines.
    ``boundary_score`` (penalised, as ranked) and ``penalty_factor`` (delta ** t of the rival when
    the item was picked) exist for boundary picks only. One-shot BiLAF boundary picks name their
    ``cluster`` and ``rival_center`` (item index of the rival core); label-aware boundary picks
    name their ``predicted_class`` and ``rival_class`` instead. Margin picks carry their
    ``margin`` (top-1 minus top-2 probability) and the two classes.
    """

    rank: int
    index: int
    role: str
    cluster: int | None = None
    boundary_score: float | None = None
    rival_center: int | None = None
    penalty_factor: float | None = None
    predicted_class: int | None = None
    rival_class: int | None = None
    margin: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in RECORD_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pick:
        return cls(**data)


RECORD_FIELDS = (
    "rank",
    "index",
    "role",
    "cluster",
    "boundary_score",
    "rival_center",
    "penalty_factor",
    "predicted_class",
    "rival_class",
    "margin",
)


@dataclass(frozen=True, eq=False)
class SelectionResult:
    """Final selection: item indices in pick order plus per-pick provenance and cluster stats."""

    indices: np.ndarray
    picks: tuple[Pick, ...]
    clusters: tuple[ClusterStats, ...]
    method: str
    variant: str
    params: dict[str, Any]
    classes: tuple[ClassStats, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", _frozen_array(self.indices, np.int64))
        object.__setattr__(self, "picks", tuple(self.picks))
        object.__setattr__(self, "clusters", tuple(self.clusters))
        object.__setattr__(self, "classes", tuple(self.classes))
        if len(self.picks) != len(self.indices):
            raise InvalidInputError(f"{len(self.picks)} picks for {len(self.indices)} indices")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def core_indices(self) -> np.ndarray:
        """Items picked as cores (BiLAF only), in pick order."""
        return self.indices[[pick.role == CORE_ROLE for pick in self.picks]]

    def on_rows(self, rows: Any) -> SelectionResult:
        """This selection, made on ``features[rows]``, with every item index (picks, rival cores,
        cluster cores) replaced by the row of ``features`` it stands for."""
        rows = np.asarray(rows)
        data = self.to_dict()
        data["indices"] = [int(rows[i]) for i in data["indices"]]
        for pick in data["picks"]:
            pick["index"] = int(rows[pick["index"]])
            if pick["rival_center"] is not None:
                pick["rival_center"] = int(rows[pick["rival_center"]])
        for stats in data["clusters"]:
            stats["core_index"] = int(rows[stats["core_index"]])
        return SelectionResult.from_dict(data)

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per pick (the CSV rows), keys as in ``RECORD_FIELDS``."""
        return [pick.to_dict() for pick in self.picks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "indices": self.indices.tolist(),
            "picks": self.to_records(),
            "clusters": [stats.to_dict() for stats in self.clusters],
            "classes": [stats.to_dict() for stats in self.classes],
            "method": self.method,
            "variant": self.variant,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelectionResult:
        return cls(
            indices=data["indices"],
            picks=tuple(Pick.from_dict(p) for p in data["picks"]),
            clusters=tuple(ClusterStats.from_dict(c) for c in data["clusters"]),
            classes=tuple(ClassStats.from_dict(c) for c in data.get("classes", ())),
            method=data["method"],
            variant=data["variant"],
            params=data["params"],
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SelectionResult) and self.to_dict() == other.to_dict()


@dataclass(frozen=True, eq=False)
class ClassRegions:
    """Stage 2a of a label-aware round: a class for every item and the items IDC kept per class.

    ``labels`` are the annotators' (-1 = unlabeled); ``assignment`` is the label where there is
    one and the linear probe's prediction elsewhere. IDC grows each class region outward from
    its labeled items; ``absorption_rank`` is the order of absorption inside the region (the
    labeled items first) and the last absorbed are dropped as noise (``kept`` False).
    ``pending`` and ``cores`` (the round's new coverage picks) are never boundary picks.
    """

    labels: np.ndarray
    pending: np.ndarray
    cores: np.ndarray
    assignment: np.ndarray
    kept: np.ndarray
    absorption_rank: np.ndarray
    params: dict[str, Any]
    classes: tuple[ClassStats, ...]

    def __post_init__(self) -> None:
        for name, dtype in (
            ("labels", np.int64),
            ("pending", np.int64),
            ("cores", np.int64),
            ("assignment", np.int64),
            ("kept", bool),
            ("absorption_rank", np.int64),
        ):
            object.__setattr__(self, name, _frozen_array(getattr(self, name), dtype))
        object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def n_items(self) -> int:
        return len(self.assignment)

    @property
    def taken(self) -> np.ndarray:
        """Items that can never be a boundary pick: labeled, pending, or this round's cores."""
        mask = self.labels >= 0
        mask[self.pending] = True
        mask[self.cores] = True
        return mask

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels.tolist(),
            "pending": self.pending.tolist(),
            "cores": self.cores.tolist(),
            "assignment": self.assignment.tolist(),
            "kept": self.kept.tolist(),
            "absorption_rank": self.absorption_rank.tolist(),
            "params": self.params,
            "classes": [stats.to_dict() for stats in self.classes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassRegions:
        return cls(
            labels=data["labels"],
            pending=data["pending"],
            cores=data["cores"],
            assignment=data["assignment"],
            kept=data["kept"],
            absorption_rank=data["absorption_rank"],
            params=data["params"],
            classes=tuple(ClassStats.from_dict(c) for c in data["classes"]),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassRegions) and self.to_dict() == other.to_dict()
