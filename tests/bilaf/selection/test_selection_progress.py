"""Progress of the selection loops: events for a listener, a few lines in a run log, the same picks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bilaf.progress import reporting_progress
from bilaf.selection import select, select_cores
from dagster_project.defs.progress import ProgressLog


def test_activeft_reports_every_iteration_with_its_loss(mixture):
    features = mixture(400, 5, 8, 3.0, 1)[0]
    events = []
    with reporting_progress(events.append):
        cores = select_cores(features, 6, "activeft", seed=3, n_iterations=12)
    assert [(event.task, event.done, event.total) for event in events] == [("ActiveFT", i, 12) for i in range(1, 13)]
    losses = [event.values["loss"] for event in events]
    assert losses[0] == cores.params["initial_loss"] and losses[-1] == cores.params["final_loss"]
    assert all(math.isfinite(loss) for loss in losses) and len(set(losses)) > 1
    select_cores(features, 6, "activeft", seed=3, n_iterations=12)
    assert len(events) == 12  # outside the block nobody listens


@pytest.mark.parametrize("labeled", [0, 40], ids=["one-shot", "label-aware"])
def test_picks_are_identical_with_and_without_a_listener(mixture, labeled):
    features, truth = mixture(500, 4, 8, 3.0, 2)
    labels = np.full(len(features), -1)
    labels[:labeled] = truth[:labeled]
    options = {"n_cores": 6 if not labeled else 0, "n_iterations": 20, "labels": labels if labeled else None}
    quiet = select(features, 30, "bilaf", **options)
    events = []
    with reporting_progress(events.append):
        reported = select(features, 30, "bilaf", **options)
    assert reported == quiet
    finished = {event.task for event in events if event.done == event.total}
    expected = (
        {"class regions", "IDC rings", "class boundary picks"}
        if labeled
        else {"ActiveFT", "IDC denoising", "boundary picks"}
    )
    assert expected <= finished


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)


def test_the_run_log_gets_a_line_per_tenth_of_the_iterations_with_the_loss(mixture):
    features = mixture(300, 4, 8, 3.0, 3)[0]
    log = _Log()
    with reporting_progress(ProgressLog(log)):
        cores = select_cores(features, 5, "activeft", seed=0, n_iterations=45)
    assert [line.split(",")[0] for line in log.lines] == [
        f"ActiveFT: {done}/45 ({done / 45:.0%})" for done in (5, 9, 14, 18, 23, 27, 32, 36, 41, 45)
    ]
    assert log.lines[-1].endswith(f"loss {cores.params['final_loss']:.6g}")
