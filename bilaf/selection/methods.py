"""Whole selection methods by name (a timm-style registry) and the one-call ``select``.

Registered: "bilaf" (stage 1 cores by a pluggable core method, then IDC denoising and boundary
picks; label-aware once labels of 2+ classes exist), the one-stage baselines "random", "kmeans",
"kcenter" (FDS) and "activeft" (K = budget), whose picks carry the method name as their role,
and "margin" (uncertainty sampling on a linear probe, the textbook active-learning control).

Every method takes what earlier rounds left: ``labels`` (one class index per item, -1 =
unlabeled) and ``pending`` (items sent to annotators, not labeled yet). Those items are never
picked; coverage methods continue from them as fixed anchors (see ``cores.core_pick_order``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import numpy as np

from bilaf import defaults
from bilaf.compute import Compute
from bilaf.errors import InvalidInputError

from ._validation import KnownItems, validate_known, validate_source
from .boundary import BILAF, check_boundary_args, select_boundary_validated
from .classes import class_regions_validated, select_class_boundary_validated
from .cores import CORE_METHODS, check_seed, core_pick_order, method_params, uses_unit_vectors
from .denoise import IdcParams, denoise_validated
from .probe import class_probabilities
from .results import Pick, SelectionResult
from .shards import FeatureRows
from .strategy import MIN_LABELED_CLASSES, free_of, is_label_aware
from .variants import Stage2Settings, resolve_settings

MethodFn = Callable[..., SelectionResult]
_REGISTRY: dict[str, MethodFn] = {}
DEFAULT_CORE_FRACTION = 0.25  # K = ceil(B / 4): Table 5's best K at the 2 % budget (§4.7)
MARGIN = "margin"
_IDC_OPTIONS = tuple(f.name for f in fields(IdcParams))
_SWITCH_OPTIONS = tuple(f.name for f in fields(Stage2Settings))


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator registering ``fn(features, budget, *, n_cores, core_method, seed, variant,
    labels, pending, compute, **options) -> SelectionResult`` under ``name``."""

    def add(fn: MethodFn) -> MethodFn:
        if name in _REGISTRY:
            raise ValueError(f"selection method {name!r} is already registered")  # a bug, not the user's
        _REGISTRY[name] = fn
        return fn

    return add


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def select(
    features: Any,
    budget: int,
    method: str = BILAF,
    *,
    n_cores: int | None = None,
    core_method: str | None = None,
    seed: int = 0,
    variant: str = "default",
    labels: Any = None,
    pending: Any = None,
    compute: Compute | None = None,
    **options: Any,
) -> SelectionResult:
    """Run a whole selection method and return ``budget`` new picks with provenance.

    ``features``: an array, or a ``FeatureRows`` (rows of a ``.npy`` file every worker can read);
    ``compute`` says where the sharded work runs (default: this process; see ``bilaf.compute``).
    The picks do not depend on it.

    ``labels``/``pending``: what earlier rounds left (see the module docstring); the budget is
    spent on the other items. BiLAF options: ``penalty``; IDC ``n_neighbors``, ``ring_fraction``,
    ``removal_ratio``, ``min_cluster_size``; any ``Stage2Settings`` switch; the core method's
    parameters (e.g. ActiveFT ``n_iterations``, ``loss``, ``batch_size``). ``n_cores`` defaults
    to ceil(B / 4); in a label-aware round it may be 0 (every pick a class-boundary pick).
    """
    if method not in _REGISTRY:
        raise InvalidInputError(f"method must be one of {list_methods()}; got {method!r}")
    return _REGISTRY[method](
        features,
        budget,
        n_cores=n_cores,
        core_method=core_method,
        seed=seed,
        variant=variant,
        labels=labels,
        pending=pending,
        compute=compute,
        **options,
    )


def default_n_cores(budget: int) -> int:
    return max(2, math.ceil(budget * DEFAULT_CORE_FRACTION))


@register_method(BILAF)
def _bilaf(
    features: Any,
    budget: int,
    *,
    n_cores: int | None,
    core_method: str | None,
    seed: int,
    variant: str,
    labels: Any,
    pending: Any,
    compute: Compute | None,
    **options: Any,
) -> SelectionResult:
    core_method = core_method or defaults.CORE_METHOD
    if n_cores is None and isinstance(budget, numbers.Integral) and not isinstance(budget, bool):
        n_cores = default_n_cores(int(budget))
    penalty = options.pop("penalty", defaults.PENALTY)
    settings = resolve_settings(variant, **{k: options.pop(k) for k in _SWITCH_OPTIONS if k in options})
    idc = IdcParams(**{k: options.pop(k) for k in _IDC_OPTIONS if k in options})
    core_params = method_params(core_method, options)
    check_seed(seed)
    # Cores are measured as `select_cores` measures them (unit vectors but for random picks): the
    # variant's `normalize` is a stage-2 switch, as the pipeline's core_centers stage runs it.
    normalize = settings.normalize or uses_unit_vectors(core_method, True)
    no_cores = isinstance(n_cores, numbers.Integral) and not isinstance(n_cores, bool) and n_cores == 0
    source = validate_source(
        features, compute, budget=budget, n_cores=None if no_cores else n_cores, normalize=normalize
    )
    known = validate_known(labels, pending, len(source), budget)
    label_aware = is_label_aware(known)
    if no_cores and not label_aware:
        raise InvalidInputError(
            f"n_cores must be positive (0 is allowed only once labels of {MIN_LABELED_CLASSES}+ classes exist)"
        )
    check_boundary_args(2 if label_aware else int(n_cores), penalty)
    if label_aware:
        cores = (
            np.sort(core_pick_order(source, int(n_cores), core_method, seed, True, core_params, known, compute)[0])
            if n_cores
            else np.empty(0, np.int64)
        )
        matrix = source.materialize()
        regions = class_regions_validated(matrix, known, cores, idc)
        result = select_class_boundary_validated(matrix, regions, int(budget), float(penalty))
        result.params.update(core_method=core_method, seed=seed)
        return result
    order, core_info = core_pick_order(source, int(n_cores), core_method, seed, True, core_params, known, compute)
    result = _one_shot_bilaf(source, known, order, int(budget), penalty, settings, variant, idc, compute)
    result.params.update(core_method=core_method, seed=seed, core_params=core_info)
    return result


def _one_shot_bilaf(
    source: FeatureRows,
    known: KnownItems | None,
    cores: np.ndarray,
    budget: int,
    penalty: float,
    settings: Stage2Settings,
    variant: str,
    idc: IdcParams,
    compute: Compute | None,
) -> SelectionResult:
    """Stage 2 around ``cores``; with labeled or pending items (but too few classes to use),
    on the free items (``strategy.free_items``), so none of those is ever picked."""
    if known is None or not known.taken.any():
        denoised = denoise_validated(source, np.sort(cores), variant, settings, idc, compute)
        return select_boundary_validated(source, denoised, budget, penalty, settings, variant, compute)
    free = free_of(known, len(source))
    sub = source.subset(free)
    denoised = denoise_validated(sub, np.sort(np.searchsorted(free, cores)), variant, settings, idc, compute)
    local = select_boundary_validated(sub, denoised, budget, penalty, settings, variant, compute)
    return replace(
        local.on_rows(free), params={**local.params, "labeled": len(known.labeled), "pending": len(known.pending)}
    )


def _one_stage_method(name: str) -> MethodFn:
    def run(
        features: Any,
        budget: int,
        *,
        n_cores: int | None,
        core_method: str | None,
        seed: int,
        variant: str,
        labels: Any,
        pending: Any,
        compute: Compute | None,
        **options: Any,
    ) -> SelectionResult:
        if n_cores is not None or core_method is not None:
            raise InvalidInputError(
                f"n_cores and core_method apply to bilaf only; {name!r} picks all budget items itself"
            )
        settings = resolve_settings(variant)
        params = method_params(name, options)
        check_seed(seed)
        source = validate_source(
            features, compute, budget=budget, normalize=uses_unit_vectors(name, settings.normalize)
        )
        known = validate_known(labels, pending, len(source), budget)
        order, info = core_pick_order(source, int(budget), name, seed, settings.normalize, params, known, compute)
        picks = tuple(Pick(rank=rank, index=int(item), role=name) for rank, item in enumerate(order))
        if known is not None:
            info = {**info, "labeled": len(known.labeled), "pending": len(known.pending)}
        return SelectionResult(
            indices=order,
            picks=picks,
            clusters=(),
            method=name,
            variant=variant,
            params={"budget": int(budget), "seed": seed, **info},
        )

    run.__doc__ = f"One-stage baseline {name!r}: all budget items picked by the core method."
    return run


for _name in CORE_METHODS:
    register_method(_name)(_one_stage_method(_name))


@register_method(MARGIN)
def _margin(
    features: Any,
    budget: int,
    *,
    n_cores: int | None,
    core_method: str | None,
    seed: int,
    variant: str,
    labels: Any,
    pending: Any,
    compute: Compute | None,
    **options: Any,
) -> SelectionResult:
    """Margin sampling: the ``budget`` free items whose top-2 probe probabilities are closest.

    Needs labels of 2+ classes; deterministic (ties to the lower index), so ``seed`` is unused.
    """
    if n_cores is not None or core_method is not None or options:
        raise InvalidInputError(
            f"margin sampling takes no n_cores, core_method or options; got {sorted(options) or 'n_cores/core_method'}"
        )
    check_seed(seed)
    matrix = validate_source(features, compute, budget=budget, normalize=True).materialize()
    known = validate_known(labels, pending, len(matrix), budget)
    if not is_label_aware(known):
        raise InvalidInputError(f"margin sampling needs labels of at least {MIN_LABELED_CLASSES} classes (labels=...)")
    free = free_of(known, len(matrix))
    classes, probabilities = class_probabilities(matrix, known.labeled, known.labels[known.labeled], free)
    top_two = np.argsort(-probabilities, axis=1, kind="stable")[:, :2]
    best = np.take_along_axis(probabilities, top_two, axis=1)
    margins = best[:, 0] - best[:, 1]
    order = np.lexsort((free, margins))[: int(budget)]
    picks = tuple(
        Pick(
            rank=rank,
            index=int(free[row]),
            role=MARGIN,
            margin=float(margins[row]),
            predicted_class=int(classes[top_two[row, 0]]),
            rival_class=int(classes[top_two[row, 1]]),
        )
        for rank, row in enumerate(order)
    )
    return SelectionResult(
        indices=[pick.index for pick in picks],
        picks=picks,
        clusters=(),
        method=MARGIN,
        variant=variant,
        params={"budget": int(budget), "labeled": len(known.labeled), "pending": len(known.pending)},
    )
