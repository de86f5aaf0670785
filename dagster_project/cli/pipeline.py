"""`bilaf stage NAME` (one stage, as DVC runs it), `bilaf run` (observe, then materialize what changed)
and `bilaf lineage ID` (why an image was selected)."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from dagster_project.stages import STAGES, run_stage


def register(subparsers: argparse._SubParsersAction) -> None:
    stage = subparsers.add_parser("stage", help="run one pipeline stage in the project folder (used by dvc.yaml)")
    stage.add_argument("name", choices=list(STAGES))
    stage.add_argument("--project", type=Path, default=Path.cwd(), help="project folder (default: cwd)")
    stage.set_defaults(handler=_stage)

    run = subparsers.add_parser("run", help="materialize, through Dagster, every stage that is missing or stale")
    run.add_argument("--project", type=Path, default=Path.cwd(), help="project folder (default: cwd)")
    run.set_defaults(handler=_run)

    lineage = subparsers.add_parser("lineage", help="why an image was selected: data, backbone, params, code, run")
    lineage.add_argument("id", help="the item id (content hash) as in artifacts/boundary_set/selection.csv")
    lineage.add_argument("--project", type=Path, default=Path.cwd(), help="project folder (default: cwd)")
    lineage.set_defaults(handler=_lineage)


def _stage(args: argparse.Namespace) -> int:
    outcome = run_stage(args.name, args.project)
    print(f"{args.name}: " + ", ".join(f"{key}={value:g}" for key, value in outcome.metrics.items()))
    return 0


def _lineage(args: argparse.Namespace) -> int:
    import json

    from dagster_project.lineage import explain_selection

    print(json.dumps(explain_selection(args.id, args.project), indent=2, default=str))
    return 0


def _run(args: argparse.Namespace) -> int:
    import dagster as dg

    from dagster_project.definitions import build_definitions
    from dagster_project.defs.planning import plan_refresh, source_changed
    from dagster_project.stages import source_location

    root = args.project.resolve()
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(root / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    defs = build_definitions(str(root))
    params = defs.resources["project"].params()  # invalid parameters stop here, before any compute
    with dg.DagsterInstance.get() as instance:
        plan = plan_refresh(instance, params, data_changed=source_changed(instance, source_location(params.data)))
        if not plan:
            print("Everything is up to date: params.yaml and the data source are unchanged.")
            return 0
        print(f"Observing params sections: {', '.join(plan.sections) or '(none)'}")
        print(f"Materializing: {', '.join(plan.stages) or '(none)'}")
        started = time.perf_counter()
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=plan.asset_keys, raise_on_error=False,
            tags={"bilaf/trigger": "cli"},
        )
        elapsed = time.perf_counter() - started
    if not result.success:
        failures = [event.message for event in result.all_events if event.is_failure]
        print(f"Run {result.run_id} failed after {elapsed:.0f} s:\n" + "\n".join(failures[-3:]))
        return 1
    print(f"Run {result.run_id} succeeded in {elapsed:.0f} s. Dagster UI: `make ui`; MLflow: `make mlflow-ui`.")
    return 0
