"""Beyond one machine: embedding and ActiveFT in process against a real Dask cluster, side by side.

Settings, each timed the same way (the driver's wall clock around the same library call, cluster
start-up and the backbone's first load excluded; every setting gets a fresh cache and, on Dask, a
fresh cluster so that its peak memory is its own):

* ``in process``       the default Compute: tasks on this process's threads, one torch thread each;
* ``1 worker x 1``     a `dask scheduler` and one single-threaded `dask worker` process;
* ``2 workers x 1``    the same with two worker processes.

A fresh cluster is warmed up first (imports; the backbone loaded once per worker process, as the
embedding tasks do), outside the timer: that once-per-worker cost is printed as its own column.

Embedding also times the old single-stream loop (one DataLoader, every torch thread in one forward
pass: what `embed_pool` did before shards became tasks; its features depend on the thread count,
which is why it is gone from the CPU path). ActiveFT runs on a synthetic clustered pool (a mixture
of unit-variance blobs; real embeddings are clustered, and the owner bounds depend on it).

    .venv/bin/python benchmarks/scale_out.py --iterations 3   # 10k images x 3 runs, N = 200k x 1280, K = 1000
    .venv/bin/python benchmarks/scale_out.py --images 2048 --repeats 1 --items 50000 --iterations 5   # a quick look

Below the measured rows, a cost model projects 10 M and 100 M items on N workers from the per-item
costs just measured (and, for a GPU worker, from the H200 figure quoted, not measured, here).
The load average is printed: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bilaf.compute import DaskCompute, LocalCompute  # noqa: E402
from dagster_project.cluster import start_cluster, stop_cluster  # noqa: E402

SETTINGS = (("in process", 0), ("1 worker x 1", 1), ("2 workers x 1", 2))
H200_IMAGES_PER_S = 4837  # issue 19's figure for one H200 (an earlier session), not measured by this script


@contextlib.contextmanager
def _setting(work: Path, workers: int, warm_up: tuple) -> Iterator[tuple[Any, float]]:
    """(Compute, warm-up seconds) of one setting, closed (and its cluster stopped) on the way out.
    Dask workers get a fresh cluster, warmed up (imports, backbone) outside the timer, as a
    long-running cluster is."""
    if workers == 0:
        yield LocalCompute(), 0.0
        return
    folder = work / f"cluster-{workers}-{time.monotonic_ns()}"
    started = start_cluster(folder, workers=workers, threads=1, memory_limit="8GiB")
    try:
        compute = DaskCompute(str(started.scheduler_file))
        try:
            began = time.perf_counter()
            compute.client.run(*warm_up)
            yield compute, time.perf_counter() - began
        finally:
            compute.close()
    finally:
        stop_cluster(folder)


def _worker_peak_rss_mib(compute) -> list[float]:
    if not isinstance(compute, DaskCompute):
        return []  # this process's peak covers the whole benchmark: not its own
    peaks = compute.client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return sorted(peaks.values())


def embedding_rows(work: Path, images: int, image_size: int, batch_size: int, repeats: int) -> list[dict]:
    """Each setting ``repeats`` times, the settings interleaved (a noisy box slows every setting alike);
    the median run is reported with the range."""
    from bilaf.features import load_backbone, sync_pool

    data = work / "pool"
    sync_pool(data, "fashion-mnist", train_size=images, test_size=0, seed=0)
    load_backbone()  # the weights' first load (and file cache) is nobody's cost
    runs: dict[str, list[dict]] = {}
    for repeat in range(repeats):
        for name, workers in SETTINGS:
            runs.setdefault(name, []).append(_embed_once(work, data, workers, repeat, image_size, batch_size))
        runs.setdefault(STREAM, []).append(_embed_stream(work, data, repeat, image_size, batch_size))
    reference = runs[SETTINGS[0][0]][0]["features"]
    rows = []
    for name, measured in runs.items():
        seconds = [run["seconds"] for run in measured]
        median = float(np.median(seconds))
        rows.append(
            {
                "setting": name,
                "seconds": median,
                "range": (min(seconds), max(seconds)),
                "images_per_s": images / median,
                "processes": max(run["processes"] for run in measured),
                "warm_up_s": float(np.median([run["warm_up_s"] for run in measured])),
                "peak_rss_mib": max((run["peak_rss_mib"] for run in measured), key=lambda peaks: sum(peaks)),
                "identical": None if name == STREAM else all(run["features"] == reference for run in measured),
            }
        )
    return rows


STREAM = "old single stream (in process)"


def _embed_once(work: Path, data: Path, workers: int, repeat: int, image_size: int, batch_size: int) -> dict:
    """One timed `embed_pool` of the whole pool into a fresh cache, on a fresh cluster."""
    from bilaf.features import embed_pool
    from bilaf.features import embeddings as embedding_module

    out = work / f"out-{workers}-{repeat}"
    warm_up = (embedding_module.load_process_backbone, "tf_efficientnet_lite0", "packaged")
    with _setting(work, workers, warm_up) as (compute, warm):
        started = time.perf_counter()
        info = embed_pool(
            data,
            out,
            image_size=image_size,
            batch_size=batch_size,
            cache_dir=work / f"cache-{workers}-{repeat}",
            compute=compute,
        )
        seconds = time.perf_counter() - started
        peaks = _worker_peak_rss_mib(compute)
    return {
        "seconds": seconds,
        "processes": len({(shard.host, shard.pid) for shard in info.shards}),
        "warm_up_s": warm,
        "peak_rss_mib": peaks,
        "features": (out / "features.npy").read_bytes(),
    }


def _embed_stream(work: Path, data: Path, repeat: int, image_size: int, batch_size: int) -> dict:
    """The old single stream (one forward pass on every thread), for what the shards cost in process."""
    from bilaf.features import embeddings as embedding_module
    from bilaf.features import read_manifest

    model = embedding_module.load_backbone("tf_efficientnet_lite0", "packaged")
    frame = read_manifest(data)
    ids = frame["id"].tolist()
    cache = embedding_module.ShardCache(work / f"cache-stream-{repeat}" / "x")
    chunks = [ids[start : start + 1024] for start in range(0, len(ids), 1024)]
    started = time.perf_counter()
    embedding_module._embed_here(model, data, frame, chunks, cache, image_size, batch_size, 0)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "processes": 1, "warm_up_s": 0.0, "peak_rss_mib": [], "features": b""}


def _clustered(n_items: int, dim: int, n_blobs: int, path: Path) -> None:
    """A mixture of unit-variance blobs written block by block (never all of it in memory twice)."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(n_blobs, dim)).astype(np.float32) * 3.0
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_items, dim))
    for start in range(0, n_items, 50_000):
        stop = min(n_items, start + 50_000)
        labels = rng.integers(n_blobs, size=stop - start)
        out[start:stop] = means[labels] + rng.normal(size=(stop - start, dim)).astype(np.float32)
    out.flush()
    del out


def activeft_rows(work: Path, n_items: int, dim: int, anchors: int, iterations: int) -> list[dict]:
    from bilaf.progress import reporting_progress
    from bilaf.selection import select_cores
    from bilaf.selection.shards import FeatureRows

    path = work / "features.npy"
    _clustered(n_items, dim, 2 * anchors, path)
    source = FeatureRows.of_file(path)
    rows, reference = [], None
    for name, workers in SETTINGS:
        steps: list[float] = []
        with _setting(work, workers, (importlib.import_module, "bilaf.selection")) as (compute, warm):
            with reporting_progress(
                lambda event: steps.append(time.perf_counter()) if event.task == "ActiveFT" else None
            ):
                started = time.perf_counter()
                cores = select_cores(source, anchors, "activeft", seed=0, n_iterations=iterations, compute=compute)
                total = time.perf_counter() - started
            peaks = _worker_peak_rss_mib(compute)
        picks = cores.indices.tolist()
        reference = reference or picks
        later = np.diff(steps[1:]) if len(steps) > 2 else np.array([total])
        rows.append(
            {
                "setting": name,
                "seconds": total,
                "first_s": steps[0] - started if steps else total,
                "per_iteration_s": float(np.median(later)),
                "shards": cores.params["shards"],
                "warm_up_s": warm,
                "peak_rss_mib": peaks,
                "identical": picks == reference,
            }
        )
    return rows


def _gib(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB"


def cost_model(embedding: list[dict], activeft: list[dict], n_items: int, dim: int, anchors: int) -> list[str]:
    """Projections from the measured rows: embedding scales with images / (workers x rate), ActiveFT
    per iteration with N x K x d / workers plus the overhead a second worker added; memory per worker
    with its share of the pool."""
    one = next(row for row in embedding if row["setting"] == "1 worker x 1")["images_per_s"]
    step = next(row for row in activeft if row["setting"] == "1 worker x 1")["per_iteration_s"]
    step_two = next(row for row in activeft if row["setting"] == "2 workers x 1")["per_iteration_s"]
    per_item = step / (n_items * anchors * dim)
    overhead = max(0.0, step_two - step / 2)  # what a second worker did not take off: Dask's share per iteration
    bytes_per_item = 4 * (dim + anchors)
    lines = [
        "",
        "Cost model (projected from the rows above; the GPU rate is quoted, not measured here):",
        f"{'items':>12} {'workers':>8} {'embed, CPU 1-thread':>20} {'embed, H200':>12} "
        f"{'ActiveFT/iter':>14} {'300 iters':>10} {'pool shard/worker':>18}",
    ]
    for total in (10_000_000, 100_000_000):
        for workers in (1, 10, 100):
            embed_cpu = total / (one * workers)
            embed_gpu = total / (H200_IMAGES_PER_S * workers)
            batch = min(total, 100_000)  # FULL_BATCH_LIMIT: above it each iteration sees a random 100k subset
            iteration = per_item * batch * anchors * dim / workers + overhead
            shard = total * bytes_per_item / workers / 2**20
            lines.append(
                f"{total:>12,} {workers:>8} {embed_cpu / 3600:>18.1f} h {embed_gpu / 3600:>10.2f} h "
                f"{iteration:>12.2f} s {300 * iteration / 60:>8.1f} m {_gib(shard):>18}"
            )
    lines.append(
        f"(measured: {one:.1f} img/s per 1-thread worker, {per_item * 1e9:.3f} s per 1e9 item x anchor x dim "
        f"products per worker, {overhead:.2f} s of per-iteration overhead on 2 workers (kept constant: "
        f"optimistic for many workers), {bytes_per_item} B of shard per item at d = {dim}, K = {anchors}. "
        "Projected: every other figure; the first iteration (seeding, loading shards) is not modelled.)"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_240, help="embedding pool size (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--items", type=int, default=200_000, help="ActiveFT pool size (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--anchors", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="embedding runs per setting (default: %(default)s)")
    parser.add_argument("--skip-embedding", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="scale-out-"))
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
        embedding = (
            []
            if args.skip_embedding
            else embedding_rows(work, args.images, args.image_size, args.batch_size, args.repeats)
        )
        if embedding:
            print(
                f"\nEmbedding {args.images} Fashion-MNIST images, tf_efficientnet_lite0 at {args.image_size} px, "
                f"batch {args.batch_size}; median of {args.repeats} runs per setting, interleaved, with the range"
            )
            print(
                f"{'setting':<32} {'warm-up s':>9} {'seconds':>8} {'range s':>13} {'img/s':>7} {'processes':>9} "
                f"{'peak RSS per process':>22} "
                f"{'same bytes':>10}"
            )
            for row in embedding:
                peaks = ", ".join(f"{peak:.0f}" for peak in row["peak_rss_mib"]) or "-"
                same = "-" if row["identical"] is None else ("yes" if row["identical"] else "NO")
                print(
                    f"{row['setting']:<32} {row['warm_up_s']:>9.1f} {row['seconds']:>8.1f} "
                    f"{row['range'][0]:>6.1f}-{row['range'][1]:<6.1f} {row['images_per_s']:>7.1f} "
                    f"{row['processes']:>9} {peaks + ' MiB':>22} {same:>10}"
                )
            rate = {row["setting"]: row["images_per_s"] for row in embedding}
            print(
                f"2 workers / 1 worker: {rate['2 workers x 1'] / rate['1 worker x 1']:.2f}x (target >= 1.8); "
                f"2 workers / in process: {rate['2 workers x 1'] / rate['in process']:.2f} (target >= 0.9)"
            )
        activeft = activeft_rows(work, args.items, args.dim, args.anchors, args.iterations)
        print(
            f"\nActiveFT, N = {args.items:,} x {args.dim}, K = {args.anchors}, {args.iterations} iterations "
            f"(clustered synthetic pool, {activeft[0]['shards']} shards)"
        )
        print(
            f"{'setting':<16} {'warm-up s':>9} {'total s':>8} {'1st iter s':>10} {'s/iter':>8} {'peak RSS per process':>26} "
            f"{'same picks':>10}"
        )
        for row in activeft:
            peaks = ", ".join(f"{peak:.0f}" for peak in row["peak_rss_mib"])
            print(
                f"{row['setting']:<16} {row['warm_up_s']:>9.1f} {row['seconds']:>8.1f} {row['first_s']:>10.2f} {row['per_iteration_s']:>8.3f} "
                f"{peaks + ' MiB':>26} {'yes' if row['identical'] else 'NO':>10}"
            )
        step = {row["setting"]: row["per_iteration_s"] for row in activeft}
        print(
            f"2 workers / in process, s per iteration: {step['2 workers x 1'] / step['in process']:.2f}x (target <= 1.2)"
        )
        print(
            f"(the pool's features: {args.items * args.dim * 4 / 2**20:,.0f} MiB; in process the driver holds them "
            f"all, on Dask each worker its shards)"
        )
        if embedding:
            print("\n".join(cost_model(embedding, activeft, args.items, args.dim, args.anchors)))
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
