"""Method comparison on real data: Random, k-means, k-center greedy, ActiveFT, BiLAF (repo and
default variants) at several budgets and seeds, scored by a linear probe and kNN on frozen
features of the held-out test split (the paper's Table 10 learners) and, for the methods named
by --finetune, by full finetuning of the backbone on the selected items.

    python benchmarks/compare_methods.py                       # full Fashion-MNIST (60k / 10k)
    python benchmarks/compare_methods.py --train-size 5000 --test-size 1000 --seeds 0   # quick
    python benchmarks/compare_methods.py --embeddings artifacts/embeddings --data data   # the pipeline's pool
    python benchmarks/compare_methods.py --finetune Random ActiveFT "BiLAF (default)" --jobs 8 --workers 6

Runs in three phases: every selection (GPU when present), the probes (``--jobs`` in parallel),
then finetuning, ordered seed by seed so that ``--finetune-seconds`` stops it with whole seeds
done. The CSV is rewritten after every run, so an interrupted run keeps what it finished, and
``--report CSV`` redraws the tables and plot from it.
Prints a mean ± std table, writes it (markdown and CSV) and a plot under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bilaf import defaults  # noqa: E402
from bilaf.features import (  # noqa: E402
    DEFAULT_BACKBONE,
    create_classifier,
    embed_pool,
    input_normalisation,
    load_embeddings,
    read_manifest,
    resolve_device,
    sync_pool,
)
from bilaf.selection import default_n_cores, select  # noqa: E402
from bilaf.training import (  # noqa: E402
    FinetuneConfig,
    eval_transform,
    evaluate_finetuned,
    finetune,
    knn_probe,
    linear_probe,
)

# label -> (registered method, variant)
METHODS = {
    "Random": ("random", "default"),
    "K-Means": ("kmeans", "default"),
    "K-Center (FDS)": ("kcenter", "default"),
    "ActiveFT": ("activeft", "default"),
    "BiLAF (repo)": ("bilaf", "repo"),
    "BiLAF (default)": ("bilaf", "default"),
}
LEARNERS = ("linear_probe", "knn", "finetune")


@dataclass
class Pool:
    """Frozen features, labels and image paths of the train pool and the test split."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    train_paths: list[str] | None
    test_paths: list[str] | None

    @property
    def num_classes(self) -> int:
        return int(max(self.train_y.max(), self.test_y.max())) + 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="fashion-mnist")
    parser.add_argument(
        "--source-root",
        type=Path,
        default=None,
        help="folder holding the source's files (default: where the source usually lives)",
    )
    parser.add_argument("--train-size", type=int, default=None, help="train pool size (default: all)")
    parser.add_argument("--test-size", type=int, default=None, help="test split size (default: all)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1, 2, 5], help="percent of the pool")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--image-size", type=int, default=128, help="embedding input size")
    parser.add_argument(
        "--embeddings",
        type=Path,
        default=None,
        help="use these embeddings (e.g. the pipeline's artifacts/embeddings) instead of a new pool",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the pool folder of --embeddings (its manifest gives the images to finetune on)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="probe fits run in parallel")
    parser.add_argument(
        "--finetune",
        nargs="*",
        default=[],
        choices=list(METHODS),
        help="methods whose selections are also used to finetune the backbone (slow: GPU advised)",
    )
    parser.add_argument("--finetune-epochs", type=int, default=defaults.FINETUNE_EPOCHS)
    parser.add_argument("--finetune-image-size", type=int, default=defaults.FINETUNE_IMAGE_SIZE)
    parser.add_argument("--finetune-batch-size", type=int, default=defaults.FINETUNE_BATCH_SIZE)
    parser.add_argument("--finetune-lr", type=float, default=defaults.FINETUNE_LR)
    parser.add_argument(
        "--finetune-seconds",
        type=float,
        default=None,
        help="start no new finetuning run after this many seconds of finetuning",
    )
    parser.add_argument("--workers", type=int, default=0, help="image loader workers for finetuning")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "compare")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "full")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="only redraw the tables and plot from this earlier compare_methods.csv",
    )
    args = parser.parse_args(argv)
    if args.finetune and args.embeddings is not None and args.data is None:
        parser.error("--finetune with --embeddings needs --data (the pool folder with manifest.csv)")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    return args


def load_pool(args: argparse.Namespace) -> Pool:
    out_dir, data_dir = args.embeddings, args.data
    if out_dir is None:
        tag = f"{args.source}-{args.train_size or 'all'}-{args.test_size or 'all'}"
        data_dir = args.workdir / tag / "data"
        sync_pool(
            data_dir, args.source, root=args.source_root, train_size=args.train_size, test_size=args.test_size, seed=0
        )
        out_dir = args.workdir / tag / f"embeddings-{args.image_size}"
        embed_pool(data_dir, out_dir, image_size=args.image_size, cache_dir=args.workdir / "embedding_cache")
    embeddings = load_embeddings(out_dir)
    train, test = embeddings.subset("train"), embeddings.subset("test")
    train_paths = test_paths = None
    if data_dir is not None:
        manifest = read_manifest(data_dir)
        path_of = dict(zip(manifest["id"], manifest["path"]))
        train_paths, test_paths = ([str(Path(data_dir) / path_of[i]) for i in split.ids] for split in (train, test))
    return Pool(
        train.features.astype(np.float32, copy=False),
        np.asarray(train.labels),
        test.features.astype(np.float32, copy=False),
        np.asarray(test.labels),
        train_paths,
        test_paths,
    )


def select_all(
    args: argparse.Namespace, pool: Pool, save: Callable[[list[dict]], None]
) -> tuple[list[dict], list[np.ndarray]]:
    """Every (budget, method, seed) selection, with diagnostics of what it picked.

    Nothing else runs meanwhile: the probes' BLAS thread limit is process-wide, and a selection
    whose thread count changed half-way can end on other picks (float sums in another order)."""
    rows: list[dict] = []
    picks: list[np.ndarray] = []
    for percent in args.budgets:
        budget = int(len(pool.train_x) * percent / 100)
        for label in args.methods:
            method, variant = METHODS[label]
            for seed in args.seeds:
                started = time.perf_counter()
                result = select(pool.train_x, budget, method=method, seed=seed, variant=variant)
                seconds = time.perf_counter() - started
                picked = np.unique(np.asarray(result.indices))
                shares = np.bincount(pool.train_y[np.asarray(result.indices)], minlength=pool.num_classes) / budget
                row = {
                    "method": label,
                    "budget_pct": percent,
                    "budget": budget,
                    "seed": seed,
                    "pool_train": len(pool.train_x),
                    "pool_test": len(pool.test_x),
                    "device": args.device_name,
                    "selected_unique": len(picked),
                    "select_seconds": round(seconds, 2),
                    "classes_covered": int(np.unique(pool.train_y[picked]).size),
                    "min_class_share": round(shares.min(), 4),
                    "max_class_share": round(shares.max(), 4),
                }
                if method == "bilaf":
                    row["n_cores"] = default_n_cores(budget)
                    row["boundary_label_differs_from_core"] = round(_boundary_label_mismatch(result, pool.train_y), 4)
                print(json.dumps(row), flush=True)
                rows.append(row)
                picks.append(picked)
                save(rows)
    return rows, picks


def probe_all(
    args: argparse.Namespace, pool: Pool, rows: list[dict], picks: list[np.ndarray], save: Callable[[list[dict]], None]
) -> None:
    """Linear probe and kNN of every selection, ``args.jobs`` at a time on CPU threads (their heavy
    work is BLAS, which releases the GIL)."""
    with ThreadPoolExecutor(max_workers=args.jobs) as executor:
        for row, (linear, knn) in zip(rows, executor.map(partial(_probe, pool), picks)):
            row["linear_probe"], row["knn"] = linear, knn
            print(json.dumps({k: row[k] for k in ("method", "budget_pct", "seed", "linear_probe", "knn")}), flush=True)
            save(rows)


def _boundary_label_mismatch(result, labels: np.ndarray) -> float:
    """Share of boundary picks whose ground-truth label differs from their cluster core's label:
    high means the pseudo-class clusters do not line up with the classes."""
    records = result.to_records()
    core_label = {r["cluster"]: labels[r["index"]] for r in records if r["role"] == "core"}
    boundary = [labels[r["index"]] != core_label[r["cluster"]] for r in records if r["role"] == "boundary"]
    return float(np.mean(boundary)) if boundary else float("nan")


def _probe(pool: Pool, picked: np.ndarray) -> tuple[float, float]:
    x, y = pool.train_x[picked], pool.train_y[picked]
    return (
        linear_probe(x, y, pool.test_x, pool.test_y, num_classes=pool.num_classes).accuracy * 100,
        knn_probe(x, y, pool.test_x, pool.test_y, num_classes=pool.num_classes).accuracy * 100,
    )


def finetune_all(
    args: argparse.Namespace, pool: Pool, rows: list[dict], picks: list[np.ndarray], save: Callable[[list[dict]], None]
) -> None:
    """Phase 3: finetune the backbone on each selection of the ``--finetune`` methods and score it
    on the test split; seed by seed, so a time limit leaves whole seeds done."""
    if not args.finetune:
        return
    if pool.train_paths is None:
        raise ValueError("finetuning needs the pool's images: pass --data with --embeddings")
    mean, std = input_normalisation(DEFAULT_BACKBONE)
    test_transform = eval_transform(args.finetune_image_size, mean, std)
    order = sorted(
        (i for i, row in enumerate(rows) if row["method"] in args.finetune),
        key=lambda i: (rows[i]["seed"], rows[i]["budget_pct"], args.finetune.index(rows[i]["method"])),
    )
    spent = 0.0
    for done, i in enumerate(order):
        if args.finetune_seconds is not None and spent >= args.finetune_seconds:
            print(f"finetuning stopped after {spent:.0f} s: {done} of {len(order)} runs done", flush=True)
            break
        row, picked = rows[i], picks[i]
        started = time.perf_counter()
        config = FinetuneConfig(
            epochs=args.finetune_epochs,
            image_size=args.finetune_image_size,
            batch_size=args.finetune_batch_size,
            learning_rate=args.finetune_lr,
            warmup_epochs=min(2.0, args.finetune_epochs - 1),
            seed=row["seed"],
            num_workers=args.workers,
        )
        torch.manual_seed(row["seed"])  # the new head's initialisation
        model = create_classifier(DEFAULT_BACKBONE, num_classes=pool.num_classes)
        result = finetune(
            model,
            [pool.train_paths[j] for j in picked],
            pool.train_y[picked],
            mean=mean,
            std=std,
            config=config,
            progress=False,
        )
        metrics = evaluate_finetuned(
            result.model,
            pool.test_paths,
            pool.test_y,
            test_transform,
            num_classes=pool.num_classes,
            num_workers=args.workers,
            progress=False,
        )
        seconds = time.perf_counter() - started
        spent += seconds
        row["finetune"], row["finetune_seconds"] = metrics.accuracy * 100, round(seconds, 1)
        row["finetune_recipe"] = (
            f"{config.epochs} epochs at {config.image_size} px, batch {config.batch_size}, lr {config.learning_rate}"
        )
        print(
            json.dumps({k: row[k] for k in ("method", "budget_pct", "seed", "finetune", "finetune_seconds")}),
            flush=True,
        )
        save(rows)


def summarise(frame: pd.DataFrame, learner: str) -> pd.DataFrame:
    """mean ± std per method and budget; the run count is added where it falls short of the seeds."""
    scored = frame.dropna(subset=[learner])
    grouped = scored.groupby(["method", "budget_pct"], sort=False)[learner].agg(["mean", "std", "count"])
    full = frame["seed"].nunique()

    def cell(r: pd.Series) -> str:
        if r["count"] == 1:
            return f"{r['mean']:.1f}" + ("" if full == 1 else " (n=1)")
        text = f"{r['mean']:.1f} ± {r['std']:.1f}"
        return text if r["count"] == full else f"{text} (n={int(r['count'])})"

    table = grouped.apply(cell, axis=1)
    return table.unstack("budget_pct").fillna("–").rename(columns=lambda pct: f"{pct:g} %")


def plot(frame: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learners = [name for name in LEARNERS if name in frame and frame[name].notna().any()]
    budgets = sorted(frame["budget_pct"].unique())
    figure, axes = plt.subplots(1, len(learners), figsize=(6 * len(learners), 4.5), sharex=True, squeeze=False)
    for axis, learner in zip(axes[0], learners):
        for method, group in frame.dropna(subset=[learner]).groupby("method", sort=False):
            stats = group.groupby("budget_pct")[learner].agg(["mean", "std"]).fillna(0)
            axis.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=method)
        axis.set(
            xscale="log", xlabel="budget (% of the pool)", ylabel="test top-1 (%)", title=learner.replace("_", " ")
        )
        axis.set_xticks(budgets, [f"{v:g}" for v in budgets])
        axis.minorticks_off()
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, metadata={"Software": None})


def write_report(frame: pd.DataFrame, out: Path) -> str:
    """Tables (markdown) and plot of a finished or partial grid; returns the markdown."""
    first = frame.iloc[0]
    seeds = sorted(frame["seed"].unique().tolist())
    header = f"seeds {seeds}"
    if "pool_train" in frame:  # older CSVs lack the pool and device columns
        devices = ", ".join(
            f"{device} ({', '.join(group['method'].unique())})" if frame["device"].nunique() > 1 else str(device)
            for device, group in frame.groupby("device", sort=False)
        )
        header = f"pool: {first['pool_train']} train / {first['pool_test']} test items, {header}, on {devices}"
    report = [f"{header}\n"]
    if "finetune" in frame and frame["finetune"].notna().any():
        report.append(f"finetuning: {first['finetune_recipe']}\n")
    for learner in LEARNERS:
        if learner in frame and frame[learner].notna().any():
            table = summarise(frame, learner)
            report.append(f"### {learner.replace('_', ' ')} (test top-1 %, mean ± std)\n\n{table.to_markdown()}\n")
    text = "\n".join(report)
    (out / "compare_methods.md").write_text(text)
    plot(frame, out / "compare_methods.png")
    return text


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report is not None:
        print(write_report(pd.read_csv(args.report), args.out))
        return
    pool = load_pool(args)
    device = resolve_device()
    args.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(
        f"pool: {len(pool.train_x)} train, {len(pool.test_x)} test, d = {pool.train_x.shape[1]}; on {args.device_name}",
        flush=True,
    )

    def save(rows: list[dict]) -> None:
        pd.DataFrame(rows).to_csv(args.out / "compare_methods.csv", index=False)

    rows, picks = select_all(args, pool, save)
    probe_all(args, pool, rows, picks, save)
    finetune_all(args, pool, rows, picks, save)
    save(rows)
    print(write_report(pd.DataFrame(rows), args.out))


if __name__ == "__main__":
    main()
