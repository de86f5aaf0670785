"""Pictures where a picture says more: the pool in 2-D with cores, boundary picks and removed items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def pca_2d(features: Any, chunk: int = 65_536) -> np.ndarray:
    """Project L2-normalised rows onto their top two principal axes (signs fixed: deterministic).

    Works from the d×d covariance accumulated in chunks, so memory stays O(d²) whatever N is.
    scikit-learn's ``PCA(n_components=2, svd_solver="covariance_eigh")`` gives the same points,
    signs included (tests/bilaf/test_plots.py), but only from all N normalised rows in memory
    at once in float64: 10 GB for a million 1280-d features, which arrive here as a memmap (or as
    a ``FeatureRows``, read chunk by chunk).
    """
    if hasattr(features, "read"):
        n, dim, rows = len(features), features.n_columns, features.read
    else:
        matrix = np.asarray(features)
        (n, dim), rows = matrix.shape, lambda start, stop: matrix[start:stop]
    mean = np.zeros(dim)
    for start in range(0, n, chunk):
        mean += _unit(rows(start, start + chunk)).sum(axis=0)
    mean /= n
    covariance = np.zeros((dim, dim))
    for start in range(0, n, chunk):
        block = _unit(rows(start, start + chunk)) - mean
        covariance += block.T @ block
    _, vectors = np.linalg.eigh(covariance)
    axes = vectors[:, ::-1][:, :2]
    axes *= np.sign(axes[np.argmax(np.abs(axes), axis=0), [0, 1]])
    return np.concatenate([(_unit(rows(start, start + chunk)) - mean) @ axes for start in range(0, n, chunk)])


def _unit(block: np.ndarray) -> np.ndarray:
    block = np.asarray(block, dtype=np.float64)
    return block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)


def plot_selection_projection(features: Any, cores: Any, kept: np.ndarray | None, selection: Any, out: Path) -> Path:
    """Write a PNG of the pool (PCA of normalised features) marking removed items (where the round
    denoised: ``kept`` False), cores and the other picks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = pca_2d(features)
    cores = np.asarray(cores, dtype=int)
    picked = np.asarray(selection.indices, dtype=int)
    boundary = np.setdiff1d(picked, cores)
    role = next((pick.role for pick in selection.picks if pick.role != "core"), "boundary")
    removed = np.empty(0, dtype=int) if kept is None else np.flatnonzero(~np.asarray(kept, dtype=bool))
    figure, axis = plt.subplots(figsize=(7, 6), dpi=110)
    axis.scatter(points[:, 0], points[:, 1], s=2, c="#c8c8c8", label=f"pool ({len(points)})", rasterized=True)
    axis.scatter(
        points[removed, 0],
        points[removed, 1],
        s=6,
        c="#e07070",
        marker="x",
        linewidths=0.5,
        label=f"removed by denoising ({len(removed)})",
    )
    axis.scatter(
        points[boundary, 0],
        points[boundary, 1],
        s=18,
        c="#f28e2b",
        marker="^",
        edgecolors="k",
        linewidths=0.3,
        label=f"{role} picks ({len(boundary)})",
    )
    axis.scatter(
        points[cores, 0],
        points[cores, 1],
        s=80,
        c="#1f4e9c",
        marker="*",
        edgecolors="w",
        linewidths=0.5,
        label=f"cores ({len(cores)})",
    )
    axis.set(title="Selection on the pool (PCA of L2-normalised features)", xlabel="PC 1", ylabel="PC 2")
    axis.legend(loc="best", fontsize=8, markerscale=1.5)
    figure.tight_layout()
    figure.savefig(out, format="png", metadata={"Software": None})
    plt.close(figure)
    return Path(out)
