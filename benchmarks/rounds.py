"""Annotation rounds against one-shot selection, on real data with labels revealed round by round.

Every round picks from the items neither labeled nor pending; its labels are then revealed from
the ground truth, and a linear probe and a kNN are trained on all labels so far and scored on the
test split (the paper's Table 10 learners).

* Fixed pool: a total of 1 % as 300 + 300 and of 2 % as 300 + 300 + 600 (round sizes scale with
  ``--round-budgets``), against the same totals in one shot (Random, ActiveFT with K = B, BiLAF).
  Round 1 runs ActiveFT (K = B) or one-shot BiLAF; the later rounds run anchored ActiveFT, the
  label-aware boundary stage (with and without coverage cores), margin sampling or random.
* Growing pool: the train pool grows 30k -> 45k -> 60k (``--growth``), 300 picks a round; the share
  of each round's picks that are new items, and the time to re-embed a growing pool against the
  number of new items (only new items are embedded).

    python benchmarks/rounds.py                                   # full Fashion-MNIST (60k / 10k)
    python benchmarks/rounds.py --embeddings artifacts/embeddings --round-budgets 50 50 100 \\
        --growth 0.5 0.75 1 --seeds 0                             # any embeddings folder with labels
    python benchmarks/rounds.py --report benchmarks/results/rounds/rounds.csv   # redraw only

The CSV is rewritten after every evaluation, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bilaf.features import embed_pool, load_embeddings, sync_pool  # noqa: E402
from bilaf.selection import select  # noqa: E402
from bilaf.training import knn_probe, linear_probe  # noqa: E402

# label -> (method, options) for round 1 (nothing known yet) and for the rounds after it.
FIRST_ROUND = {"ActiveFT": ("activeft", {}), "BiLAF": ("bilaf", {})}
LATER_ROUNDS = {
    "anchored ActiveFT": ("activeft", {}),
    "label-aware BiLAF": ("bilaf", {"n_cores": 0}),
    "label-aware BiLAF + cores": ("bilaf", {}),
    "margin": ("margin", {}),
    "random": ("random", {}),
}
ONE_SHOT = {"Random": ("random", {}), "ActiveFT": ("activeft", {}), "BiLAF": ("bilaf", {})}
LEARNERS = ("linear_probe", "knn")


@dataclass
class Split:
    features: np.ndarray
    labels: np.ndarray


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--embeddings",
        type=Path,
        default=REPO / ".cache" / "compare" / "fashion-mnist-all-all" / "embeddings-128",
        help="an embeddings folder with a labeled train and test split (made from the full "
        "Fashion-MNIST when this default is missing)",
    )
    parser.add_argument(
        "--round-budgets",
        type=int,
        nargs="+",
        default=[300, 300, 600],
        help="picks per round on the fixed pool; one-shot runs use the running totals",
    )
    parser.add_argument(
        "--growth",
        type=float,
        nargs="*",
        default=[0.5, 0.75, 1.0],
        help="pool fractions per round of the growing-pool experiment (empty: skip it)",
    )
    parser.add_argument("--growth-budget", type=int, default=300, help="picks per round on the growing pool")
    parser.add_argument("--growth-first", nargs="+", default=["ActiveFT"], choices=list(FIRST_ROUND))
    parser.add_argument(
        "--growth-later",
        nargs="+",
        default=["anchored ActiveFT", "label-aware BiLAF", "margin", "random"],
        choices=list(LATER_ROUNDS),
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--first", nargs="+", default=list(FIRST_ROUND), choices=list(FIRST_ROUND))
    parser.add_argument(
        "--later",
        nargs="+",
        default=[name for name in LATER_ROUNDS if name != "label-aware BiLAF + cores"],
        choices=list(LATER_ROUNDS),
        help="later-round strategies (default: all but the slow "
        "'label-aware BiLAF + cores', which its ActiveFT cores make slow)",
    )
    parser.add_argument("--one-shot", nargs="*", default=list(ONE_SHOT), choices=list(ONE_SHOT))
    parser.add_argument(
        "--embedding-growth",
        type=int,
        nargs="*",
        default=[2000, 3000, 4000],
        help="train sizes of the re-embedding timing (a fresh cache; empty: skip it)",
    )
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "rounds")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rounds")
    parser.add_argument("--report", type=Path, default=None, help="only redraw the tables from this rounds.csv")
    return parser.parse_args(argv)


def load_splits(path: Path) -> tuple[Split, Split]:
    """Train and test features with labels; items are ordered by id, as the pipeline selects."""
    if not (path / "features.npy").is_file():
        if path != parse_args([]).embeddings:
            raise ValueError(f"{path} holds no embeddings (features.npy)")
        data = path.parent / "data"
        sync_pool(data, "fashion-mnist", train_size=None, test_size=None)
        embed_pool(data, path, cache_dir=path.parent.parent / "embedding_cache")
    embeddings = load_embeddings(path)
    splits = []
    for name in ("train", "test"):
        part = embeddings.subset(name)
        order = np.argsort(part.ids)
        if (part.labels < 0).any():
            raise ValueError(f"{path}: the {name} split has unlabeled items; the benchmark reveals ground truth")
        splits.append(Split(np.ascontiguousarray(part.features[order], dtype=np.float32), part.labels[order]))
    return splits[0], splits[1]


def score(train: Split, test: Split, picked: np.ndarray) -> dict[str, float]:
    x, y = train.features[picked], train.labels[picked]
    classes = int(max(train.labels.max(), test.labels.max())) + 1
    shares = np.bincount(y, minlength=classes) / len(y)
    return {
        "linear_probe": linear_probe(x, y, test.features, test.labels, num_classes=classes).accuracy * 100,
        "knn": knn_probe(x, y, test.features, test.labels, num_classes=classes).accuracy * 100,
        "min_class_share": round(float(shares.min()), 4),
        "max_class_share": round(float(shares.max()), 4),
    }


def pick(
    features: np.ndarray, budget: int, method: str, options: dict, seed: int, labels: np.ndarray | None
) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    result = select(features, budget, method, seed=seed, labels=labels, **options)
    return np.asarray(result.indices), time.perf_counter() - started


def reveal(labels: np.ndarray | None, n_items: int, truth: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """Labels after annotators return ``picked`` (-1 = unlabeled)."""
    known = np.full(n_items, -1, dtype=np.int64) if labels is None else labels.copy()
    known[picked] = truth[picked]
    return known


class Recorder:
    """Rows of the grid, rewritten to CSV after each one."""

    def __init__(self, out: Path):
        self.path = out / "rounds.csv"
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        pd.DataFrame(self.rows).to_csv(self.path, index=False)


def fixed_pool(args: argparse.Namespace, train: Split, test: Split, record: Recorder) -> None:
    totals = np.cumsum(args.round_budgets)[1:]
    n = len(train.labels)
    for seed in args.seeds:
        for total in totals:
            for label in args.one_shot:
                method, options = ONE_SHOT[label]
                picked, seconds = pick(train.features, int(total), method, options, seed, None)
                record.add(
                    {
                        "experiment": "fixed",
                        "schedule": "one shot",
                        "method": label,
                        "seed": seed,
                        "round": 1,
                        "total": int(total),
                        "select_seconds": round(seconds, 1),
                        **score(train, test, picked),
                    }
                )
        for first in args.first:
            method, options = FIRST_ROUND[first]
            first_picks, first_seconds = pick(train.features, args.round_budgets[0], method, options, seed, None)
            for later in args.later:
                labels, picked_so_far, seconds = reveal(None, n, train.labels, first_picks), first_picks, first_seconds
                for number, budget in enumerate(args.round_budgets[1:], start=2):
                    method, options = LATER_ROUNDS[later]
                    new, spent = pick(train.features, budget, method, options, seed, labels)
                    assert not np.isin(new, picked_so_far).any(), "a round picked an item already labeled"
                    labels, picked_so_far, seconds = (
                        reveal(labels, n, train.labels, new),
                        np.concatenate([picked_so_far, new]),
                        seconds + spent,
                    )
                    record.add(
                        {
                            "experiment": "fixed",
                            "schedule": "rounds",
                            "method": f"{first} → {later}",
                            "seed": seed,
                            "round": number,
                            "total": len(picked_so_far),
                            "select_seconds": round(seconds, 1),
                            **score(train, test, picked_so_far),
                        }
                    )


def growing_pool(args: argparse.Namespace, train: Split, test: Split, record: Recorder) -> None:
    """Rounds on a pool that grows by ``args.growth`` fractions (arrival order fixed by seed 12345)."""
    arrival = np.random.default_rng(12345).permutation(len(train.labels))
    sizes = [int(round(fraction * len(arrival))) for fraction in args.growth]
    for seed in args.seeds:
        for first in args.growth_first:
            for later in args.growth_later:
                picked: np.ndarray = np.empty(0, dtype=np.int64)  # positions in `arrival`
                seconds = 0.0
                for number, size in enumerate(sizes, start=1):
                    pool = arrival[:size]
                    labels = None
                    if len(picked):
                        labels = np.full(size, -1, dtype=np.int64)
                        labels[picked] = train.labels[pool[picked]]
                    method, options = FIRST_ROUND[first] if number == 1 else LATER_ROUNDS[later]
                    new, spent = pick(train.features[pool], args.growth_budget, method, options, seed, labels)
                    seconds += spent
                    previous = sizes[number - 2] if number > 1 else 0
                    new_share = float(np.mean(new >= previous)) if number > 1 else float("nan")
                    picked = np.concatenate([picked, new])
                    record.add(
                        {
                            "experiment": "growing",
                            "schedule": "rounds",
                            "method": f"{first} → {later}",
                            "seed": seed,
                            "round": number,
                            "total": len(picked),
                            "pool": size,
                            "new_items_share_of_pool": round((size - previous) / size, 4) if number > 1 else None,
                            "new_items_share_of_picks": new_share,
                            "select_seconds": round(seconds, 1),
                            **score(train, test, arrival[picked]),
                        }
                    )


def embedding_growth(args: argparse.Namespace) -> list[dict]:
    """Embed a pool that grows through ``args.embedding_growth`` train sizes, fresh cache each time
    the benchmark runs: the time each step takes against the items it had to compute."""
    work = args.workdir / "embedding-growth"
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    for size in args.embedding_growth:
        sync_pool(work / "data", "fashion-mnist", train_size=size, test_size=500)
        started = time.perf_counter()
        info = embed_pool(work / "data", work / "embeddings", cache_dir=work / "cache")
        seconds = time.perf_counter() - started
        rows.append(
            {
                "pool_items": info.num_items,
                "computed": info.computed,
                "reused": info.reused,
                "seconds": round(seconds, 1),
                "computed_per_second": round(info.computed / seconds, 1) if info.computed else None,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summarise(frame: pd.DataFrame, learner: str) -> pd.DataFrame:
    grouped = frame.groupby(["method", "total"], sort=False)[learner].agg(["mean", "std", "count"])
    cells = grouped.apply(
        lambda r: (
            f"{r['mean']:.1f}"
            + ("" if r["count"] < 2 else f" ± {r['std']:.1f}")
            + ("" if r["count"] == frame["seed"].nunique() else f" (n={int(r['count'])})")
        ),
        axis=1,
    )
    return cells.unstack("total").fillna("–")


def write_report(frame: pd.DataFrame, out: Path, embedding_rows: list[dict] | None = None) -> str:
    parts = [f"seeds {sorted(frame['seed'].unique().tolist())}\n"]
    fixed = frame[frame["experiment"] == "fixed"]
    if len(fixed):
        for learner in LEARNERS:
            parts.append(
                f"### Fixed pool: {learner.replace('_', ' ')} (test top-1 %, mean ± std) by total labels\n\n"
                f"{summarise(fixed, learner).to_markdown()}\n"
            )
        shares = fixed.groupby(["method", "total"], sort=False)[["min_class_share", "max_class_share"]].mean()
        shares = shares.round(3).unstack("total")
        shares.columns = [f"{stat.removesuffix('_class_share')} at {total}" for stat, total in shares.columns]
        parts.append(
            "### Fixed pool: smallest and largest class share of the labels (mean over seeds)\n\n"
            f"{shares.to_markdown()}\n"
        )
    growing = frame[frame["experiment"] == "growing"]
    if len(growing):
        for learner in LEARNERS:
            parts.append(
                f"### Growing pool: {learner.replace('_', ' ')} by round (pool "
                f"{', '.join(str(int(p)) for p in sorted(growing['pool'].unique()))})\n\n"
                f"{summarise(growing, learner).to_markdown()}\n"
            )
        shares = (
            growing[growing["round"] > 1]
            .groupby(["method", "round"], sort=False)[["new_items_share_of_pool", "new_items_share_of_picks"]]
            .mean()
            .round(3)
        )
        parts.append(f"### Growing pool: share of each round's picks that are new items\n\n{shares.to_markdown()}\n")
    if embedding_rows:
        parts.append(
            "### Re-embedding a growing pool (fresh cache)\n\n"
            f"{pd.DataFrame(embedding_rows).to_markdown(index=False)}\n"
        )
    text = "\n".join(parts)
    (out / "rounds.md").write_text(text)
    _plot(frame, out / "rounds.png")
    return text


def _plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experiments = [name for name in ("fixed", "growing") if (frame["experiment"] == name).any()]
    figure, axes = plt.subplots(len(experiments), 2, figsize=(13, 4.5 * len(experiments)), squeeze=False)
    for row, experiment in zip(axes, experiments):
        part = frame[frame["experiment"] == experiment]
        for axis, learner in zip(row, LEARNERS):
            for method, group in part.groupby("method", sort=False):
                stats = group.groupby("total")[learner].agg(["mean", "std"]).fillna(0)
                style = "--" if group["schedule"].iloc[0] == "one shot" else "-"
                axis.errorbar(
                    stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, linestyle=style, label=method
                )
            axis.set(
                xlabel="labels so far", ylabel="test top-1 (%)", title=f"{experiment} pool: {learner.replace('_', ' ')}"
            )
            axis.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report is not None:
        timing = args.report.with_name("embedding_growth.csv")
        embedding_rows = pd.read_csv(timing).to_dict("records") if timing.is_file() else None
        print(write_report(pd.read_csv(args.report), args.out, embedding_rows))
        return
    train, test = load_splits(args.embeddings)
    print(f"pool: {len(train.labels)} train, {len(test.labels)} test, d = {train.features.shape[1]}", flush=True)
    record = Recorder(args.out)
    embedding_rows = embedding_growth(args) if args.embedding_growth else []
    if embedding_rows:
        pd.DataFrame(embedding_rows).to_csv(args.out / "embedding_growth.csv", index=False)
    fixed_pool(args, train, test, record)
    if args.growth:
        growing_pool(args, train, test, record)
    print(write_report(pd.DataFrame(record.rows), args.out, embedding_rows))


if __name__ == "__main__":
    main()
