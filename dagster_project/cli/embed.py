"""`bilaf embed`: embed every pool item with a pretrained backbone (incremental, cached)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bilaf import defaults


def register(subparsers: argparse._SubParsersAction) -> None:
    embed = subparsers.add_parser(
        "embed",
        help="embed the pool with a pretrained backbone",
        description="Write <out>/features.npy (float32, manifest order), <out>/index.csv and "
        "<out>/meta.json. Items already embedded under the same configuration are "
        "taken from the cache and never recomputed.",
    )
    embed.add_argument("--data", type=Path, default=Path("data"), help="pool directory (default: %(default)s)")
    embed.add_argument(
        "--out", type=Path, default=Path("artifacts/embeddings"), help="output directory (default: %(default)s)"
    )
    embed.add_argument("--backbone", default=defaults.BACKBONE, help="timm model name (default: %(default)s)")
    embed.add_argument(
        "--weights", default=defaults.WEIGHTS, help="'packaged', 'hub' or a checkpoint path (default: %(default)s)"
    )
    embed.add_argument("--image-size", type=int, default=defaults.IMAGE_SIZE, help="default: %(default)s")
    embed.add_argument("--batch-size", type=int, default=defaults.EMBEDDING_BATCH_SIZE, help="default: %(default)s")
    embed.add_argument(
        "--shard-size",
        type=int,
        default=1024,
        help="items per cache shard: the most work a killed run loses (default: %(default)s)",
    )
    embed.add_argument("--cache-dir", type=Path, default=None, help="shard cache (default: <out>/../embedding_cache)")
    embed.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="decoding worker processes (default: 0 on CPU, up to 8 with a GPU)",
    )
    embed.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    embed.add_argument(
        "--scheduler",
        default=None,
        help="a Dask scheduler (tcp://host:port or a scheduler file) whose workers embed the shards "
        "(default: $BILAF_DASK_SCHEDULER, else this process)",
    )
    embed.set_defaults(handler=_embed)


def _embed(args: argparse.Namespace) -> int:
    from bilaf.compute import open_compute
    from bilaf.features.embeddings import embed_pool

    compute = open_compute(args.scheduler)
    try:
        info = embed_pool(
            args.data,
            args.out,
            backbone=args.backbone,
            weights=args.weights,
            image_size=args.image_size,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            cache_dir=args.cache_dir,
            num_workers=args.num_workers,
            device=args.device,
            compute=compute,
        )
    finally:
        compute.close()
    print(
        f"embeddings in {info.out_dir}: {info.num_items} x {info.feature_dim} "
        f"({info.computed} computed, {info.reused} from cache {info.cache_dir})"
    )
    return 0
