"""Progress of long loops: a bar on a terminal, a plain line every LINE_INTERVAL_S otherwise."""

from __future__ import annotations

import io
import sys

import pytest

from bilaf import progress as progress_module
from bilaf.progress import Progress, reporting_progress


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def _run(steps: int, seconds_per_step: float, clock: _Clock, **options) -> None:
    loop = Progress(range(steps), "demo", unit="img", **options)
    for step in loop:
        clock.now += seconds_per_step
        loop.note(loss=1.0 / (step + 1))


def test_without_a_terminal_a_line_at_most_every_interval_and_one_at_the_end(clock, capsys):
    _run(21, 3.0, clock)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "demo: 4/21 (19%), 12 s, 0.3 img/s, loss 0.25",
        "demo: 8/21 (38%), 24 s, 0.3 img/s, loss 0.125",
        "demo: 12/21 (57%), 36 s, 0.3 img/s, loss 0.0833333",
        "demo: 16/21 (76%), 48 s, 0.3 img/s, loss 0.0625",
        "demo: 20/21 (95%), 60 s, 0.3 img/s, loss 0.05",
        "demo: 21/21 (100%), 63 s, 0.3 img/s, loss 0.047619",
    ]


def test_a_quick_loop_prints_nothing_and_a_quiet_one_only_reports(clock, capsys):
    _run(50, 0.1, clock)
    events = []
    with reporting_progress(events.append):
        _run(5, 30.0, clock, shown=False)
    assert capsys.readouterr().err == ""
    assert [(event.done, event.values["loss"]) for event in events] == [(i, 1.0 / i) for i in range(1, 6)]


def test_on_a_terminal_a_bar_and_no_plain_lines(clock, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _run(5, 30.0, clock)
    shown = terminal.getvalue()
    assert shown.startswith("\rdemo:") and "| 0/5 [" in shown  # tqdm's bar (redrawn as its own clock allows)
    assert "(20%)" not in shown and "\n" not in shown
