"""The comparison and diagnostics scripts' own logic: tables from partial grids, border and purity."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


compare_methods = _load("compare_methods")
bilaf_diagnostics = _load("bilaf_diagnostics")


def _blobs(rng: np.random.Generator, per_blob: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Two tight, far-apart clusters in 8-d, labelled by cluster."""
    centres = np.zeros((2, 8), dtype=np.float32)
    centres[0, 0], centres[1, 1] = 1.0, 1.0
    points = np.concatenate([c + 0.01 * rng.standard_normal((per_blob, 8)).astype(np.float32) for c in centres])
    return bilaf_diagnostics.unit_rows(points), np.repeat([0, 1], per_blob)


def _arc(angles: np.ndarray) -> np.ndarray:
    """Unit vectors in the plane: cosine neighbours are the nearest angles."""
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def test_class_border_is_empty_between_separated_classes_and_full_when_labels_alternate() -> None:
    angles = np.concatenate([np.arange(20) * 0.01, 1.0 + np.arange(20) * 0.01])  # two runs, a wide gap
    points, items = _arc(angles), np.arange(40)
    separated = np.repeat([0, 1], 20)
    assert not bilaf_diagnostics.on_class_border(points, separated, items, k=3).any()
    alternating = np.arange(40) % 2  # each item's nearest neighbour on the arc has the other label
    assert bilaf_diagnostics.on_class_border(points, alternating, items, k=2).all()


def test_class_border_ignores_the_item_itself() -> None:
    """With k = 1 the only neighbour looked at must be the nearest *other* item."""
    points = _arc(np.arange(10) * 0.01)
    flags = bilaf_diagnostics.on_class_border(points, np.arange(10) % 2, np.arange(10), k=1)
    assert flags.all()


def test_pseudo_class_purity_counts_items_whose_nearest_core_shares_their_label() -> None:
    points, labels = _blobs(np.random.default_rng(2))
    assert bilaf_diagnostics.pseudo_class_purity(points, labels, np.array([0, 40])) == 1.0
    relabelled = labels.copy()
    relabelled[:10] = 1  # 10 of blob 0's 40 items now disagree with its core, item 20
    purity = bilaf_diagnostics.pseudo_class_purity(points, relabelled, np.array([20, 40]))
    assert purity == pytest.approx(70 / 80)


def test_summary_marks_short_cells_and_missing_ones() -> None:
    frame = pd.DataFrame(
        {
            "method": ["A"] * 4 + ["B"],
            "budget_pct": [1, 1, 1, 2, 1],
            "seed": [0, 1, 2, 0, 0],
            "linear_probe": [80.0, 82.0, 84.0, 90.0, 70.0],
        }
    )
    table = compare_methods.summarise(frame, "linear_probe")
    assert table.loc["A", "1 %"] == "82.0 ± 2.0"
    assert table.loc["A", "2 %"] == "90.0 (n=1)"
    assert table.loc["B", "1 %"] == "70.0 (n=1)"
    assert table.loc["B", "2 %"] == "–"


def test_report_redraws_tables_and_plot_from_a_partial_csv(tmp_path: Path) -> None:
    rows = [
        {
            "method": method,
            "budget_pct": 1.0,
            "seed": seed,
            "pool_train": 100,
            "pool_test": 50,
            "device": "CPU (2 cores)",
            "linear_probe": 70.0 + seed,
            "knn": 60.0 + seed,
            "finetune": 75.0 if method == "Random" and seed == 0 else np.nan,
            "finetune_recipe": "12 epochs at 96 px, batch 32, lr 0.05",
        }
        for method in ("Random", "ActiveFT")
        for seed in (0, 1)
    ]
    csv = tmp_path / "grid.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    compare_methods.main(["--report", str(csv), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "compare_methods.md").read_text()
    assert "pool: 100 train / 50 test items, seeds [0, 1], on CPU (2 cores)" in text
    assert "### finetune" in text and "75.0 (n=1)" in text
    assert "| ActiveFT | 70.5 ± 0.7" in text.replace("  ", " ").replace("  ", " ").replace("  ", " ")
    assert (tmp_path / "out" / "compare_methods.png").stat().st_size > 10_000


rounds_benchmark = _load("rounds")


def _classes(rng: np.random.Generator, n_items: int, n_classes: int = 4) -> rounds_benchmark.Split:
    """Overlapping Gaussian classes in 16-d, unit rows (like embeddings): rounds have borders to find."""
    labels = rng.integers(0, n_classes, n_items)
    centres = rng.standard_normal((n_classes, 16)).astype(np.float32)
    points = centres[labels] + 0.8 * rng.standard_normal((n_items, 16)).astype(np.float32)
    return rounds_benchmark.Split(bilaf_diagnostics.unit_rows(points), labels)


def test_rounds_never_repick_and_the_report_covers_both_pools(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train, test = _classes(rng, 400), _classes(rng, 200)
    args = rounds_benchmark.parse_args(
        [
            "--round-budgets",
            "12",
            "12",
            "24",
            "--growth",
            "0.5",
            "1",
            "--growth-budget",
            "12",
            "--seeds",
            "0",
            "--first",
            "ActiveFT",
            "--later",
            "label-aware BiLAF",
            "margin",
            "--one-shot",
            "Random",
            "--growth-later",
            "random",
            "--out",
            str(tmp_path),
        ]
    )
    record = rounds_benchmark.Recorder(tmp_path)
    rounds_benchmark.fixed_pool(args, train, test, record)  # asserts that no round re-picks a labeled item
    rounds_benchmark.growing_pool(args, train, test, record)
    frame = pd.read_csv(tmp_path / "rounds.csv")
    fixed = frame[frame["experiment"] == "fixed"]
    assert sorted(fixed["total"].unique()) == [24, 48]
    assert set(fixed["method"]) == {"Random", "ActiveFT → label-aware BiLAF", "ActiveFT → margin"}
    growing = frame[frame["experiment"] == "growing"]
    assert growing["pool"].tolist() == [200, 400] and growing["total"].tolist() == [12, 24]
    assert frame[["linear_probe", "knn"]].notna().all().all()
    text = rounds_benchmark.write_report(frame, tmp_path)
    assert "### Fixed pool: linear probe" in text and "### Growing pool: knn" in text
    assert "± 0.0" not in text  # one seed: no spread to show, rather than a spread of zero
    assert (tmp_path / "rounds.png").stat().st_size > 10_000
