"""The pool projection of the selection plot: PCA of L2-normalised features, in bounded memory."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from sklearn.decomposition import PCA

from bilaf.plots import pca_2d, plot_selection_projection


def _features(rows: int = 3000, dim: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dim, dim)) * np.linspace(2.0, 0.1, dim)  # distinct variances
    return (rng.standard_normal((rows, dim)) @ mixing + 1.5).astype(np.float32)


def test_projection_is_scikit_learns_pca_of_the_normalised_rows_signs_included() -> None:
    features = _features()
    unit = features.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    expected = PCA(n_components=2, svd_solver="covariance_eigh").fit_transform(unit)
    points = pca_2d(features)
    assert points.shape == (3000, 2) and points.dtype == np.float64
    np.testing.assert_allclose(points, expected, rtol=0, atol=1e-12)


def test_projection_does_not_depend_on_the_chunk_size_or_a_memmap(tmp_path) -> None:
    features = _features(rows=1000, seed=1)
    np.save(tmp_path / "features.npy", features)
    mapped = np.load(tmp_path / "features.npy", mmap_mode="r")
    whole = pca_2d(features)
    np.testing.assert_allclose(pca_2d(mapped, chunk=97), whole, rtol=0, atol=1e-12)
    # rows are L2-normalised first: scaling a row does not move its point
    scaled = features * np.random.default_rng(2).uniform(0.5, 3.0, (1000, 1)).astype(np.float32)
    np.testing.assert_allclose(pca_2d(scaled), whole, rtol=0, atol=1e-6)


def test_selection_projection_draws_each_layer_at_its_items_points(tmp_path, monkeypatch) -> None:
    """Every layer (pool, removed, picks, cores) is drawn at the PCA points of exactly its items, with
    its count in the legend, and the PNG is a real, non-blank image."""
    from matplotlib.figure import Figure
    from PIL import Image

    features = _features(rows=200, dim=8)
    selection = SimpleNamespace(
        indices=[3, 10, 50, 70], picks=[SimpleNamespace(role="core"), SimpleNamespace(role="boundary")]
    )
    kept = np.ones(200, dtype=bool)
    kept[:20] = False
    saved: list[Figure] = []
    original_savefig = Figure.savefig

    def recording_savefig(figure, *args, **kwargs):
        saved.append(figure)
        return original_savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    out = plot_selection_projection(features, [3, 10], kept, selection, tmp_path / "projection.png")
    assert out == tmp_path / "projection.png"
    (figure,) = saved
    (axis,) = figure.axes
    layers = {collection.get_label(): collection.get_offsets() for collection in axis.collections}
    points = pca_2d(features)
    expected = {
        "pool (200)": points,
        "removed by denoising (20)": points[:20],
        "boundary picks (2)": points[[50, 70]],
        "cores (2)": points[[3, 10]],
    }
    assert sorted(layers) == sorted(expected)
    for label, where in expected.items():
        np.testing.assert_allclose(np.asarray(layers[label]), where, err_msg=label)
    image = np.asarray(Image.open(out).convert("L"))
    assert image.shape == (660, 770) and image.std() > 10  # 7 x 6 in at 110 dpi, not a blank canvas
