"""Progress of the loops that can take a while (selection, embedding), for the console and for whoever
listens.

Every such loop iterates through ``Progress``: a tqdm bar on the console (shown on a terminal only)
and, inside ``reporting_progress(listener)``, one ``ProgressEvent`` per finished step for the
listener (the Dagster layer writes a few of them to the run log). Values noted on a step, such as
ActiveFT's loss, show in the bar and travel with the event. Reporting only reads what the loop
computed anyway: a result never depends on whether anyone listens.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tqdm.auto import tqdm

Item = TypeVar("Item")


@dataclass(frozen=True)
class ProgressEvent:
    """Step ``done`` of ``total`` of the loop ``task`` has finished; ``values`` were noted on it."""

    task: str
    done: int
    total: int
    values: dict[str, float] = field(default_factory=dict)


ProgressListener = Callable[[ProgressEvent], None]
_listener: ContextVar[ProgressListener | None] = ContextVar("bilaf_progress_listener", default=None)


@contextmanager
def reporting_progress(listener: ProgressListener) -> Iterator[None]:
    """Send a ProgressEvent for every step of the selection loops run inside the block to ``listener``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


class Progress(Generic[Item]):
    """Iterate over ``items`` with a console bar named ``task``, reporting each finished step."""

    def __init__(self, items: Collection[Item], task: str) -> None:
        self.task = task
        self.total = len(items)
        self._items = items
        self._values: dict[str, float] = {}
        self._bar: tqdm | None = None

    def __iter__(self) -> Iterator[Item]:
        listener = _listener.get()
        with tqdm(self._items, desc=self.task, total=self.total, disable=None, leave=False) as self._bar:
            for done, item in enumerate(self._bar, start=1):
                yield item
                if listener is not None:
                    listener(ProgressEvent(self.task, done, self.total, dict(self._values)))

    def note(self, **values: float) -> None:
        """Values of the step in progress (shown in the bar, sent with the step's event)."""
        self._values.update(values)
        if self._bar is not None:
            self._bar.set_postfix(self._values, refresh=False)


class Counted(Generic[Item]):
    """An iterator with a known length, for ``Progress`` over results as they complete."""

    def __init__(self, iterator: Iterator[Item], count: int) -> None:
        self._iterator, self._count = iterator, count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Item]:
        return iter(self._iterator)
