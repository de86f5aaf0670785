"""`bilaf select`: pick the items to annotate from a feature matrix (.npy, or .npz `features`)."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from dagster_project import defaults
from dagster_project.selection import CORE_METHODS, VARIANTS, list_methods, select
from dagster_project.selection.results import RECORD_FIELDS, SelectionResult

# Hyper-parameter flags passed on to `select` as options when set (unset flags keep defaults).
_OPTION_FLAGS = ("penalty", "removal_ratio", "ring_fraction", "n_neighbors", "n_iterations",
                 "batch_size", "loss")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "select", help="select the items to annotate (BiLAF or a baseline)",
        description=__doc__ + " Writes one row per pick (.csv) or the full result (.json).")
    parser.add_argument("--features", required=True, type=Path,
                        help="N x d features: .npy, or .npz holding an array named 'features'")
    parser.add_argument("--budget", required=True, type=int, help="number of items to select")
    parser.add_argument("--method", default="bilaf", choices=list_methods())
    parser.add_argument("--cores", type=int, default=None, dest="n_cores",
                        help="number of BiLAF core samples K (default: ceil(budget / 4))")
    parser.add_argument("--core-method", default=None, choices=tuple(CORE_METHODS),
                        help="BiLAF stage-1 method (default: activeft)")
    parser.add_argument("--variant", default="default", choices=tuple(VARIANTS),
                        help="'default' (paper intent) or 'repo' (reproduces the official code)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--penalty", type=float, help=f"opponent penalty delta (default {defaults.PENALTY})")
    parser.add_argument("--removal-ratio", type=float, help=f"IDC removal ratio (default {defaults.REMOVAL_RATIO})")
    parser.add_argument("--ring-fraction", type=float, help=f"IDC ring fraction (default {defaults.RING_FRACTION})")
    parser.add_argument("--n-neighbors", type=int,
                        help=f"IDC density neighbours k (default {defaults.N_NEIGHBORS})")
    parser.add_argument("--n-iterations", type=int, help="ActiveFT iterations (default 300)")
    parser.add_argument("--batch-size", type=int,
                        help="ActiveFT items per iteration (default: all up to 100000)")
    parser.add_argument("--loss", choices=("code", "paper"), help="ActiveFT loss form")
    parser.add_argument("--out", required=True, type=Path, help="output path, .csv or .json")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.out.suffix not in (".csv", ".json"):
        raise ValueError(f"--out must end in .csv or .json; got {args.out}")
    features = load_features(args.features)
    options = {name: getattr(args, name) for name in _OPTION_FLAGS
               if getattr(args, name) is not None}
    result = select(features, args.budget, args.method, n_cores=args.n_cores,
                    core_method=args.core_method, seed=args.seed, variant=args.variant, **options)
    write_result(result, args.out)
    print(f"selected {len(result)} of {len(features)} items with {result.method} "
          f"({result.variant}) -> {args.out}")
    return 0


def load_features(path: Path) -> np.ndarray:
    """Features from a .npy file or the `features` array of a .npz file."""
    if not path.is_file():
        raise ValueError(f"features file {path} does not exist")
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".npz":
        with np.load(path) as archive:
            if "features" not in archive.files:
                raise ValueError(f"{path} has no array named 'features' (it has {archive.files})")
            return archive["features"]
    raise ValueError(f"features file must be .npy or .npz; got {path}")


def write_result(result: SelectionResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(result.to_dict(), indent=1))
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        writer.writerows(_csv_row(record) for record in result.to_records())


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    return {key: "" if value is None else value for key, value in record.items()}
