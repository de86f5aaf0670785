"""Selection progress in the Dagster run log: at most ten lines per loop, not one per step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bilaf.progress import ProgressEvent

LOGGED_PARTS = 10  # one line each time another tenth of a loop's steps is done


class InfoLog(Protocol):
    def info(self, msg: str) -> None: ...


class ProgressLog:
    """A ``reporting_progress`` listener writing to ``log`` (a step's ``context.log``) each time another
    tenth of a loop's steps is done (the last step included), with the values noted on that step."""

    def __init__(self, log: InfoLog) -> None:
        self._log = log

    def __call__(self, event: ProgressEvent) -> None:
        if event.done * LOGGED_PARTS // event.total == (event.done - 1) * LOGGED_PARTS // event.total:
            return
        self._log.info(event.describe())
