"""Whole selection methods by name (a timm-style registry) and the one-call ``select``.

Registered: "bilaf" (stage 1 cores by a pluggable core method, then IDC denoising and boundary
picks) and the one-stage baselines "random", "kmeans", "kcenter" (FDS) and "activeft" (K = budget),
whose picks carry the method name as their role.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import fields
from typing import Any, Callable

import numpy as np

from ._validation import validate_inputs
from .boundary import BILAF, check_boundary_args, select_boundary_validated
from .cores import CORE_METHODS, check_seed, core_pick_order, method_params, uses_unit_vectors
from .denoise import IdcParams, denoise_validated
from .results import Pick, SelectionResult
from .variants import Stage2Settings, resolve_settings

MethodFn = Callable[..., SelectionResult]
_REGISTRY: dict[str, MethodFn] = {}
DEFAULT_CORE_FRACTION = 0.25  # K = ceil(B / 4): Table 5's best K at the 2 % budget (§4.7)
_IDC_OPTIONS = tuple(f.name for f in fields(IdcParams))
_SWITCH_OPTIONS = tuple(f.name for f in fields(Stage2Settings))


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator registering ``fn(features, budget, *, n_cores, core_method, seed, variant,
    **options) -> SelectionResult`` under ``name``."""
    def add(fn: MethodFn) -> MethodFn:
        if name in _REGISTRY:
            raise ValueError(f"selection method {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn
    return add


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def select(features: Any, budget: int, method: str = BILAF, *, n_cores: int | None = None,
           core_method: str | None = None, seed: int = 0, variant: str = "default",
           **options: Any) -> SelectionResult:
    """Run a whole selection method and return ``budget`` picks with provenance.

    BiLAF options: ``penalty``; IDC ``n_neighbors``, ``ring_fraction``, ``removal_ratio``,
    ``min_cluster_size``; any ``Stage2Settings`` switch; the core method's parameters (e.g.
    ActiveFT ``n_iterations``, ``loss``, ``batch_size``). ``n_cores`` defaults to ceil(B / 4).
    """
    if method not in _REGISTRY:
        raise ValueError(f"method must be one of {list_methods()}; got {method!r}")
    return _REGISTRY[method](features, budget, n_cores=n_cores, core_method=core_method,
                             seed=seed, variant=variant, **options)


def default_n_cores(budget: int) -> int:
    return max(2, math.ceil(budget * DEFAULT_CORE_FRACTION))


@register_method(BILAF)
def _bilaf(features: Any, budget: int, *, n_cores: int | None, core_method: str | None,
           seed: int, variant: str, **options: Any) -> SelectionResult:
    core_method = core_method or "activeft"
    if n_cores is None and isinstance(budget, numbers.Integral) and not isinstance(budget, bool):
        n_cores = default_n_cores(int(budget))
    penalty = options.pop("penalty", 1.1)
    settings = resolve_settings(variant, **{k: options.pop(k) for k in _SWITCH_OPTIONS
                                            if k in options})
    idc = IdcParams(**{k: options.pop(k) for k in _IDC_OPTIONS if k in options})
    core_params = method_params(core_method, options)
    check_seed(seed)
    matrix = validate_inputs(features, budget=budget, n_cores=n_cores,
                             normalize=settings.normalize
                             or uses_unit_vectors(core_method, settings.normalize))
    check_boundary_args(int(n_cores), penalty)
    order, core_info = core_pick_order(matrix, int(n_cores), core_method, seed,
                                       settings.normalize, core_params)
    denoised = denoise_validated(matrix, np.sort(order), variant, settings, idc)
    result = select_boundary_validated(matrix, denoised, int(budget), penalty, settings, variant)
    result.params.update(core_method=core_method, seed=seed, core_params=core_info)
    return result


def _one_stage_method(name: str) -> MethodFn:
    def run(features: Any, budget: int, *, n_cores: int | None, core_method: str | None,
            seed: int, variant: str, **options: Any) -> SelectionResult:
        if n_cores is not None or core_method is not None:
            raise ValueError(f"n_cores and core_method apply to bilaf only; {name!r} picks all "
                             "budget items itself")
        settings = resolve_settings(variant)
        params = method_params(name, options)
        check_seed(seed)
        matrix = validate_inputs(features, budget=budget,
                                 normalize=uses_unit_vectors(name, settings.normalize))
        order, info = core_pick_order(matrix, int(budget), name, seed, settings.normalize, params)
        picks = tuple(Pick(rank=rank, index=int(item), role=name)
                      for rank, item in enumerate(order))
        return SelectionResult(indices=order, picks=picks, clusters=(), method=name,
                               variant=variant,
                               params={"budget": int(budget), "seed": seed, **info})
    run.__doc__ = f"One-stage baseline {name!r}: all budget items picked by the core method."
    return run


for _name in CORE_METHODS:
    register_method(_name)(_one_stage_method(_name))
