"""Embedding throughput and memory: bare forward pass vs the full `embed_pool` pipeline.

For each pool size (and decoding worker count), a fresh subprocess runs
1. ``embed_pool`` on a fresh cache (decode + transform + forward + shard/feature writes, backbone
   loading included) and records its peak RSS, then
2. the bare model forward pass on the same batches (same images, batch size and padding; the
   decoding of each batch happens outside the timer).
Each measurement is repeated ``--repeats`` times (fresh subprocess and cache each time) and the
fastest run of each kind is kept, which filters out stalls caused by other processes sharing the
cores. The ratio pipeline/bare should be >= 0.9; peak RSS should not grow with the pool size.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embedding_throughput.py --sizes 512 2048

``--jpeg`` builds the pool from a folder of 32x32 JPEGs (Fashion-MNIST train images, resized and
saved once per run) instead of the Fashion-MNIST source, as a user's image folder would be. The
pipeline's system and user CPU seconds and minor page faults per image are printed with it.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embedding_throughput.py --jpeg --sizes 2048 10240 --workers 0 --repeats 1

The load average is printed with the table: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _measure(data_dir: Path, work_dir: Path, backbone: str, image_size: int, batch_size: int, num_workers: int) -> dict:
    """Run in a fresh interpreter: pipeline first (for its peak RSS), then the bare forward."""
    import torch

    from bilaf.features import PoolDataset, build_transform, embed_pool, load_backbone

    # This process and its joined DataLoader workers (--workers > 0): the CPU and faults of both.
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    start = time.perf_counter()
    info = embed_pool(
        data_dir,
        work_dir / "out",
        backbone=backbone,
        image_size=image_size,
        batch_size=batch_size,
        cache_dir=work_dir / "cache",
        num_workers=num_workers,
    )
    pipeline_s = time.perf_counter() - start
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    model = load_backbone(backbone)
    dataset = PoolDataset(data_dir, transform=build_transform(image_size, model.mean, model.std))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    forward_s = 0.0
    with torch.inference_mode():
        for images, _ in loader:
            count = len(images)
            if count < batch_size:
                images = torch.cat([images, images[-1:].expand(batch_size - count, *images.shape[1:])])
            images = images.to(model.device)
            begin = time.perf_counter()
            model.model(images)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            forward_s += time.perf_counter() - begin
    return {
        "items": info.num_items,
        "computed": info.computed,
        "pipeline_s": pipeline_s,
        "forward_s": forward_s,
        "peak_rss_mib": peak_rss_mib,
        "threads": torch.get_num_threads(),
        "user_s": sum(a.ru_utime - b.ru_utime for a, b in zip(after, before)),
        "sys_s": sum(a.ru_stime - b.ru_stime for a, b in zip(after, before)),
        "minor_faults": sum(a.ru_minflt - b.ru_minflt for a, b in zip(after, before)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[512, 2048], help="two pool sizes")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="decoding workers to compare")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the fastest counts")
    parser.add_argument("--jpeg", action="store_true", help="pool from a folder of 32x32 JPEGs")
    parser.add_argument("--measure", type=json.loads, help=argparse.SUPPRESS)  # subprocess entry point
    args = parser.parse_args()
    if args.measure:
        print(
            json.dumps(
                _measure(
                    Path(args.measure["data"]),
                    Path(args.measure["work"]),
                    args.backbone,
                    args.image_size,
                    args.batch_size,
                    args.measure["workers"],
                )
            )
        )
        return

    from bilaf.features import sync_pool

    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bilaf-bench-") as tmp:
        for size in args.sizes:
            data_dir = Path(tmp) / f"pool-{size}"
            if args.jpeg:
                sync_pool(
                    data_dir,
                    "image-folder",
                    root=_jpeg_folder(Path(tmp) / "jpeg", max(args.sizes)),
                    train_size=size,
                    test_size=0,
                    seed=0,
                )
            else:
                sync_pool(data_dir, "fashion-mnist", train_size=size, test_size=0, seed=0)
            for workers in args.workers:
                runs = []
                for repeat in range(args.repeats):
                    work_dir = Path(tmp) / f"work-{size}-{workers}-{repeat}"
                    request = json.dumps({"data": str(data_dir), "work": str(work_dir), "workers": workers})
                    result = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--measure",
                            request,
                            "--backbone",
                            args.backbone,
                            "--image-size",
                            str(args.image_size),
                            "--batch-size",
                            str(args.batch_size),
                        ],
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
                rows.append(
                    {
                        "size": size,
                        "workers": workers,
                        "items": runs[0]["items"],
                        "threads": runs[0]["threads"],
                        "pipeline_s": min(run["pipeline_s"] for run in runs),
                        "forward_s": min(run["forward_s"] for run in runs),
                        "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
                        **{key: min(run[key] for run in runs) for key in ("user_s", "sys_s", "minor_faults")},
                    }
                )

    print(
        f"backbone {args.backbone}, {args.image_size} px, batch {args.batch_size}, torch threads "
        f"{rows[0]['threads']}, best of {args.repeats}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores"
    )
    header = (
        f"| {'pool':>5} | {'workers':>7} | {'bare fwd img/s':>14} | {'pipeline img/s':>14} | "
        f"{'ratio':>5} | {'peak RSS MiB':>12} | {'user s':>7} | {'sys s':>7} | {'minor faults/img':>16} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell) + 0) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        bare = row["items"] / row["forward_s"]
        pipeline = row["items"] / row["pipeline_s"]
        print(
            f"| {row['size']:>5} | {row['workers']:>7} | {bare:>14.1f} | {pipeline:>14.1f} | "
            f"{pipeline / bare:>5.2f} | {row['peak_rss_mib']:>12.0f} | {row['user_s']:>7.1f} | "
            f"{row['sys_s']:>7.1f} | {row['minor_faults'] / row['items']:>16.0f} |"
        )


def _jpeg_folder(folder: Path, count: int) -> Path:
    """The first ``count`` Fashion-MNIST images as 32x32 JPEGs in one folder per class (written once)."""
    from PIL import Image

    from bilaf.features import open_source

    if folder.is_dir():
        return folder
    folder.mkdir(parents=True)
    source = open_source("fashion-mnist")
    for index in range(count):
        record = source.records[index]
        class_dir = folder / source.classes[record.label].replace("/", "-")
        class_dir.mkdir(exist_ok=True)
        image = source.load(index).convert("L").resize((32, 32), Image.BICUBIC)
        image.save(class_dir / f"{index:05d}.jpg", quality=90)
    return folder


if __name__ == "__main__":
    main()
