"""Sharded, incremental, resumable embedding of a prepared pool.

Work is cached per *embedding configuration* (backbone name, weights hash, input size,
normalisation, interpolation): ``<cache>/<config hash>/shard-<hash of its ids>.npz`` files, each
holding ``ids`` and float32 ``features`` of up to ``shard_size`` items (and where they were
computed), written whole or not at all (temp file + ``os.replace``; one PUT on an object store).
Items already in a shard are never recomputed, so a killed run loses at most the shards in
progress, and a grown pool only embeds its new items. The cache is a folder, or an fsspec URL
(``s3://bucket/prefix``) that every worker of a Dask cluster can reach.

The missing items are cut into shards in manifest order; each shard is one task of the
``Compute`` (``bilaf.compute``): in this process, one after the other, or on the workers of a Dask
cluster, each loading the backbone once per process. An item's features do not depend on which
process, device thread count or batch computed them (every batch has the same shape), so the
output is the same wherever the shards ran.

The final output directory holds::

    features.npy  float32 (N, d), rows in manifest order (written streaming with positional writes)
    index.csv     id, split, label (one row per feature row)
    meta.json     backbone, weights sha256, input size, normalisation, data version, ...

It is byte-for-byte deterministic for the same pool and configuration. Every batch is padded to
``batch_size`` so each forward pass has the same shape, and an item's features do not depend on
which other items share its batch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bilaf import defaults
from bilaf.artifacts import atomic_file, remove_leftovers, write_atomic
from bilaf.compute import Compute, LocalCompute, Task, TaskReport
from bilaf.errors import InvalidInputError, MissingFileError
from bilaf.features._memory import retain_freed_memory
from bilaf.features.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from bilaf.features.datasets import PoolDataset
from bilaf.features.pool import MANIFEST_NAME, read_manifest
from bilaf.features.transforms import build_transform
from bilaf.progress import Counted, Progress

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "EmbeddingInfo",
    "Embeddings",
    "embed_pool",
    "embedding_config",
    "load_embeddings",
]

DEFAULT_IMAGE_SIZE = defaults.IMAGE_SIZE
FEATURES_NAME = "features.npy"
INDEX_NAME = "index.csv"
META_NAME = "meta.json"
# Bump when the pre-processing code changes in a way that changes features.
_TRANSFORM_VERSION = "rgb-resize-square-v1"


@dataclass
class EmbeddingInfo:
    """Outcome of :func:`embed_pool`: counts of computed vs cached items and where things are."""

    out_dir: Path
    cache_dir: Path
    num_items: int
    feature_dim: int
    computed: int
    reused: int
    config_hash: str
    meta: dict
    shards: list = field(default_factory=list)  # ShardReport of every shard computed by this call


@dataclass
class Embeddings:
    """Features of a pool. ``labels`` is -1 for unlabelled items; ``features`` may be a memmap."""

    ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    meta: dict

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, split: str) -> np.ndarray:
        """The rows (of ``features``, ascending) of one split's items."""
        rows = np.flatnonzero(self.splits == split)
        if rows.size == 0:
            raise InvalidInputError(f"no items with split {split!r} (splits: {sorted(set(self.splits))})")
        return rows

    def subset(self, split: str) -> Embeddings:
        """The items of one split (features loaded into memory)."""
        rows = self.rows_of(split)
        return Embeddings(
            self.ids[rows], np.asarray(self.features[rows]), self.labels[rows], self.splits[rows], self.meta
        )


def embedding_config(backbone: Backbone, image_size: int) -> dict:
    """Everything that determines an item's features; its hash names the cache directory."""
    return {
        "backbone": backbone.name,
        "weights_sha256": backbone.weights_sha256,
        "image_size": int(image_size),
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "interpolation": "bicubic",
        "transform": _TRANSFORM_VERSION,
        "feature_dim": backbone.feature_dim,
        "dtype": "float32",
    }


def _sha256_json(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class ShardCache:
    """Completed shards of one configuration: ``shard-<hash of ids>.npz`` with ids + features, in a
    folder or under an fsspec URL (an object store every worker reaches)."""

    def __init__(self, location: str | Path, config: dict | None = None):
        self.location = str(location)
        self.remote = "://" in self.location
        if self.remote:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(self.location)
        else:
            self.fs, self.root = None, self.location
            Path(self.root).mkdir(parents=True, exist_ok=True)
        if config is not None and not self._exists("config.json"):
            self._put("config.json", (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())

    @property
    def directory(self) -> Path | str:
        return self.location if self.remote else Path(self.root)

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def _exists(self, name: str) -> bool:
        return self.fs.exists(self._path(name)) if self.remote else Path(self._path(name)).exists()

    def _put(self, name: str, data: bytes) -> None:
        if self.remote:  # an object store writes an object whole or not at all
            self.fs.pipe_file(self._path(name), data)
        else:
            write_atomic(Path(self._path(name)), data)

    def _get(self, name: str) -> bytes:
        return self.fs.cat_file(self._path(name)) if self.remote else Path(self._path(name)).read_bytes()

    def shards(self) -> list[str]:
        """Shard file names, sorted."""
        if self.remote:
            found = self.fs.glob(self._path("shard-*.npz"))
            return sorted(name.rsplit("/", 1)[-1] for name in found)
        return sorted(path.name for path in Path(self.root).glob("shard-*.npz"))

    def read(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        with np.load(io.BytesIO(self._get(name))) as content:
            return content["ids"], content["features"]

    def provenance(self, name: str) -> dict:
        """Where and when the shard was computed (empty for shards from before it was recorded)."""
        with np.load(io.BytesIO(self._get(name))) as content:
            return json.loads(str(content["provenance"])) if "provenance" in content.files else {}

    def cached_ids(self) -> set[str]:
        """Ids of every readable shard. A shard that cannot be read whole (truncated, garbled: zip
        CRC) is set aside as ``*.corrupt`` with a warning, and its items are embedded again."""
        cached: set[str] = set()
        for name in self.shards():
            try:
                ids, features = self.read(name)
                if features.shape[0] != len(ids):
                    raise InvalidInputError(f"{len(ids)} ids but {features.shape[0]} feature rows")
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                quarantined = name.removesuffix(".npz") + ".corrupt"
                if self.remote:
                    self.fs.mv(self._path(name), self._path(quarantined))
                else:
                    os.replace(self._path(name), self._path(quarantined))
                warnings.warn(
                    f"embedding cache shard {self._path(name)} is unreadable ({type(error).__name__}: {error}); "
                    f"moved to {quarantined}, its items are embedded again",
                    stacklevel=2,
                )
                continue
            cached.update(ids.tolist())
        return cached

    def write(self, ids: list[str], features: np.ndarray, provenance: dict | None = None) -> str:
        name = shard_name(ids)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            ids=np.asarray(ids),
            features=features.astype(np.float32, copy=False),
            provenance=np.asarray(json.dumps(provenance or {}, sort_keys=True)),
        )
        self._put(name, buffer.getvalue())
        return name


def shard_name(ids: list[str]) -> str:
    """A shard's file name: the hash of its ids (the same items, the same shard)."""
    return f"shard-{hashlib.sha256(chr(10).join(ids).encode()).hexdigest()[:16]}.npz"


def _default_num_workers(device: torch.device) -> int:
    # Measured on 2 CPU cores (benchmarks/embedding_throughput.py): a decoding worker steals a
    # core from the forward pass, so decode in-process there; with a GPU, decoding is the bottleneck.
    if device.type == "cuda":
        return min(8, os.cpu_count() or 1)
    return 0


def _stack_images(batch: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Collate images with numpy: torch.stack's threaded copy stalls for 100+ ms on busy cores."""
    return torch.from_numpy(np.stack([image.numpy() for image, _ in batch]))


def _embed_chunks(
    backbone: Backbone,
    data_dir: Path,
    manifest: pd.DataFrame,
    chunks: list[list[str]],
    cache: ShardCache,
    image_size: int,
    batch_size: int,
    num_workers: int,
    provenance: dict,
    shown: bool = True,
) -> None:
    """Embed the items of ``chunks`` and store each chunk as one cache shard, as soon as it is done
    (``shown`` False: no progress of its own, e.g. one shard of a loop that reports per shard)."""
    ids = [item for chunk in chunks for item in chunk]
    dataset = PoolDataset(
        data_dir,
        ids=ids,
        verify_ids=True,
        transform=build_transform(image_size, backbone.mean, backbone.std),
        manifest=manifest,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_stack_images,
        pin_memory=backbone.device.type == "cuda",
    )
    pending: list[np.ndarray] = []
    pending_count = 0
    done_items = 0
    next_chunk = 0
    retain_freed_memory()
    steps = Progress(loader, f"embed {len(ids)} images with {backbone.name}", unit="batch", shown=shown)
    started = time.perf_counter()
    with torch.inference_mode():
        for images in steps:
            count = len(images)
            if count < batch_size:  # same shape for every forward pass
                images = torch.cat([images, images[-1:].expand(batch_size - count, *images.shape[1:])])
            features = backbone.model(images.to(backbone.device, non_blocking=True))[:count]
            pending.append(features.float().cpu().numpy())
            pending_count += count
            steps.note(images_per_s=round((done_items + pending_count) / (time.perf_counter() - started), 1))
            while next_chunk < len(chunks) and pending_count >= len(chunks[next_chunk]):
                block = np.concatenate(pending)
                take = len(chunks[next_chunk])
                cache.write(chunks[next_chunk], block[:take], provenance)
                done_items += take
                next_chunk += 1
                pending = [block[take:]] if take < len(block) else []
                pending_count = len(block) - take


@dataclass(frozen=True)
class ShardJob:
    """One embedding shard to compute where a task runs: its items and what their features depend on."""

    data_dir: str
    manifest: pd.DataFrame  # the shard's rows of the manifest (id, path, label)
    cache: str
    backbone: str
    weights: str
    weights_sha256: str
    image_size: int
    batch_size: int


@dataclass(frozen=True)
class ShardReport:
    """What an embedding task did, and where: for the run log and the stage's metadata."""

    shard: str
    items: int
    seconds: float
    host: str
    pid: int
    worker: str | None
    device: str


_PROCESS_BACKBONES: dict[tuple[str, str], Backbone] = {}


def _process_backbone(name: str, weights: str) -> Backbone:
    """The backbone of this process, loaded on first use (once per Dask worker process)."""
    key = (name, str(weights))
    if key not in _PROCESS_BACKBONES:
        _PROCESS_BACKBONES[key] = load_backbone(name, weights)
    return _PROCESS_BACKBONES[key]


def load_process_backbone(name: str, weights: str) -> None:
    """Load the backbone of this process ahead of its first shard (e.g. ``client.run`` on every
    worker before timing them)."""
    _process_backbone(name, weights)


def embed_shard(job: ShardJob) -> ShardReport:
    """The task of one shard: embed its items (re-hashing their pixels) and write the shard."""
    started = time.perf_counter()
    model = _process_backbone(job.backbone, job.weights)
    if model.weights_sha256 != job.weights_sha256:
        raise InvalidInputError(
            f"the weights of {job.backbone} here (sha256 {model.weights_sha256[:12]}) differ from the "
            f"driver's ({job.weights_sha256[:12]}): give every worker the same weights"
        )
    where = TaskReport.here()
    ids = job.manifest["id"].tolist()
    provenance = {"host": where.host, "pid": where.pid, "worker": where.worker, "device": str(model.device)}
    workers = _default_num_workers(model.device)
    cache = ShardCache(job.cache)
    _embed_chunks(
        model,
        Path(job.data_dir),
        job.manifest,
        [ids],
        cache,
        job.image_size,
        job.batch_size,
        workers,
        provenance,
        shown=False,  # the driver's loop over shards reports
    )
    return ShardReport(
        shard=shard_name(ids),
        items=len(ids),
        seconds=round(time.perf_counter() - started, 3),
        host=where.host,
        pid=where.pid,
        worker=where.worker,
        device=str(model.device),
    )


def _write_features(path: Path, ids: list[str], cache: ShardCache, feature_dim: int) -> None:
    """Assemble ``features.npy`` in manifest order from the shards, one shard in memory at a time."""
    row_of = {item_id: row for row, item_id in enumerate(ids)}
    written = np.zeros(len(ids), dtype=bool)
    row_bytes = feature_dim * 4
    with atomic_file(path) as temporary:
        with open(temporary, "wb") as stream:
            np.lib.format.write_array_header_1_0(
                stream, {"descr": "<f4", "fortran_order": False, "shape": (len(ids), feature_dim)}
            )
            header_length = stream.tell()
            stream.truncate(header_length + len(ids) * row_bytes)
            descriptor = stream.fileno()
            for shard in cache.shards():
                shard_ids, features = cache.read(shard)
                shard_ids = shard_ids.tolist()
                wanted = [(row_of[i], k) for k, i in enumerate(shard_ids) if i in row_of]
                if not wanted:
                    continue
                if features.shape != (len(shard_ids), feature_dim):
                    raise InvalidInputError(
                        f"cache shard {shard} has features of shape {features.shape}, "
                        f"expected ({len(shard_ids)}, {feature_dim})"
                    )
                features = np.ascontiguousarray(features, dtype="<f4")
                for row, k in wanted:
                    if not written[row]:
                        os.pwrite(descriptor, features[k].tobytes(), header_length + row * row_bytes)
                        written[row] = True
        if not written.all():
            missing = ids[int(np.argmin(written))]
            raise InvalidInputError(
                f"embedding cache {cache.directory} lacks item {missing} "
                f"({int((~written).sum())} missing); was it modified during the run?"
            )


def _index_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "split", "label"])
    for item_id, split, label in zip(frame["id"], frame["split"], frame["label"]):
        writer.writerow([item_id, split, "" if pd.isna(label) else int(label)])
    return buffer.getvalue().encode()


def _output_is_current(out_dir: Path, meta_bytes: bytes, num_items: int, feature_dim: int) -> bool:
    """True when ``out_dir`` already holds a complete output for exactly this meta."""
    meta_path, features_path = out_dir / META_NAME, out_dir / FEATURES_NAME
    if not (meta_path.is_file() and features_path.is_file() and (out_dir / INDEX_NAME).is_file()):
        return False
    if meta_path.read_bytes() != meta_bytes:
        return False
    features = np.load(features_path, mmap_mode="r")
    return features.shape == (num_items, feature_dim) and features.dtype == np.float32


def embed_pool(
    data_dir: Path,
    out_dir: Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | Path = "packaged",
    image_size: int = DEFAULT_IMAGE_SIZE,
    batch_size: int = 64,
    shard_size: int = 1024,
    cache_dir: Path | str | None = None,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    compute: Compute | None = None,
) -> EmbeddingInfo:
    """Embed every item of the pool in ``data_dir`` into ``out_dir`` (see the module docstring).

    ``cache_dir`` (a folder or an fsspec URL) defaults to ``<out_dir's parent>/embedding_cache``;
    ``num_workers`` None picks in-process decoding on CPU and worker processes with a GPU;
    ``compute`` runs the shards (default: this process). On a Dask cluster every worker must reach
    ``data_dir``, the images it references and the cache.
    """
    for what, value in (("image_size", image_size), ("batch_size", batch_size), ("shard_size", shard_size)):
        if not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{what} must be a positive integer, got {value!r}")
    if num_workers is not None and num_workers < 0:
        raise InvalidInputError(f"num_workers must be >= 0, got {num_workers}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    frame = read_manifest(data_dir)
    if frame.empty:
        raise InvalidInputError(f"the pool in {data_dir} is empty")
    ids = frame["id"].tolist()
    model = load_backbone(backbone, weights, device)
    config = embedding_config(model, image_size)
    config_hash = _sha256_json(config)
    meta = {
        **config,
        "config_sha256": config_hash,
        "weights_source": model.weights_source,
        "data_version": hashlib.sha256((data_dir / MANIFEST_NAME).read_bytes()).hexdigest(),
        "num_items": len(ids),
        "splits": {str(k): int(v) for k, v in frame["split"].value_counts().sort_index().items()},
    }
    cache_root = str(cache_dir) if cache_dir is not None else str(out_dir.parent / "embedding_cache")
    cache = ShardCache(f"{cache_root.rstrip('/')}/{config_hash[:16]}", config)
    remove_leftovers(out_dir)  # what a killed run half-wrote; the finished files are all still there
    if not cache.remote:
        remove_leftovers(Path(cache.root))

    cached = cache.cached_ids()
    missing = [item_id for item_id in ids if item_id not in cached]
    reports: list[ShardReport] = []
    if missing:
        chunks = [missing[start : start + shard_size] for start in range(0, len(missing), shard_size)]
        compute = compute or LocalCompute()
        if compute.shares_memory and (model.device.type == "cuda" or num_workers):
            # A GPU in this process: one stream, decoded by worker processes, keeps it busy.
            workers = _default_num_workers(model.device) if num_workers is None else num_workers
            reports = _embed_here(model, data_dir, frame, chunks, cache, image_size, batch_size, workers)
        else:
            if compute.shares_memory:
                _PROCESS_BACKBONES[(model.name, str(weights))] = model  # the tasks here use this one
            reports = _embed_tasks(compute, model, str(weights), data_dir, frame, chunks, cache, image_size, batch_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    meta_bytes = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    if missing or not _output_is_current(out_dir, meta_bytes, len(ids), model.feature_dim):
        (out_dir / META_NAME).unlink(missing_ok=True)  # meta.json, written last, marks completeness
        _write_features(out_dir / FEATURES_NAME, ids, cache, model.feature_dim)
        write_atomic(out_dir / INDEX_NAME, _index_bytes(frame))
        write_atomic(out_dir / META_NAME, meta_bytes)
    return EmbeddingInfo(
        out_dir=out_dir,
        cache_dir=cache.directory,
        num_items=len(ids),
        feature_dim=model.feature_dim,
        computed=len(missing),
        reused=len(ids) - len(missing),
        config_hash=config_hash,
        meta=meta,
        shards=reports,
    )


def _embed_here(
    model: Backbone,
    data_dir: Path,
    frame: pd.DataFrame,
    chunks: list[list[str]],
    cache: ShardCache,
    image_size: int,
    batch_size: int,
    num_workers: int,
) -> list[ShardReport]:
    """Every shard in this process, streamed through one loader (a GPU here, or decoding workers)."""
    started = time.perf_counter()
    where = TaskReport.here()
    provenance = {"host": where.host, "pid": where.pid, "worker": None, "device": str(model.device)}
    _embed_chunks(model, data_dir, frame, chunks, cache, image_size, batch_size, num_workers, provenance)
    seconds = round(time.perf_counter() - started, 3)
    return [
        ShardReport(shard_name(chunk), len(chunk), seconds, where.host, where.pid, None, str(model.device))
        for chunk in chunks
    ]


def _embed_tasks(
    compute: Compute,
    model: Backbone,
    weights: str,
    data_dir: Path,
    frame: pd.DataFrame,
    chunks: list[list[str]],
    cache: ShardCache,
    image_size: int,
    batch_size: int,
) -> list[ShardReport]:
    """One task per shard, one torch thread each (the features of a CPU forward pass depend on the
    thread count, so every process computes them alike), run where ``compute`` says: on the
    threads of this process or on a cluster's workers. The driver only collects their reports."""
    rows = frame.set_index("id", drop=False)[["id", "path", "label"]]
    per_item = 4 * 3 * image_size * image_size + 4 * model.feature_dim
    tasks = [
        Task(
            name=f"embed-{shard_name(chunk).removesuffix('.npz')}",
            function=embed_shard,
            args=(
                ShardJob(
                    data_dir=str(data_dir.resolve()),
                    manifest=rows.loc[chunk].reset_index(drop=True),
                    cache=cache.location if cache.remote else str(Path(cache.root).resolve()),
                    backbone=model.name,
                    weights=weights,
                    weights_sha256=model.weights_sha256,
                    image_size=image_size,
                    batch_size=batch_size,
                ),
            ),
            memory_bytes=per_item * batch_size + (1 << 28),
        )
        for chunk in chunks
    ]
    reports: list[ShardReport] = []
    started = time.perf_counter()
    done = 0
    steps = Progress(
        Counted(compute.as_completed(tasks), len(tasks)),
        f"embed {sum(map(len, chunks))} images in {len(chunks)} shards with {model.name}",
        unit="shard",
    )
    for _, report in steps:
        reports.append(report)
        done += report.items
        steps.note(images_per_s=round(done / (time.perf_counter() - started), 1))
    return sorted(reports, key=lambda report: report.shard)


def load_embeddings(out_dir: Path) -> Embeddings:
    """Read what :func:`embed_pool` wrote; ``features`` is a read-only memmap."""
    out_dir = Path(out_dir)
    for name in (META_NAME, FEATURES_NAME, INDEX_NAME):
        if not (out_dir / name).is_file():
            raise MissingFileError(f"{out_dir / name} is missing; run `bilaf embed` first")
    meta = json.loads((out_dir / META_NAME).read_text())
    features = np.load(out_dir / FEATURES_NAME, mmap_mode="r")
    with open(out_dir / INDEX_NAME, newline="") as stream:
        rows = list(csv.DictReader(stream))
    ids = np.array([row["id"] for row in rows], dtype=str)
    splits = np.array([row["split"] for row in rows], dtype=str)
    labels = np.array([int(row["label"]) if row["label"] else -1 for row in rows], dtype=np.int64)
    if features.dtype != np.float32 or features.ndim != 2 or features.shape[0] != len(ids):
        raise InvalidInputError(
            f"{out_dir / FEATURES_NAME} has shape {features.shape} / dtype {features.dtype}; "
            f"expected float32 ({len(ids)}, d) to match {INDEX_NAME}"
        )
    if features.shape[1] != meta.get("feature_dim"):
        raise InvalidInputError(
            f"{out_dir / FEATURES_NAME} has {features.shape[1]} columns but meta.json "
            f"says feature_dim {meta.get('feature_dim')}"
        )
    return Embeddings(ids=ids, features=features, labels=labels, splits=splits, meta=meta)
