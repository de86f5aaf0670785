"""What `bilaf run` prints while a run executes: one line per stage as it ends (its name, seconds and
what it did, or why it did nothing), every user warning, and Dagster's full event log in a file
under the instance (also on the terminal with `--verbose`)."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any

import dagster as dg

from bilaf.stages import STAGES

# Dagster's own console logger, kept for `--verbose` and silenced otherwise: its DEBUG lines are the
# event log, which goes to the file either way.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def event_log_path(dagster_home: Path, run_id: str) -> Path:
    """Where a `bilaf run`'s full Dagster event log is written: $DAGSTER_HOME/logs/<run id>.log."""
    return Path(dagster_home) / "logs" / f"{run_id}.log"


class RunReport:
    """Receives every event of one run as Dagster stores it (an instance event listener: called in
    the run's process, in order), appends it to the event log file and prints the stage lines."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._metadata: dict[str, dict[str, Any]] = {}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = log_path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()

    def __call__(self, entry) -> None:  # dagster EventLogEntry
        self._file.write(_log_line(entry) + "\n")
        self._file.flush()
        event = entry.dagster_event
        if event is None:  # a message the step logged: only warnings and errors reach the terminal
            if entry.level >= logging.WARNING:
                self._print(f"  {entry.step_key or 'run'}: {entry.user_message}")
            return
        stage = event.step_key
        if stage not in STAGES:
            return
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            self._metadata[stage] = {
                key: getattr(value, "value", value)
                for key, value in event.event_specific_data.materialization.metadata.items()
            }
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            seconds = event.event_specific_data.duration_ms / 1000
            self._print(stage_line(stage, seconds, what_it_did(stage, self._metadata.get(stage, {}))))
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:  # the stages after it are not run
            self._print(stage_line(stage, None, "failed (the reason follows)"))

    def _print(self, line: str) -> None:
        print(line, flush=True)


def plan_line(round_number: int, plan) -> str:
    """The plan in one line: the round, the sources observed, and the stages to run in order, those
    with the same reason together: `Round 2 (observing labels): round, core_centers (labels has a
    newer version); ...`."""
    groups: list[tuple[str, list[str]]] = []
    for stage in plan.stages:
        reason = plan.reasons[stage]
        if groups and groups[-1][0] == reason:
            groups[-1][1].append(stage)
        else:
            groups.append((reason, [stage]))
    observed = ", ".join(key.to_user_string() for key in plan.observe) or "nothing"
    stages = "; ".join(f"{', '.join(names)} ({reason})" for reason, names in groups)
    return f"Round {round_number} (observing {observed}): {stages}."


def stage_line(stage: str, seconds: float | None, what: str) -> str:
    """`core_centers       38.2 s  250 cores (one-shot ActiveFT)`: aligned, one per stage."""
    width = max(len(name) for name in STAGES)
    timing = f"{seconds:6.1f} s" if seconds is not None else " " * 8
    return f"{stage:<{width}}  {timing}  {what}"


def what_it_did(stage: str, metadata: dict[str, Any]) -> str:
    """A stage's materialization metadata (its metrics and notes) said in a few words."""
    if "reused_from_run" in metadata:
        return f"unchanged since run {str(metadata['reused_from_run'])[:8]}: reused, not recomputed"
    if metadata.get("trained") == "False":
        return f"not trained yet: waiting for {metadata.get('waiting_for')}"
    number = {key: value for key, value in metadata.items() if isinstance(value, float)}

    def count(key: str) -> int:
        return int(number.get(key, 0))

    match stage:
        case "round":
            froze = ", the previous round frozen" if metadata.get("froze_round") == "True" else ""
            return f"round {metadata.get('round')}: {count('labeled')} labeled, {count('pending')} pending{froze}"
        case "embeddings":
            return (
                f"{count('num_items')} items x {count('feature_dim')} ({metadata.get('backbone')}): "
                f"{count('computed')} computed, {count('reused')} from the cache"
            )
        case "core_centers":
            if not count("n_cores"):
                return f"no cores this round ({metadata.get('strategy')})"
            return f"{count('n_cores')} cores of {count('pool_size')} items ({metadata.get('strategy')})"
        case "denoised_pool":
            return f"kept {count('kept')} of {count('pool_size')} items, {count('removed')} removed as noise"
        case "boundary_set":
            return (
                f"{count('selected')} picked: {count('cores')} cores, {count('boundary')} boundary "
                f"({metadata.get('strategy')})"
            )
        case "annotation_batch":
            return (
                f"{count('to_annotate')} to annotate; {count('training_labels')} labels to train on "
                f"({metadata.get('labels')})"
            )
        case "finetuned_model":
            version = metadata.get("registered_model_version")
            registered = f", registered as version {version}" if version else ""
            return (
                f"trained on {count('train_items')} items, {count('classes')} classes, final loss "
                f"{number.get('final_loss', float('nan')):.3f}{registered}"
            )
        case "evaluation":
            return (
                f"test top-1: finetuned {number.get('finetuned_top1', float('nan')):.3f}, linear probe "
                f"{number.get('linear_probe_top1', float('nan')):.3f}, kNN {number.get('knn_top1', float('nan')):.3f}"
            )
    return "done"


def _log_line(entry) -> str:
    """One event as Dagster's console logger shows it: time, level, step, event type, message."""
    when = datetime.datetime.fromtimestamp(entry.timestamp, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    event = entry.dagster_event
    kind = event.event_type_value if event is not None else "LOG"
    message = (event.message if event is not None and event.message else None) or entry.user_message
    return f"{when} {logging.getLevelName(entry.level)} {entry.step_key or '-'} {kind} {message}"
