"""Selection over shards: the same picks whatever runs the shards, and whatever each process kept.

The Dask side of this (real scheduler and worker processes) is in
tests/dagster_project/pipeline/test_cluster.py (heavy tier); here the tasks run in this process, on
one or several threads, with their per-process caches kept or dropped between calls.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from bilaf import compute as compute_module
from bilaf.compute import LocalCompute, Task
from bilaf.errors import InvalidInputError, MissingFileError
from bilaf.selection import _geometry, denoise, select, select_cores
from bilaf.selection.shards import MIN_SHARD_ROWS, SHARD_BYTES, FeatureRows, shard_bounds

CASES = {
    "activeft, K = B": dict(method="activeft"),
    "bilaf, K < B": dict(method="bilaf", n_cores=12),
    "activeft with labeled and pending anchors": dict(method="activeft", known=True),
    "bilaf with labeled and pending anchors": dict(method="bilaf", n_cores=12, known=True),
}


class ForgetfulCompute(LocalCompute):
    """Every task runs as if on a fresh worker: the per-process caches are dropped before each call."""

    def _forget(self) -> None:
        compute_module._STATE.clear()

    def map(self, tasks, *, single_threaded=True):
        self._forget()
        return super().map(tasks, single_threaded=single_threaded)

    def as_completed(self, tasks, *, single_threaded=True):
        self._forget()
        return super().as_completed(tasks, single_threaded=single_threaded)


def _known(n_items: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = np.full(n_items, -1)
    labeled = rng.choice(n_items, 40, replace=False)
    labels[labeled[:20]] = 0  # one class only: ActiveFT anchors and one-shot BiLAF around them
    pending = np.setdiff1d(np.arange(n_items), labeled)[:25]
    return labels, pending


def _run(features, compute, method: str, known: bool = False, **options) -> tuple[list[int], float]:
    """The picks and ActiveFT's final loss (bits compared: the whole trajectory must agree)."""
    extra = {}
    if known:
        extra["labels"], extra["pending"] = _known(len(features), np.random.default_rng(5))
    result = select(features, 48, method, seed=3, n_iterations=40, compute=compute, **options, **extra)
    return list(result.indices), result.params.get("core_params", result.params)["final_loss"]


@pytest.mark.parametrize("case", list(CASES))
def test_picks_do_not_depend_on_threads_files_or_what_a_process_kept(mixture, tmp_path, case):
    features, _ = mixture(3000, 12, 24, 2.0, 0)
    np.save(tmp_path / "features.npy", features)
    options = dict(CASES[case])
    known = options.pop("known", False)
    baseline = _run(features, LocalCompute(threads=1), known=known, **options)
    on_file = FeatureRows.of_file(tmp_path / "features.npy")
    assert _run(features, LocalCompute(threads=2), known=known, **options) == baseline
    assert _run(on_file, LocalCompute(threads=2), known=known, **options) == baseline
    assert _run(on_file, ForgetfulCompute(threads=2), known=known, **options) == baseline


def test_rows_of_a_file_select_like_those_rows_in_memory(mixture, tmp_path):
    features, _ = mixture(2000, 8, 16, 2.0, 1)
    np.save(tmp_path / "features.npy", features)
    rows = np.random.default_rng(0).permutation(2000)[:1500]
    in_memory = select_cores(features[rows], 20, "activeft", seed=0, n_iterations=30)
    from_file = select_cores(
        FeatureRows.of_file(tmp_path / "features.npy", rows), 20, "activeft", seed=0, n_iterations=30
    )
    assert from_file.indices.tolist() == in_memory.indices.tolist()
    assert from_file.params["final_loss"] == in_memory.params["final_loss"]
    pool = denoise(FeatureRows.of_file(tmp_path / "features.npy", rows), in_memory.indices)
    assert np.array_equal(pool.kept, denoise(features[rows], in_memory.indices).kept)


def test_bad_rows_in_a_file_are_refused_naming_the_row(mixture, tmp_path):
    features, _ = mixture(1200, 4, 8, 2.0, 2)
    features[700] = np.nan
    np.save(tmp_path / "nan.npy", features)
    with pytest.raises(InvalidInputError, match="features row 700 contains NaN"):
        select_cores(FeatureRows.of_file(tmp_path / "nan.npy"), 5, "activeft", n_iterations=1)
    features[700] = features[3]
    np.save(tmp_path / "duplicate.npy", features)
    with pytest.raises(InvalidInputError, match="features rows 3 and 700 are identical"):
        select_cores(FeatureRows.of_file(tmp_path / "duplicate.npy"), 5, "activeft", n_iterations=1)
    with pytest.raises(InvalidInputError, match="n_cores 2000 is larger than the pool"):
        select_cores(FeatureRows.of_file(tmp_path / "duplicate.npy"), 2000, "activeft")


def test_shards_follow_the_pool_alone():
    """The cut into shards (hence the order of the float sums) is a rule of the pool's shape."""
    assert shard_bounds(100, 4 * 1281) == [(0, 100)]
    bounds = shard_bounds(200_000, 4 * (1280 + 1000))
    assert bounds[0] == (0, bounds[0][1]) and bounds[-1][1] == 200_000
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert max(stop - start for start, stop in bounds) * 4 * (1280 + 1000) <= SHARD_BYTES
    assert len(shard_bounds(10_000, 64)) == 8 and all(stop - start >= MIN_SHARD_ROWS for start, stop in bounds)


def test_rows_held_in_this_process_are_not_sent_to_a_cluster(mixture):
    features, _ = mixture(100, 2, 4, 1.0, 0)
    with pytest.raises(InvalidInputError, match="cannot be sent to a Dask cluster"):
        pickle.dumps(FeatureRows.of_array(features).shard(0, 10))


def test_a_worker_without_the_features_file_says_so(mixture, tmp_path):
    """A worker on a host that does not mount the project names the file and the host."""
    features, _ = mixture(300, 4, 4, 1.0, 0)
    path = tmp_path / "features.npy"
    np.save(path, features.astype(np.float32))
    source = FeatureRows.of_file(path)
    path.unlink()  # as seen from a worker that does not share the driver's filesystem
    with pytest.raises(MissingFileError, match=r"features\.npy is missing on .*every worker reads"):
        select_cores(source, 5, "activeft", seed=0, n_iterations=2, compute=LocalCompute(threads=1))


def test_selection_tasks_run_with_one_torch_thread_embedding_tasks_with_all():
    import torch

    def threads() -> int:
        return torch.get_num_threads()

    tasks = [Task(f"t{i}", threads) for i in range(3)]
    compute = LocalCompute(threads=2)
    with compute_module.torch_threads(2):
        assert compute.map(tasks) == [1, 1, 1]
        assert compute.map(tasks, single_threaded=False) == [2, 2, 2]
        assert sorted(result for _, result in compute.as_completed(tasks)) == [1, 1, 1]
        assert torch.get_num_threads() == 2


def test_a_tasks_first_matmul_already_runs_on_one_mkl_thread(capfd):
    """The rival distances of a boundary task are its first MKL calls. torch sets a thread's MKL
    count only at its first parallel op, so without a set-up of its own a fresh pool thread ran them
    on MKL's process-wide count (the cores here, 1 on a Dask worker): on Intel CPUs another sgemm
    path, other last bits in the written boundary scores (issue 32). MKL says how many threads each
    call used."""
    import torch

    if not torch.backends.mkl.is_available():
        pytest.skip("torch without MKL")
    rng = np.random.default_rng(0)
    # 10 cores, as in the heavy test that caught it: no op of the task before the sgemm is large
    # enough to be a parallel op, so nothing but the task's own set-up gives MKL its count
    points, centres = rng.normal(size=(300, 1280)).astype(np.float32), rng.normal(size=(10, 1280)).astype(np.float32)
    tasks = [Task(f"rivals-{i}", _geometry.nearest_centres, (points, centres, 2, False)) for i in range(4)]
    capfd.readouterr()
    with compute_module.torch_threads(2), torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
        LocalCompute(threads=2).map(tasks)
    calls = [line for line in capfd.readouterr().out.splitlines() if line.startswith("MKL_VERBOSE SGEMM")]
    assert len(calls) == len(tasks)
    assert [call.rsplit("NThr:", 1)[1].strip() for call in calls] == ["1"] * len(tasks)


def test_task_caches_keep_the_latest_runs_only():
    built = []

    def build(name):
        built.append(name)
        return name

    for run in ("a", "b", "c"):
        compute_module.task_state(run, "key", lambda run=run: build(run))
    compute_module.task_state("c", "key", lambda: build("again"))
    assert built == ["a", "b", "c"]
    assert "a" not in compute_module._STATE and {"b", "c"} <= set(compute_module._STATE)
    compute_module.drop_task_state("b")
    compute_module.drop_task_state("c")
