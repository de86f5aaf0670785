"""Why BiLAF does or does not beat ActiveFT on a given embedding: three diagnostics on one pool.

1. Core-fraction sweep: BiLAF with K = f * B cores for several f, scored by a linear probe and kNN
   on the test split. At f = 1 every pick is a core (ActiveFT with K = B), so the sweep shows what
   a boundary pick is worth against one more core.
2. Pseudo-class purity: the share of pool items whose label is the label of their nearest core.
   BiLAF draws its boundaries between these pseudo-classes; impure ones put boundaries inside classes.
3. Class-border share: the share of picks that have an item of another class among their k nearest
   pool neighbours, for boundary picks, core picks, random picks and the pool itself. Boundary
   picks that land on class borders more often than random ones do what the paper intends.

    python benchmarks/bilaf_diagnostics.py --embeddings .cache/compare/fashion-mnist-all-all/embeddings-128

Prints a table per budget (mean over seeds), writes it (markdown and CSV) and a plot under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bilaf.features import load_embeddings  # noqa: E402
from bilaf.selection import select  # noqa: E402
from bilaf.training import knn_probe, linear_probe  # noqa: E402

POOL_SAMPLE = 5000  # pool items whose neighbourhoods give the base rate of class-border items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", type=Path, required=True, help="an embeddings folder (features.npy, index.csv)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0], help="percent of the train pool")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--core-fractions",
        type=float,
        nargs="+",
        default=[0.25, 0.5, 0.75, 1.0],
        help="K / B values to try; 1 means every pick is a core",
    )
    parser.add_argument("--variant", default="default", choices=["default", "repo"])
    parser.add_argument("--neighbours", type=int, default=10, help="k of the class-border test")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bilaf_diagnostics")
    args = parser.parse_args(argv)
    if any(not 0 < f <= 1 for f in args.core_fractions):
        parser.error("--core-fractions must lie in (0, 1]")
    if args.neighbours < 1:
        parser.error("--neighbours must be >= 1")
    return args


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def on_class_border(unit_pool: np.ndarray, labels: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """For each item, whether one of its k nearest other pool items (cosine) has another label."""
    pool = torch.from_numpy(unit_pool)
    flags = []
    for chunk in np.array_split(items, max(1, math.ceil(len(items) / 1024))):
        similarity = torch.from_numpy(unit_pool[chunk]) @ pool.T
        similarity[torch.arange(len(chunk)), torch.tensor(chunk)] = -torch.inf
        neighbours = similarity.topk(k, dim=1).indices.numpy()
        flags.append((labels[neighbours] != labels[chunk][:, None]).any(axis=1))
    return np.concatenate(flags)


def pseudo_class_purity(unit_pool: np.ndarray, labels: np.ndarray, cores: np.ndarray) -> float:
    """Share of pool items whose nearest core (cosine) carries their label."""
    core_vectors = torch.from_numpy(unit_pool[cores])
    nearest = torch.cat(
        [(torch.from_numpy(block) @ core_vectors.T).argmax(dim=1) for block in np.array_split(unit_pool, 30)]
    ).numpy()
    return float(np.mean(labels == labels[cores][nearest]))


def run(args: argparse.Namespace) -> pd.DataFrame:
    embeddings = load_embeddings(args.embeddings)
    train, test = embeddings.subset("train"), embeddings.subset("test")
    train_x, train_y = train.features.astype(np.float32, copy=False), np.asarray(train.labels)
    test_x, test_y = test.features.astype(np.float32, copy=False), np.asarray(test.labels)
    unit_pool = unit_rows(train_x)
    sample = np.random.default_rng(0).choice(len(train_x), min(POOL_SAMPLE, len(train_x)), replace=False)
    pool_border = float(on_class_border(unit_pool, train_y, sample, args.neighbours).mean())
    print(
        f"pool: {len(train_x)} train, {len(test_x)} test; class-border share of the pool {pool_border:.3f}", flush=True
    )
    rows = []
    for percent in args.budgets:
        budget = int(len(train_x) * percent / 100)
        for seed in args.seeds:
            random_picks = np.asarray(select(train_x, budget, method="random", seed=seed).indices)
            random_border = float(on_class_border(unit_pool, train_y, random_picks, args.neighbours).mean())
            for fraction in args.core_fractions:
                n_cores = max(2, math.ceil(fraction * budget))
                started = time.perf_counter()
                if n_cores >= budget:
                    result = select(train_x, budget, method="activeft", seed=seed)
                else:
                    result = select(train_x, budget, method="bilaf", n_cores=n_cores, seed=seed, variant=args.variant)
                seconds = time.perf_counter() - started
                records = result.to_records()
                picked = np.unique(np.asarray(result.indices))
                cores = np.array([r["index"] for r in records if r["role"] != "boundary"])
                boundary = np.array([r["index"] for r in records if r["role"] == "boundary"], dtype=int)
                row = {
                    "budget_pct": percent,
                    "budget": budget,
                    "seed": seed,
                    "core_fraction": fraction,
                    "n_cores": len(cores),
                    "select_seconds": round(seconds, 1),
                    "linear_probe": linear_probe(train_x[picked], train_y[picked], test_x, test_y).accuracy * 100,
                    "knn": knn_probe(train_x[picked], train_y[picked], test_x, test_y).accuracy * 100,
                    "pseudo_class_purity": pseudo_class_purity(unit_pool, train_y, cores),
                    "border_share_cores": float(on_class_border(unit_pool, train_y, cores, args.neighbours).mean()),
                    "border_share_boundary": (
                        float(on_class_border(unit_pool, train_y, boundary, args.neighbours).mean())
                        if len(boundary)
                        else float("nan")
                    ),
                    "border_share_random": random_border,
                    "border_share_pool": pool_border,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return pd.DataFrame(rows)


def report(frame: pd.DataFrame, out: Path, neighbours: int) -> str:
    columns = [
        "n_cores",
        "linear_probe",
        "knn",
        "pseudo_class_purity",
        "border_share_cores",
        "border_share_boundary",
        "border_share_random",
    ]
    parts = [
        f"class border: another class among an item's {neighbours} nearest pool items; "
        f"pool base rate {frame['border_share_pool'].iloc[0]:.3f}\n"
    ]
    for percent, group in frame.groupby("budget_pct"):
        mean = group.groupby("core_fraction")[columns].mean()
        std = group.groupby("core_fraction")[["linear_probe", "knn"]].std().fillna(0)
        table = pd.DataFrame(
            {
                "K": mean["n_cores"].round().astype(int),
                "linear probe": [f"{m:.1f} ± {s:.1f}" for m, s in zip(mean["linear_probe"], std["linear_probe"])],
                "kNN": [f"{m:.1f} ± {s:.1f}" for m, s in zip(mean["knn"], std["knn"])],
                "pseudo-class purity": mean["pseudo_class_purity"].round(3),
                "border share: cores": mean["border_share_cores"].round(3),
                "border share: boundary picks": mean["border_share_boundary"].round(3),
                "border share: random picks": mean["border_share_random"].round(3),
            },
            index=mean.index.rename("K / B"),
        )
        parts.append(
            f"### budget {percent:g} % (B = {group['budget'].iloc[0]}), seeds "
            f"{sorted(group['seed'].unique().tolist())}\n\n{table.to_markdown()}\n"
        )
    text = "\n".join(parts)
    (out / "bilaf_diagnostics.md").write_text(text)
    _plot(frame, out / "bilaf_diagnostics.png")
    return text


def _plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for percent, group in frame.groupby("budget_pct"):
        stats = group.groupby("core_fraction")[["linear_probe", "knn"]].agg(["mean", "std"]).fillna(0)
        for axis, learner in zip(axes, ("linear_probe", "knn")):
            axis.errorbar(
                stats.index,
                stats[(learner, "mean")],
                yerr=stats[(learner, "std")],
                marker="o",
                capsize=3,
                label=f"budget {percent:g} %",
            )
    for axis, learner in zip(axes, ("linear probe", "kNN")):
        axis.set(xlabel="K / B (1 = all picks are cores: ActiveFT)", ylabel="test top-1 (%)", title=learner)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    frame = run(args)
    frame.to_csv(args.out / "bilaf_diagnostics.csv", index=False)
    print(report(frame, args.out, args.neighbours))


if __name__ == "__main__":
    main()
