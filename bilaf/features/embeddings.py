"""Sharded, incremental, resumable embedding of a prepared pool.

Work is cached per *embedding configuration* (backbone name, weights hash, input size,
normalisation, interpolation): ``<cache_dir>/<config hash>/shard-<hash>.npz`` files, each holding
``ids`` and float32 ``features`` of up to ``shard_size`` items, written atomically (temp file +
``os.replace``). Items already in a shard are never recomputed, so a killed run loses at most the
shard in progress, and a grown pool only embeds its new items.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bilaf import defaults
from bilaf.artifacts import atomic_file, remove_leftovers, write_atomic
from bilaf.errors import InvalidInputError, MissingFileError
from bilaf.features._memory import retain_freed_memory
from bilaf.features.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from bilaf.features.datasets import PoolDataset
from bilaf.features.pool import MANIFEST_NAME, read_manifest
from bilaf.features.transforms import build_transform
from bilaf.progress import Progress

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


class _ShardCache:
    """Completed shards of one configuration: ``shard-<hash of ids>.npz`` with ids + features."""

    def __init__(self, directory: Path, config: dict):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        config_file = directory / "config.json"
        if not config_file.exists():
            write_atomic(config_file, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())

    def shards(self) -> list[Path]:
        return sorted(self.directory.glob("shard-*.npz"))

    def cached_ids(self) -> set[str]:
        """Ids of every readable shard. A shard that cannot be read whole (truncated, garbled: zip
        CRC) is set aside as ``*.corrupt`` with a warning, and its items are embedded again."""
        cached: set[str] = set()
        for shard in self.shards():
            try:
                with np.load(shard) as content:
                    ids, features = content["ids"], content["features"]
                if features.shape[0] != len(ids):
                    raise InvalidInputError(f"{len(ids)} ids but {features.shape[0]} feature rows")
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                quarantined = shard.with_suffix(".corrupt")
                os.replace(shard, quarantined)
                warnings.warn(
                    f"embedding cache shard {shard} is unreadable ({type(error).__name__}: {error}); "
                    f"moved to {quarantined.name}, its items are embedded again",
                    stacklevel=2,
                )
                continue
            cached.update(ids.tolist())
        return cached

    def write(self, ids: list[str], features: np.ndarray) -> None:
        name = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
        buffer = io.BytesIO()
        np.savez(buffer, ids=np.asarray(ids), features=features.astype(np.float32, copy=False))
        write_atomic(self.directory / f"shard-{name}.npz", buffer.getvalue())


def _default_num_workers(device: torch.device) -> int:
    # Measured on 2 CPU cores (benchmarks/embedding_throughput.py): a decoding worker steals a
    # core from the forward pass, so decode in-process there; with a GPU, decoding is the bottleneck.
    if device.type == "cuda":
        return min(8, os.cpu_count() or 1)
    return 0


def _stack_images(batch: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Collate images with numpy: torch.stack's threaded copy stalls for 100+ ms on busy cores."""
    return torch.from_numpy(np.stack([image.numpy() for image, _ in batch]))


def _compute_missing(
    backbone: Backbone,
    data_dir: Path,
    ids: list[str],
    cache: _ShardCache,
    image_size: int,
    batch_size: int,
    shard_size: int,
    num_workers: int,
) -> None:
    """Embed ``ids`` and store them in the cache, one shard per ``shard_size`` items."""
    dataset = PoolDataset(
        data_dir, ids=ids, verify_ids=True, transform=build_transform(image_size, backbone.mean, backbone.std)
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
    position = 0
    retain_freed_memory()
    steps = Progress(loader, f"embed {len(ids)} images with {backbone.name}, {batch_size} per step")
    started = time.perf_counter()
    with torch.inference_mode():
        for images in steps:
            count = len(images)
            if count < batch_size:  # same shape for every forward pass
                images = torch.cat([images, images[-1:].expand(batch_size - count, *images.shape[1:])])
            features = backbone.model(images.to(backbone.device, non_blocking=True))[:count]
            pending.append(features.float().cpu().numpy())
            pending_count += count
            steps.note(images_per_s=round((position + pending_count) / (time.perf_counter() - started), 1))
            while pending_count >= shard_size or (pending_count and position + pending_count == len(ids)):
                block = np.concatenate(pending)
                take = min(shard_size, len(block))
                cache.write(ids[position : position + take], block[:take])
                position += take
                pending = [block[take:]] if take < len(block) else []
                pending_count = len(block) - take


def _write_features(path: Path, ids: list[str], cache: _ShardCache, feature_dim: int) -> None:
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
                with np.load(shard) as content:
                    shard_ids = content["ids"].tolist()
                    wanted = [(row_of[i], k) for k, i in enumerate(shard_ids) if i in row_of]
                    if not wanted:
                        continue
                    features = content["features"]
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
    cache_dir: Path | None = None,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
) -> EmbeddingInfo:
    """Embed every item of the pool in ``data_dir`` into ``out_dir`` (see the module docstring).

    ``cache_dir`` defaults to ``<out_dir's parent>/embedding_cache``; ``num_workers`` None picks
    in-process decoding on CPU and worker processes with a GPU.
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
    cache_root = Path(cache_dir) if cache_dir is not None else out_dir.parent / "embedding_cache"
    cache = _ShardCache(cache_root / config_hash[:16], config)
    remove_leftovers(out_dir)  # what a killed run half-wrote; the finished files are all still there
    remove_leftovers(cache.directory)

    cached = cache.cached_ids()
    missing = [item_id for item_id in ids if item_id not in cached]
    if missing:
        workers = _default_num_workers(model.device) if num_workers is None else num_workers
        _compute_missing(model, data_dir, missing, cache, image_size, batch_size, shard_size, workers)

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
    )


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
