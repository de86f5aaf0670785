"""Method comparison on real data: Random, k-means, k-center greedy, ActiveFT, BiLAF (repo and
default variants) at several budgets and seeds, scored by a linear probe and kNN on frozen
features of the held-out test split (the paper's Table 10 learners).

    python benchmarks/compare_methods.py                       # full Fashion-MNIST (60k / 10k)
    python benchmarks/compare_methods.py --train-size 5000 --test-size 1000 --seeds 0   # quick
    python benchmarks/compare_methods.py --embeddings artifacts/embeddings   # the pipeline's pool

Prints a mean ± std table, writes it (markdown and CSV) and a plot under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dagster_project.features import embed_pool, load_embeddings, prepare_pool  # noqa: E402
from dagster_project.selection import default_n_cores, select  # noqa: E402
from dagster_project.training import knn_probe, linear_probe  # noqa: E402

# label -> (registered method, variant)
METHODS = {
    "Random": ("random", "default"),
    "K-Means": ("kmeans", "default"),
    "K-Center (FDS)": ("kcenter", "default"),
    "ActiveFT": ("activeft", "default"),
    "BiLAF (repo)": ("bilaf", "repo"),
    "BiLAF (default)": ("bilaf", "default"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="fashion-mnist")
    parser.add_argument("--train-size", type=int, default=None, help="train pool size (default: all)")
    parser.add_argument("--test-size", type=int, default=None, help="test split size (default: all)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1, 2, 5], help="percent of the pool")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--embeddings", type=Path, default=None,
                        help="use these embeddings (e.g. the pipeline's artifacts/embeddings) instead of a new pool")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "compare")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return parser.parse_args()


def load_pool(args: argparse.Namespace):
    out_dir = args.embeddings
    if out_dir is None:
        tag = f"{args.source}-{args.train_size or 'all'}-{args.test_size or 'all'}"
        data_dir = args.workdir / tag / "data"
        prepare_pool(args.source, data_dir, train_size=args.train_size, test_size=args.test_size, seed=0)
        out_dir = args.workdir / tag / f"embeddings-{args.image_size}"
        embed_pool(data_dir, out_dir, image_size=args.image_size, cache_dir=args.workdir / "embedding_cache")
    embeddings = load_embeddings(out_dir)
    splits = np.asarray(embeddings.splits)
    features = np.asarray(embeddings.features, dtype=np.float32)
    labels = np.asarray(embeddings.labels)
    train, test = splits == "train", splits == "test"
    return features[train], labels[train], features[test], labels[test]


def run_grid(args: argparse.Namespace, train_x, train_y, test_x, test_y) -> pd.DataFrame:
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    rows = []
    for percent in args.budgets:
        budget = int(len(train_x) * percent / 100)
        for label in args.methods:
            method, variant = METHODS[label]
            for seed in args.seeds:
                started = time.perf_counter()
                result = select(train_x, budget, method=method, seed=seed, variant=variant)
                seconds = time.perf_counter() - started
                picked = np.unique(np.asarray(result.indices))
                row = {"method": label, "budget_pct": percent, "budget": budget, "seed": seed,
                       "selected_unique": len(picked), "select_seconds": round(seconds, 2),
                       "classes_covered": int(np.unique(train_y[picked]).size),
                       "linear_probe": linear_probe(train_x[picked], train_y[picked], test_x, test_y,
                                                    num_classes=n_classes).accuracy * 100,
                       "knn": knn_probe(train_x[picked], train_y[picked], test_x, test_y,
                                        num_classes=n_classes).accuracy * 100}
                shares = np.bincount(train_y[np.asarray(result.indices)], minlength=n_classes) / budget
                row["min_class_share"], row["max_class_share"] = round(shares.min(), 4), round(shares.max(), 4)
                if method == "bilaf":
                    row["n_cores"] = default_n_cores(budget)
                    row["boundary_label_differs_from_core"] = round(_boundary_label_mismatch(result, train_y), 4)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return pd.DataFrame(rows)


def _boundary_label_mismatch(result, labels: np.ndarray) -> float:
    """Share of boundary picks whose ground-truth label differs from their cluster core's label:
    high means the pseudo-class clusters do not line up with the classes."""
    records = result.to_records()
    core_label = {r["cluster"]: labels[r["index"]] for r in records if r["role"] == "core"}
    boundary = [labels[r["index"]] != core_label[r["cluster"]] for r in records if r["role"] == "boundary"]
    return float(np.mean(boundary)) if boundary else float("nan")


def summarise(frame: pd.DataFrame, learner: str) -> pd.DataFrame:
    grouped = frame.groupby(["method", "budget_pct"], sort=False)[learner].agg(["mean", "std"])
    table = grouped.apply(lambda r: f"{r['mean']:.1f} ± {0 if np.isnan(r['std']) else r['std']:.1f}", axis=1)
    return table.unstack("budget_pct").rename(columns=lambda pct: f"{pct:g} %")


def plot(frame: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for axis, learner in zip(axes, ("linear_probe", "knn")):
        for method, group in frame.groupby("method", sort=False):
            stats = group.groupby("budget_pct")[learner].agg(["mean", "std"]).fillna(0)
            axis.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=method)
        axis.set(xscale="log", xlabel="budget (% of the pool)", ylabel="test top-1 (%)",
                 title=learner.replace("_", " "))
        axis.set_xticks(sorted(frame["budget_pct"].unique()), [f"{v:g}" for v in sorted(frame["budget_pct"].unique())])
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, metadata={"Software": None})


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train_x, train_y, test_x, test_y = load_pool(args)
    print(f"pool: {len(train_x)} train, {len(test_x)} test, d = {train_x.shape[1]}", flush=True)
    frame = run_grid(args, train_x, train_y, test_x, test_y)
    frame.to_csv(args.out / "compare_methods.csv", index=False)
    report = [f"pool: {len(train_x)} train / {len(test_x)} test items, seeds {args.seeds}\n"]
    for learner in ("linear_probe", "knn"):
        table = summarise(frame, learner)
        report.append(f"### {learner.replace('_', ' ')} (test top-1 %, mean ± std)\n\n{table.to_markdown()}\n")
    text = "\n".join(report)
    (args.out / "compare_methods.md").write_text(text)
    plot(frame, args.out / "compare_methods.png")
    print(text)


if __name__ == "__main__":
    main()
