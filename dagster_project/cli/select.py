"""`bilaf select`: pick the items to annotate from a feature matrix (.npy, or .npz `features`) or from
an embeddings folder (`bilaf embed --out`)."""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bilaf import choices, defaults
from bilaf.errors import InvalidInputError, MissingFileError

if TYPE_CHECKING:
    import numpy as np

    from bilaf.selection import SelectionResult

# Hyper-parameter flags passed on to `select` as options when set (unset flags keep defaults).
_OPTION_FLAGS = ("penalty", "removal_ratio", "ring_fraction", "n_neighbors", "n_iterations", "batch_size", "loss")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "select",
        help="select the items to annotate (BiLAF or a baseline)",
        description=__doc__ + " Writes one row per pick (.csv) or the full result (.json). Item indices are "
        "always rows of the input (features.npy of an embeddings folder, also with --split); "
        "from an embeddings folder each pick also gets its item id, and with --data its image path.",
    )
    parser.add_argument(
        "--features",
        required=True,
        type=Path,
        help="N x d features: .npy, .npz holding an array named 'features', or an embeddings "
        "folder (features.npy, index.csv, meta.json)",
    )
    parser.add_argument(
        "--split",
        choices=choices.SPLITS,
        default=None,
        help="select among this split's items only (embeddings folder; default: every item)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="pool directory whose manifest.csv gives each picked item's image path (embeddings folder only)",
    )
    parser.add_argument("--budget", required=True, type=int, help="number of items to select")
    parser.add_argument("--method", default="bilaf", choices=choices.SELECTION_METHODS)
    parser.add_argument(
        "--cores",
        type=int,
        default=None,
        dest="n_cores",
        help="number of BiLAF core samples K (default: ceil(budget / 4))",
    )
    parser.add_argument(
        "--core-method",
        default=None,
        choices=choices.CORE_METHODS,
        help=f"BiLAF stage-1 method (default: {defaults.CORE_METHOD})",
    )
    parser.add_argument(
        "--variant",
        default=defaults.DENOISE_VARIANT,
        choices=choices.VARIANTS,
        help="'default' (paper intent) or 'repo' (reproduces the official code)",
    )
    parser.add_argument("--seed", type=int, default=defaults.SEED)
    parser.add_argument("--penalty", type=float, help=f"opponent penalty delta (default {defaults.PENALTY})")
    parser.add_argument("--removal-ratio", type=float, help=f"IDC removal ratio (default {defaults.REMOVAL_RATIO})")
    parser.add_argument("--ring-fraction", type=float, help=f"IDC ring fraction (default {defaults.RING_FRACTION})")
    parser.add_argument("--n-neighbors", type=int, help=f"IDC density neighbours k (default {defaults.N_NEIGHBORS})")
    parser.add_argument("--n-iterations", type=int, help="ActiveFT iterations (default 300)")
    parser.add_argument("--batch-size", type=int, help="ActiveFT items per iteration (default: all up to 100000)")
    parser.add_argument("--loss", choices=choices.ACTIVEFT_LOSSES, help="ActiveFT loss form")
    parser.add_argument("--out", required=True, type=Path, help="output path, .csv or .json")
    parser.set_defaults(handler=run)


@dataclass(frozen=True)
class Candidates:
    """What `bilaf select` picks from: the candidates' features, the input row each one is, and the item
    id and image path of every input row where the input has them (ids: embeddings folders; paths: --data)."""

    features: np.ndarray
    rows: np.ndarray
    ids: list[str] | None = None
    paths: list[str] | None = None


def run(args: argparse.Namespace) -> int:
    from bilaf.selection import select

    if args.out.suffix not in (".csv", ".json"):
        raise InvalidInputError(f"--out must end in .csv or .json; got {args.out}")
    candidates = load_candidates(args.features, split=args.split, data=args.data)
    options = {name: getattr(args, name) for name in _OPTION_FLAGS if getattr(args, name) is not None}
    result = select(
        candidates.features,
        args.budget,
        args.method,
        n_cores=args.n_cores,
        core_method=args.core_method,
        seed=args.seed,
        variant=args.variant,
        **options,
    )
    result = result.on_rows(candidates.rows)
    write_result(result, args.out, candidates)
    among = f"{len(candidates.rows)} {args.split} items" if args.split else f"{len(candidates.rows)} items"
    print(f"selected {len(result)} of {among} with {result.method} ({result.variant}) -> {args.out}")
    return 0


def load_candidates(path: Path, split: str | None = None, data: Path | None = None) -> Candidates:
    """Features from a .npy file, the `features` array of a .npz file or an embeddings folder; ``split``
    keeps one split's rows and ``data`` (the pool directory) adds image paths, for embeddings folders."""
    import numpy as np

    if path.is_dir():
        return _embeddings_candidates(path, split, data)
    if split is not None or data is not None:
        raise InvalidInputError(f"--split and --data need an embeddings folder (`bilaf embed --out`); got {path}")
    if not path.is_file():
        raise MissingFileError(f"features file {path} does not exist")
    if path.suffix not in (".npy", ".npz"):
        raise InvalidInputError(f"features file must be .npy or .npz; got {path}")
    try:
        if path.suffix == ".npy":
            features = np.load(path)
        else:
            with np.load(path) as archive:
                features = archive["features"] if "features" in archive.files else None
    except (ValueError, OSError) as error:  # numpy: not an array file, or an object array
        raise InvalidInputError(f"{path} is not a NumPy array file ({error})") from None
    if features is None:
        raise InvalidInputError(f"{path} has no array named 'features' (it has {archive.files})")
    return Candidates(features=features, rows=np.arange(len(features)))


def _embeddings_candidates(folder: Path, split: str | None, data: Path | None) -> Candidates:
    import numpy as np

    from bilaf.features import load_embeddings, read_manifest

    embeddings = load_embeddings(folder)
    if split is None:
        rows, features = np.arange(len(embeddings)), np.asarray(embeddings.features)
    else:
        rows = embeddings.rows_of(split)
        features = np.asarray(embeddings.features[rows])
    ids = embeddings.ids.tolist()
    paths = None
    if data is not None:
        manifest = read_manifest(data)
        path_of = dict(zip(manifest["id"], manifest["path"]))
        missing = [item for item in ids if item not in path_of]
        if missing:
            raise InvalidInputError(
                f"{len(missing)} item(s) of {folder} are not in {data}/manifest.csv, e.g. {missing[0]}"
            )
        paths = [str(data / path_of[item]) for item in ids]
    return Candidates(features=features, rows=rows, ids=ids, paths=paths)


def write_result(result: SelectionResult, path: Path, candidates: Candidates) -> None:
    """The picks as CSV (one row each) or the whole result as JSON, with ids and paths where known."""
    from bilaf.selection.results import RECORD_FIELDS

    items = {
        name: [values[index] for index in result.indices.tolist()]
        for name, values in (("id", candidates.ids), ("path", candidates.paths))
        if values is not None
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(
            json.dumps({**result.to_dict(), **{f"{name}s": values for name, values in items.items()}}, indent=1)
        )
        return
    after_index = RECORD_FIELDS.index("index") + 1
    fields = (*RECORD_FIELDS[:after_index], *items, *RECORD_FIELDS[after_index:])
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for position, record in enumerate(result.to_records()):
            writer.writerow(_csv_row({**record, **{name: values[position] for name, values in items.items()}}))


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    return {key: "" if value is None else value for key, value in record.items()}
