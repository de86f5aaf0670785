"""One writer at a time per project folder: `bilaf run`, DVC stages (`bilaf stage`), `bilaf ingest`
and `bilaf labels import` hold an exclusive lock on <project>/.bilaf.lock while they write."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from bilaf.errors import BilafError

LOCK_NAME = ".bilaf.lock"


class ProjectBusyError(BilafError, ValueError):
    """Another process is writing this project; a user error to report, not a crash."""


@contextlib.contextmanager
def project_lock(root: Path, holder: str) -> Iterator[None]:
    """Hold the project's write lock for the block; ProjectBusyError naming the holder if taken.

    The lock belongs to the open file, so a killed holder releases it with its process.
    """
    path = Path(root) / LOCK_NAME
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise ProjectBusyError(
                f"{root} is being written by {handle.read().strip() or 'another process'}; "
                "wait for it to finish, then run again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"`{holder}` (pid {os.getpid()})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
