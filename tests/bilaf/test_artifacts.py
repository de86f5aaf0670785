"""The one atomic writer: a failed write leaves the old file whole, and nobody else's temporary."""

import os

import pytest

from bilaf import artifacts


def test_write_if_changed_writes_only_new_bytes(tmp_path):
    target = tmp_path / "sub" / "manifest.csv"
    assert artifacts.write_if_changed(target, b"a,b\n1,2\n")
    assert target.read_bytes() == b"a,b\n1,2\n"
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    assert not artifacts.write_if_changed(target, b"a,b\n1,2\n")
    assert target.stat().st_mtime_ns == 1_000_000_000  # untouched: DVC and rsync see no change
    assert artifacts.write_if_changed(target, b"a,b\n1,3\n")
    assert target.read_bytes() == b"a,b\n1,3\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.csv"]


def test_failed_atomic_file_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "features.npy"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="killed"):
        with artifacts.atomic_file(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["features.npy"]


def test_write_atomic_leaves_another_writers_temporary_alone(tmp_path):
    target = tmp_path / "shard-abc.npz"
    other = tmp_path / ".shard-abc.npz.tmp-999999999"  # another process writing the same shard
    other.write_bytes(b"theirs")
    assert artifacts.temporary_sibling(target) != other
    artifacts.write_atomic(target, b"mine")
    assert target.read_bytes() == b"mine"
    assert other.read_bytes() == b"theirs"


def test_atomic_output_replaces_a_folder_and_clears_a_killed_writers_staging(tmp_path):
    output = tmp_path / "boundary_set"
    output.mkdir()
    (output / "old.csv").write_text("old")
    killed = tmp_path / ".boundary_set.killed"
    killed.mkdir()
    with artifacts.atomic_output(output) as staging:
        staging.mkdir()
        (staging / "selection.csv").write_text("new")
    assert sorted(p.name for p in output.iterdir()) == ["selection.csv"]
    assert not killed.exists()
    with pytest.raises(RuntimeError, match="produced no output"):
        with artifacts.atomic_output(output):
            pass
    assert (output / "selection.csv").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boundary_set"]


def test_remove_temporaries_deletes_killed_writes_at_any_depth_and_nothing_else(tmp_path):
    image = tmp_path / "train" / "3" / "abc.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"png")
    killed = artifacts.temporary_sibling(image)  # a sync killed while writing this image
    killed.write_bytes(b"half")
    hidden = tmp_path / ".keep"  # a hidden file that is no temporary of ours
    hidden.write_text("x")
    artifacts.remove_temporaries(tmp_path)
    assert not killed.exists()
    assert image.read_bytes() == b"png" and hidden.exists()
    artifacts.remove_temporaries(tmp_path / "absent")  # a folder not made yet: nothing to do
