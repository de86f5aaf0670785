"""`bilaf data sync` grows the pool from the configured source; `bilaf ingest DIR` adds a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bilaf import defaults
from bilaf.choices import ON_UNREADABLE, SOURCES, SPLITS
from bilaf.lock import project_lock
from dagster_project import dvc

if TYPE_CHECKING:
    from bilaf.features.pool import PoolReport

_UNREADABLE_SHOWN = 5


def _size(text: str) -> int | None:
    """A pool size: a non-negative integer, or 'all'."""
    if text.lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer or 'all', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer or 'all', got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="grow the image pool from its configured source")
    actions = data.add_subparsers(dest="data_command", required=True)
    sync = actions.add_parser(
        "sync",
        help="add a source's images to the pool up to the given sizes (pools only grow)",
        description="Bring <out>/manifest.csv up to --train-size + --test-size items of the source, keeping "
        "every item already there. Array sources (Fashion-MNIST, CIFAR) are copied as PNGs "
        "under <out>/images; image folders are referenced where they are. Re-running with "
        "the same arguments rewrites nothing.",
    )
    sync.add_argument("--source", choices=SOURCES, default=defaults.SOURCE, help="default: %(default)s")
    sync.add_argument(
        "--root",
        type=Path,
        default=None,
        help="where the source's files are (image-folder: the folder; Fashion-MNIST: "
        "default /usr/share/datasets/fashion-mnist)",
    )
    sync.add_argument("--out", type=Path, default=Path("data"), help="pool directory (default: %(default)s)")
    sync.add_argument(
        "--train-size",
        type=_size,
        default=defaults.TRAIN_SIZE,
        help="train items from this source, or 'all' (default: %(default)s)",
    )
    sync.add_argument(
        "--test-size",
        type=_size,
        default=defaults.TEST_SIZE,
        help="test items from this source, or 'all' (default: %(default)s)",
    )
    sync.add_argument("--seed", type=int, default=defaults.DATA_SEED, help="sampling seed (default: %(default)s)")
    sync.add_argument(
        "--on-unreadable",
        choices=ON_UNREADABLE,
        default=defaults.ON_UNREADABLE,
        help="skip unreadable files (listed in the report) or fail (default: %(default)s)",
    )
    sync.set_defaults(handler=_sync)

    ingest = subparsers.add_parser(
        "ingest",
        help="add every image of a folder to the project's pool",
        description="Add the images under DIR (class sub-folders give labels) to PATH/data by content "
        "hash, referenced where they are; duplicates, unreadable and non-image files are "
        "reported. In a DVC project the new pool version is then recorded (dvc add data).",
    )
    ingest.add_argument("folder", type=Path, metavar="DIR", help="folder of images to add")
    ingest.add_argument("--split", choices=SPLITS, default="train", help="default: %(default)s")
    ingest.add_argument(
        "--project",
        type=Path,
        default=Path("."),
        metavar="PATH",
        help="project folder whose data/ receives the images (default: %(default)s)",
    )
    ingest.add_argument(
        "--on-unreadable",
        choices=ON_UNREADABLE,
        default=defaults.ON_UNREADABLE,
        help="skip unreadable files (listed in the report) or fail (default: %(default)s)",
    )
    ingest.set_defaults(handler=_ingest)


def _counts(report: PoolReport) -> str:
    return f"duplicates {len(report.duplicates)}, unreadable {len(report.unreadable)}, ignored {len(report.ignored)}"


def _list_unreadable(report: PoolReport, data_dir: Path) -> None:
    from bilaf.features.pool import REPORT_NAME

    for entry in report.unreadable[:_UNREADABLE_SHOWN]:
        print(f"  unreadable {entry['origin']}: {entry['reason']}", file=sys.stderr)
    if len(report.unreadable) > _UNREADABLE_SHOWN:
        print(
            f"  ... and {len(report.unreadable) - _UNREADABLE_SHOWN} more (see {data_dir / REPORT_NAME})",
            file=sys.stderr,
        )


def _sync(args: argparse.Namespace) -> int:
    from bilaf.features.pool import REPORT_NAME, sync_pool

    report = sync_pool(
        args.out,
        args.source,
        root=args.root,
        train_size=args.train_size,
        test_size=args.test_size,
        seed=args.seed,
        on_unreadable=args.on_unreadable,
    )
    items = ", ".join(f"{split} {report.items[split]} (+{report.added[split]})" for split in SPLITS)
    print(
        f"pool {report.version} in {args.out}: {items}; scanned {report.scanned}, {_counts(report)} "
        f"(see {REPORT_NAME}); files written {report.files_written}"
    )
    _list_unreadable(report, args.out)
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from bilaf.features.pool import ingest_folder

    data_dir = args.project / "data"
    with project_lock(args.project.resolve(), f"bilaf ingest {args.folder}"):
        report = ingest_folder(data_dir, args.folder, split=args.split, on_unreadable=args.on_unreadable)
        print(
            f"ingested {args.folder} into {data_dir}: added {report.num_added} ({args.split}), "
            f"{_counts(report)}; pool {report.version}: train {report.items['train']}, test {report.items['test']}"
        )
        _list_unreadable(report, data_dir)
        try:
            recorded = dvc.track(args.project, "data")
        except RuntimeError as error:
            print(f"bilaf ingest: error: the pool was updated but DVC could not record it: {error}", file=sys.stderr)
            return 1
    if recorded:
        print(f"recorded in {args.project / 'data.dvc'} (md5 {recorded})")
    return 0
