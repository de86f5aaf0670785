"""Embedding store: correct rows, deterministic bytes, incremental and resumable caching."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bilaf.compute import LocalCompute, torch_threads
from bilaf.compute import _run_task as run_task
from bilaf.features import (
    PoolDataset,
    build_transform,
    embed_pool,
    ingest_folder,
    load_embeddings,
    read_manifest,
    sync_pool,
)
from bilaf.features.embeddings import ShardCache

SIZE = 64  # small input keeps the tests fast; the default (128) is covered by the benchmark
OUTPUT_FILES = ("features.npy", "index.csv", "meta.json")


def _embed(data_dir: Path, work: Path, **options):
    options = {"image_size": SIZE, "batch_size": 8, "shard_size": 16, **options}
    return embed_pool(
        data_dir,
        work / "out",
        backbone="tf_efficientnet_lite0",
        weights="packaged",
        cache_dir=work / "cache",
        **options,
    )


def _bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in OUTPUT_FILES}


@pytest.fixture(scope="module")
def reference(small_pool, tmp_path_factory):
    """One complete embedding run of the small pool (output + cache); treat as read-only."""
    work = tmp_path_factory.mktemp("reference")
    info = _embed(small_pool, work)
    return work, info


def test_rows_follow_the_manifest_and_match_a_direct_forward(small_pool, reference, backbone):
    work, info = reference
    assert (info.computed, info.reused, info.num_items, info.feature_dim) == (64, 0, 64, 1280)
    embeddings = load_embeddings(work / "out")
    frame = read_manifest(small_pool)
    assert embeddings.ids.tolist() == frame["id"].tolist()
    assert embeddings.splits.tolist() == frame["split"].tolist()
    assert embeddings.labels.tolist() == frame["label"].astype(int).tolist()
    assert embeddings.features.dtype == np.float32 and embeddings.features.shape == (64, 1280)

    dataset = PoolDataset(small_pool, transform=build_transform(SIZE, backbone.mean, backbone.std))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.inference_mode(), torch_threads(1):  # embedding tasks run with one torch thread
        direct = torch.cat([backbone.model(images[i : i + 8].to(backbone.device)) for i in range(0, 64, 8)])
    np.testing.assert_array_equal(embeddings.features, direct.cpu().numpy())
    assert np.unique(embeddings.features.round(3), axis=0).shape[0] == 64  # distinct items, distinct rows

    meta = embeddings.meta
    assert meta["backbone"] == "tf_efficientnet_lite0" and meta["image_size"] == SIZE
    assert meta["weights_sha256"] == backbone.weights_sha256 and meta["mean"] == [0.5, 0.5, 0.5]
    assert meta["num_items"] == 64 and meta["splits"] == {"test": 16, "train": 48}
    assert len(meta["data_version"]) == 64


def test_output_is_byte_identical_from_a_fresh_cache(small_pool, reference, tmp_path):
    work, _ = reference
    info = _embed(small_pool, tmp_path)
    assert info.computed == 64
    assert _bytes(tmp_path / "out") == _bytes(work / "out")


def test_cached_items_are_never_recomputed(small_pool, reference, tmp_path):
    work, _ = reference
    copy = tmp_path / "work"
    shutil.copytree(work / "cache", copy / "cache")
    info = _embed(small_pool, copy)
    assert (info.computed, info.reused) == (0, 64)
    assert _bytes(copy / "out") == _bytes(work / "out")
    stamp = (copy / "out" / "features.npy").stat().st_mtime_ns
    again = _embed(small_pool, copy)
    assert again.computed == 0 and (copy / "out" / "features.npy").stat().st_mtime_ns == stamp


def test_a_changed_pool_only_embeds_its_new_items(small_pool, reference, tmp_path):
    work, _ = reference
    # New pool: 40 images of the small pool plus 8 images it does not have, as an image folder.
    newcomers = tmp_path / "newcomers"
    sync_pool(newcomers, "fashion-mnist", train_size=8, test_size=0, seed=1)
    folder = tmp_path / "folder"
    folder.mkdir()
    kept = read_manifest(small_pool).iloc[:40]
    added = read_manifest(newcomers)
    assert not set(added["id"]) & set(read_manifest(small_pool)["id"])
    for pool, frame in ((small_pool, kept), (newcomers, added)):
        for path in frame["path"]:
            shutil.copy(pool / path, folder)
    other = tmp_path / "data"
    ingest_folder(other, folder)
    assert set(read_manifest(other)["id"]) == set(kept["id"]) | set(added["id"])

    copy = tmp_path / "work"
    shutil.copytree(work / "cache", copy / "cache")
    info = _embed(other, copy)
    assert (info.computed, info.reused) == (8, 40)
    fresh = _embed(other, tmp_path / "fresh")
    assert fresh.computed == 48
    assert _bytes(copy / "out") == _bytes(tmp_path / "fresh" / "out")


def test_a_failed_run_keeps_finished_shards(small_pool, reference, tmp_path):
    work, _ = reference
    pool = tmp_path / "data"
    shutil.copytree(small_pool, pool)
    broken = pool / read_manifest(pool)["path"].iloc[40]
    original = broken.read_bytes()
    broken.write_bytes(original[:30])  # truncated PNG: the run dies in the third shard
    with pytest.raises(ValueError, match=broken.name):
        _embed(pool, tmp_path)
    assert not (tmp_path / "out" / "meta.json").exists()
    broken.write_bytes(original)
    resumed = _embed(pool, tmp_path)
    # The shards finished before the failure (items 0-15 and 16-31 at least) are kept; the broken one is redone.
    assert resumed.reused >= 32 and resumed.computed >= 16 and resumed.computed + resumed.reused == 64
    assert _bytes(tmp_path / "out") == _bytes(work / "out")


def test_features_do_not_depend_on_batch_composition(small_pool, reference, tmp_path):
    work, _ = reference
    info = _embed(small_pool, tmp_path, batch_size=24, shard_size=40)
    # Another batch size is another input shape, so other conv kernels: equal to float rounding only.
    # (At one batch size the bytes are equal whoever shares the batch: shards and batches need not align.)
    np.testing.assert_allclose(
        load_embeddings(tmp_path / "out").features, load_embeddings(work / "out").features, rtol=1e-4, atol=1e-5
    )
    assert info.config_hash == json.loads((work / "out" / "meta.json").read_text())["config_sha256"]


def test_a_new_configuration_gets_its_own_cache(small_pool, reference, tmp_path):
    work, info = reference
    copy = tmp_path / "work"
    shutil.copytree(work / "cache", copy / "cache")
    other = embed_pool(small_pool, copy / "out", image_size=32, batch_size=8, cache_dir=copy / "cache")
    assert other.computed == 64 and other.config_hash != info.config_hash
    assert sorted(p.name for p in (copy / "cache").iterdir()) == sorted([info.config_hash[:16], other.config_hash[:16]])


def test_split_subset_and_bad_inputs(reference, tmp_path):
    work, _ = reference
    train = load_embeddings(work / "out").subset("train")
    assert len(train) == 48 and isinstance(train.features, np.ndarray) and set(train.splits) == {"train"}
    with pytest.raises(ValueError, match="no items with split 'val'"):
        load_embeddings(work / "out").subset("val")
    with pytest.raises(ValueError, match="meta.json is missing"):
        load_embeddings(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        embed_pool(tmp_path / "no-data", tmp_path / "out")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        embed_pool(tmp_path, tmp_path / "out", batch_size=0)


class WorkerLikeCompute(LocalCompute):
    """The cluster path without a cluster: every task is pickled (as it is sent to a worker) and
    run in this process, which then counts as a worker (no shared memory)."""

    kind = "worker-like"

    def as_completed(self, tasks, *, single_threaded=True):
        for position, task in enumerate(tasks):
            function, args = pickle.loads(pickle.dumps((task.function, task.args)))
            yield position, run_task(function, args, single_threaded)  # what a Dask worker runs

    def map(self, tasks, *, single_threaded=True):
        return [result for _, result in self.as_completed(tasks, single_threaded=single_threaded)]


def test_shard_tasks_as_workers_run_them_give_the_same_bytes(small_pool, reference, tmp_path):
    work, _ = reference
    info = _embed(small_pool, tmp_path, compute=WorkerLikeCompute())
    assert info.computed == 64 and len(info.shards) == 4
    assert {shard.items for shard in info.shards} == {16}
    assert _bytes(tmp_path / "out") == _bytes(work / "out")
    cache = ShardCache(info.cache_dir)
    assert {cache.provenance(name)["pid"] for name in cache.shards()} == {os.getpid()}


def test_features_do_not_depend_on_the_thread_count(small_pool, reference, tmp_path):
    """What makes a one-thread worker's shard equal to a many-thread process's."""
    work, _ = reference
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if previous > 1 else 2)
        _embed(small_pool, tmp_path)
    finally:
        torch.set_num_threads(previous)
    assert _bytes(tmp_path / "out") == _bytes(work / "out")


def test_the_cache_can_live_under_an_fsspec_url(small_pool, reference, tmp_path):
    """An object store (here fsspec's in-memory one) holds the shards; a corrupt one is set aside."""
    work, _ = reference
    url = f"memory://bilaf-test-{tmp_path.name}"
    first = embed_pool(small_pool, tmp_path / "out", image_size=SIZE, batch_size=8, shard_size=16, cache_dir=url)
    assert first.computed == 64 and str(first.cache_dir).startswith("memory://")
    assert _bytes(tmp_path / "out") == _bytes(work / "out")
    cache = ShardCache(first.cache_dir)
    name = cache.shards()[0]
    cache.fs.pipe_file(cache._path(name), b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable"):
        again = embed_pool(small_pool, tmp_path / "again", image_size=SIZE, batch_size=8, shard_size=16, cache_dir=url)
    assert (again.computed, again.reused) == (16, 48)
    assert _bytes(tmp_path / "again") == _bytes(work / "out")
    assert any(found.endswith(".corrupt") for found in cache.fs.ls(cache.root, detail=False))
