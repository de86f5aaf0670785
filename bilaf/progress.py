"""Progress of the loops that can take a while (selection, embedding), for the console and for whoever
listens.

Every such loop iterates through ``Progress``: a tqdm bar when standard error is a terminal;
otherwise (a log file, CI, ``nohup``) a plain line on standard error at most every
``LINE_INTERVAL_S`` seconds and one when a loop that printed any ends, so quick loops stay silent.
Inside ``reporting_progress(listener)``, one ``ProgressEvent`` per finished step also goes to the
listener (the Dagster layer writes a few of them to the run log). Values noted on a step, such as
ActiveFT's loss, show in the bar and the lines and travel with the event. Reporting only reads what
the loop computed anyway: a result never depends on whether anyone listens.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tqdm.auto import tqdm

Item = TypeVar("Item")
LINE_INTERVAL_S = 10.0  # without a terminal: one progress line at most this often per loop


@dataclass(frozen=True)
class ProgressEvent:
    """Step ``done`` of ``total`` of the loop ``task`` has finished; ``values`` were noted on it."""

    task: str
    done: int
    total: int
    values: dict[str, float] = field(default_factory=dict)

    def describe(self, seconds: float | None = None, unit: str = "it") -> str:
        """One plain progress line: ``task: done/total (percent)[, seconds, rate], noted values``."""
        timing = f", {seconds:.0f} s, {self.done / seconds:.1f} {unit}/s" if seconds else ""
        values = "".join(f", {name} {value:.6g}" for name, value in self.values.items())
        return f"{self.task}: {self.done}/{self.total} ({self.done / self.total:.0%}){timing}{values}"


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
    """Iterate over ``items`` showing progress of the loop ``task``, reporting each finished step.

    ``unit`` names a step in the bar; ``shown`` False keeps the console quiet (events still go to
    the listener).
    """

    def __init__(self, items: Collection[Item], task: str, *, unit: str = "it", shown: bool = True) -> None:
        self.task = task
        self.total = len(items)
        self.unit = unit
        self.shown = shown
        self._items = items
        self._values: dict[str, float] = {}
        self._bar: tqdm | None = None

    def __iter__(self) -> Iterator[Item]:
        if self.shown and sys.stderr.isatty():
            with tqdm(self._items, desc=self.task, total=self.total, unit=self.unit, leave=False) as self._bar:
                yield from self._steps(self._bar, lambda done: None)
            return
        lines = _Lines(self, time.monotonic()) if self.shown else None
        yield from self._steps(self._items, lines.step if lines else lambda done: None)
        if lines:
            lines.finish()

    def _steps(self, items: Iterable[Item], shown: Callable[[int], None]) -> Iterator[Item]:
        listener = _listener.get()
        for done, item in enumerate(items, start=1):
            yield item
            shown(done)
            if listener is not None:
                listener(self.event(done))

    def event(self, done: int) -> ProgressEvent:
        """Step ``done`` of this loop, with the values noted so far."""
        return ProgressEvent(self.task, done, self.total, dict(self._values))

    def note(self, **values: float) -> None:
        """Values of the step in progress (shown in the bar and the lines, sent with the step's event)."""
        self._values.update(values)
        if self._bar is not None:
            self._bar.set_postfix(self._values, refresh=False)


@dataclass
class _Lines:
    """Plain progress lines of one loop on standard error: at most one per ``LINE_INTERVAL_S``."""

    progress: Progress
    started: float
    last: float | None = None
    done: int = 0
    printed: int = 0

    def step(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - (self.last if self.last is not None else self.started) >= LINE_INTERVAL_S:
            self._print(now)

    def finish(self) -> None:
        if self.last is not None and self.printed != self.done:  # a loop that printed says it ended
            self._print(time.monotonic())

    def _print(self, now: float) -> None:
        self.last, self.printed = now, self.done
        line = self.progress.event(self.done).describe(now - self.started, self.progress.unit)
        print(line, file=sys.stderr, flush=True)


class Counted(Generic[Item]):
    """An iterator with a known length, for ``Progress`` over results as they complete."""

    def __init__(self, iterator: Iterator[Item], count: int) -> None:
        self._iterator, self._count = iterator, count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Item]:
        return iter(self._iterator)
