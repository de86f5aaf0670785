"""Does a selection come out the same under different torch thread counts?

Runs one method, budget and seed once per thread count on the same embeddings and prints, per run,
how many picks differ from the first run's and what the picks score (linear probe and kNN on the
test split). Iterative methods such as ActiveFT (300 Adam steps) can amplify float rounding, which
depends on how sums are split across threads.

    python benchmarks/selection_reproducibility.py --embeddings .cache/compare/fashion-mnist-all-all/embeddings-128
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bilaf.features import load_embeddings  # noqa: E402
from bilaf.selection import list_methods, select  # noqa: E402
from bilaf.training import knn_probe, linear_probe  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", type=Path, required=True, help="an embeddings folder (features.npy, index.csv)")
    parser.add_argument("--method", default="activeft", choices=list_methods())
    parser.add_argument("--budget-pct", type=float, default=1.0, help="percent of the train pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.threads):
        parser.error("--threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    embeddings = load_embeddings(args.embeddings)
    train, test = embeddings.subset("train"), embeddings.subset("test")
    train_x, train_y = train.features.astype(np.float32, copy=False), np.asarray(train.labels)
    test_x, test_y = test.features.astype(np.float32, copy=False), np.asarray(test.labels)
    budget = int(len(train_x) * args.budget_pct / 100)
    print(
        f"## {args.method}, B = {budget} of {len(train_x)}, seed {args.seed}, "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    print("| torch threads | select s | picks differing from the first run | linear probe | kNN |")
    print("|---|---|---|---|---|")
    first: set[int] | None = None
    for threads in args.threads:
        torch.set_num_threads(threads)
        started = time.perf_counter()
        picked = np.unique(np.asarray(select(train_x, budget, method=args.method, seed=args.seed).indices))
        seconds = time.perf_counter() - started
        first = set(picked.tolist()) if first is None else first
        differing = len(first - set(picked.tolist()))
        linear = linear_probe(train_x[picked], train_y[picked], test_x, test_y).accuracy * 100
        knn = knn_probe(train_x[picked], train_y[picked], test_x, test_y).accuracy * 100
        print(f"| {threads} | {seconds:.1f} | {differing} of {len(picked)} | {linear:.2f} | {knn:.2f} |", flush=True)


if __name__ == "__main__":
    main()
