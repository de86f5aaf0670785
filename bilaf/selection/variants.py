"""Stage-2 variants: the paper-intent production default and the official-code reproduction.

Each switch names one paper-vs-code disagreement of docs/algorithm.md §9; a variant is a preset of
all switches, and every stage function accepts overrides of single switches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from bilaf.errors import InvalidInputError

DENSITY_FORMS = ("paper", "repo")
BUDGET_RULES = ("largest_remainder", "repo")
PENALTY_SCOPES = ("all", "nearest")
INTRA_DISTANCES = ("remaining", "denoised")


@dataclass(frozen=True)
class Stage2Settings:
    """Switches of stage 2 (pseudo-class assignment, IDC denoising, boundary picks).

    normalize: measure on L2-normalised features (paper text, A2) or raw ones (released code).
    exact: float64 with SciPy ``cdist`` values and the code's tie-break orders (reproduces released
        subsets), or float32 torch matmuls (fast).
    density: IDC density distance; "paper" = mean of the k smallest distances to the absorbed set,
        "repo" = the released code's indexing slip (§4.3, A1).
    absorb_remainder: IDC keeps growing until every item is absorbed; the code drops the last
        ``n - s * floor(n / s)`` items unseen (A7).
    budget_rule: "largest_remainder" = shares proportional to denoised sizes, at least 1 and at most
        the cluster size, summing to the budget; "repo" = floor then one unit to the smallest share
        (may exceed a cluster's size and so produce duplicates, A8).
    penalty_scope: "all" = paper Eq. 7, minimum over every rival centre of its penalised distance;
        "nearest" = the code, only the unpenalised nearest rival is penalised (A4).
    intra_distance: "remaining" = Alg. 1, mean distance to the candidates left after each removal;
        "denoised" = the code, mean distance to the whole denoised cluster, computed once (A5).
    """

    normalize: bool
    exact: bool
    density: str
    absorb_remainder: bool
    budget_rule: str
    penalty_scope: str
    intra_distance: str

    def __post_init__(self) -> None:
        for name, allowed in (
            ("density", DENSITY_FORMS),
            ("budget_rule", BUDGET_RULES),
            ("penalty_scope", PENALTY_SCOPES),
            ("intra_distance", INTRA_DISTANCES),
        ):
            if getattr(self, name) not in allowed:
                raise InvalidInputError(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


VARIANTS: dict[str, Stage2Settings] = {
    "default": Stage2Settings(
        normalize=True,
        exact=False,
        density="paper",
        absorb_remainder=True,
        budget_rule="largest_remainder",
        penalty_scope="all",
        intra_distance="remaining",
    ),
    "repo": Stage2Settings(
        normalize=False,
        exact=True,
        density="repo",
        absorb_remainder=False,
        budget_rule="repo",
        penalty_scope="nearest",
        intra_distance="denoised",
    ),
}


def resolve_settings(variant: str, **overrides: Any) -> Stage2Settings:
    """The variant's preset with every non-None override applied."""
    if variant not in VARIANTS:
        raise InvalidInputError(f"variant must be one of {tuple(VARIANTS)}; got {variant!r}")
    return replace(VARIANTS[variant], **{k: v for k, v in overrides.items() if v is not None})
