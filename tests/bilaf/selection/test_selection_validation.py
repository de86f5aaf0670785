"""Bad input gives a ValueError naming the problem, before any work starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bilaf.selection import denoise, methods, select, select_boundary, select_cores


def _features(n_items: int = 60, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n_items, dim)).astype(np.float32)


def _with(row: int, value: float) -> np.ndarray:
    features = _features()
    features[row, 1] = value
    return features


def _duplicated() -> np.ndarray:
    features = _features()
    features[41] = features[7]
    return features


def _zero_row() -> np.ndarray:
    features = _features()
    features[3] = 0.0
    return features


@pytest.mark.parametrize(
    ("features", "budget", "n_cores", "message"),
    [
        (_with(5, np.nan), 10, 4, "row 5 contains NaN or infinite"),
        (_with(9, np.inf), 10, 4, "row 9 contains NaN or infinite"),
        (_features(), 61, 4, "budget 61 is larger than the pool"),
        (_features(), 3, 4, "budget 3 is smaller than the number of cores"),
        (_features(), 0, 4, "budget must be positive"),
        (_features(), -2, 4, "budget must be positive"),
        (_features(), 10, 0, "n_cores must be positive"),
        (_features(), 60, 61, "n_cores 61 is larger than the pool"),
        (_features(), 2.5, 4, "budget must be an integer"),
        (_features(), True, 4, "budget must be an integer"),
        (_duplicated(), 10, 4, "rows 7 and 41 are identical"),
        (_zero_row(), 10, 4, "row 3 is all zeros"),
        (_features()[0], 10, 4, "2-D array"),
        (_features()[None], 10, 4, "2-D array"),
        (np.empty((0, 4)), 10, 4, "features is empty"),
        (np.empty((5, 0)), 1, 1, "features is empty"),
        (np.array([["a", "b"], ["c", "d"]]), 1, 1, "real numbers"),
        (None, 1, 1, "features is empty"),
    ],
)
def test_select_rejects_bad_input_before_any_work(monkeypatch, features, budget, n_cores, message):
    def must_not_run(*args, **kwargs):
        raise AssertionError("work started before validation")

    monkeypatch.setattr(methods, "core_pick_order", must_not_run)
    with pytest.raises(ValueError, match=message):
        select(features, budget, n_cores=n_cores)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "nope"}, "method must be one of"),
        ({"variant": "paper"}, "variant must be one of"),
        ({"core_method": "dbscan"}, "core method must be one of"),
        ({"penalty": 0.5}, "penalty must be a finite number >= 1"),
        ({"n_cores": 1}, "at least 2 cores"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"unknown_option": 3}, "unknown option 'unknown_option'"),
        ({"removal_ratio": 1.0}, "removal_ratio must be in"),
        ({"density": "mine"}, "density must be one of"),
        ({"loss": "hinge"}, "loss must be one of"),
        ({"method": "random", "n_cores": 4}, "apply to bilaf only"),
    ],
)
def test_select_rejects_bad_options(monkeypatch, kwargs, message):
    monkeypatch.setattr(methods, "core_pick_order", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=message):
        select(_features(), 10, **{"n_cores": 4, **kwargs})


def test_torch_tensors_are_accepted_and_validated():
    tensor = torch.from_numpy(_features())
    assert len(select(tensor, 8, "random")) == 8
    tensor[2, 0] = float("nan")
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        select(tensor, 8, "random")


def test_stage_functions_validate_their_inputs():
    features = _features()
    with pytest.raises(ValueError, match="n_cores 61 is larger than the pool"):
        select_cores(features, 61)
    with pytest.raises(ValueError, match="cores contains index 60 outside the pool"):
        denoise(features, [1, 60])
    with pytest.raises(ValueError, match="cores contains index 4 more than once"):
        denoise(features, [4, 4, 9])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        denoise(features, [])
    pool = denoise(features, [1, 5, 9])
    with pytest.raises(ValueError, match="budget 2 is smaller than the number of cores"):
        select_boundary(features, [1, 5, 9], pool, 2)
    with pytest.raises(ValueError, match="does not match"):
        select_boundary(features, [1, 5, 10], pool, 10)
    with pytest.raises(ValueError, match="does not match"):
        select_boundary(features[:50], [1, 5, 9], pool, 10)
    with pytest.raises(ValueError, match="row 7 contains NaN"):
        select_boundary(_with(7, np.nan), [1, 5, 9], pool, 10)
