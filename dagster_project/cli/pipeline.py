"""`bilaf stage NAME` (one stage, as DVC runs it), `bilaf run` (observe, then materialize what
changed), `bilaf rounds` (every round so far), `bilaf explain ID` (why an image was picked, or not, in
every round, verified against its records) and `bilaf reproduce RUN` (re-run a recorded selection)."""

from __future__ import annotations

import argparse
import logging
import os
import time
import uuid
from pathlib import Path

from bilaf.artifacts import remove_leftovers
from bilaf.errors import InvalidInputError
from bilaf.lock import project_lock
from bilaf.stages import STAGES


def register(subparsers: argparse._SubParsersAction) -> None:
    stage = subparsers.add_parser("stage", help="run one pipeline stage in the project folder (used by dvc.yaml)")
    stage.add_argument("name", choices=STAGES)
    stage.add_argument("--project", type=Path, default=Path.cwd(), help="project folder (default: cwd)")
    stage.set_defaults(handler=_stage)

    dvc_yaml = subparsers.add_parser(
        "dvc-yaml", help="write dvc.yaml from the stage table (bilaf/stages/table.py), the file DVC runs the stages by"
    )
    dvc_yaml.add_argument("--project", type=Path, default=Path.cwd(), help="project folder (default: cwd)")
    dvc_yaml.add_argument(
        "--check", action="store_true", help="only say whether dvc.yaml differs (exit 1 when it does)"
    )
    dvc_yaml.set_defaults(handler=_dvc_yaml)

    run = subparsers.add_parser(
        "run",
        help="materialize, through Dagster, every stage that is missing or stale "
        "(a new annotation round when new images or labels arrived)",
    )
    run.add_argument(
        "--queue",
        action="store_true",
        help="submit the run to the team's Dagster ($BILAF_DAGSTER_URL, written by `make team-up`): its daemon "
        "launches it when no other run is in progress",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="print Dagster's full event log while the run executes (it is written to "
        "$DAGSTER_HOME/logs/<run id>.log either way)",
    )
    run.add_argument("--project", type=Path, default=Path.cwd(), help="project folder (default: cwd)")
    run.set_defaults(handler=_run)

    listing = subparsers.add_parser("rounds", help="every annotation round so far: batch, labeled, pending")
    listing.add_argument("--project", type=Path, default=Path.cwd(), help="project folder (default: cwd)")
    listing.set_defaults(handler=_rounds)

    explain = subparsers.add_parser(
        "explain",
        help="why an image was picked (or not) in every round: data, labels, backbone, params, code, runs",
        description="Every selection version that picked the item, with its exact inputs, each read from the MLflow "
        "run that recorded it and verified (artifact hashes, parameters, Dagster run, DVC version).",
    )
    explain.add_argument("id", help="the item id (content hash), as in data/manifest.csv")
    explain.add_argument("--json", action="store_true", help="print the whole record as JSON")
    explain.add_argument("--project", type=Path, default=Path.cwd(), help="project folder (default: cwd)")
    explain.set_defaults(handler=_explain)

    reproduce = subparsers.add_parser(
        "reproduce",
        help="re-run a recorded selection from its recorded inputs and compare the picks",
        description="RUN is the MLflow run id of a boundary_set materialization (see `bilaf explain`). Its inputs "
        "are restored from DVC at their recorded versions into a scratch folder and the selection "
        "stages run there with today's code.",
    )
    reproduce.add_argument("run_id", metavar="RUN")
    reproduce.add_argument("--scratch", type=Path, default=None, help="where to re-run (default: a new temp folder)")
    reproduce.add_argument("--json", action="store_true")
    reproduce.add_argument("--project", type=Path, default=Path.cwd(), help="project folder (default: cwd)")
    reproduce.set_defaults(handler=_reproduce)


def _stage(args: argparse.Namespace) -> int:
    from bilaf.config import load_params
    from bilaf.stages import run_stage
    from bilaf.stages.compute import check_compute
    from bilaf.stages.paths import ProjectPaths
    from bilaf.stages.sources import check_budget

    paths = ProjectPaths(args.project.resolve())
    params = load_params(paths.params)
    check_budget(paths, params)
    check_compute(paths, params)
    with project_lock(paths.root, f"bilaf stage {args.name}"):
        outcome = run_stage(args.name, paths.root, params)
    print(f"{args.name}: " + ", ".join(f"{key}={value:g}" for key, value in outcome.metrics.items()))
    return 0


def _dvc_yaml(args: argparse.Namespace) -> int:
    from dagster_project.dvc import dvc_yaml_text

    target = args.project.resolve() / "dvc.yaml"
    rendered = dvc_yaml_text()
    if args.check:
        same = target.is_file() and target.read_text() == rendered
        print(f"{target}: " + ("as the stage table defines it" if same else "differs from the stage table"))
        return 0 if same else 1
    target.write_text(rendered)
    print(f"wrote {target} from the stage table")
    return 0


def _explain(args: argparse.Namespace) -> int:
    import json

    from dagster_project.defs.planning import project_dagster_home
    from dagster_project.lineage import explain

    project_dagster_home(args.project.resolve())
    report = explain(args.id, args.project)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for pick in report["picked"]:
        inputs = pick["inputs"]
        how = (
            f"cluster of core {pick['cluster_core']}"
            if pick["cluster_core"]
            else f"class {pick['predicted_class']}"
            if pick["predicted_class"]
            else pick["role"]
        )
        score = ", ".join(
            f"{name} {pick[name]:.4f}"
            for name in ("boundary_score", "penalty_factor", "margin")
            if pick[name] is not None
        )
        rival = (
            f", rival {pick['rival_core'] or pick['rival_class']}" if pick["rival_core"] or pick["rival_class"] else ""
        )
        print(
            f"round {pick['round']} ({pick['date']}): {pick['role']} pick, rank {pick['rank']}, {how}{rival}"
            + (f"; {score}" if score else "")
        )
        print(
            f"  pool {inputs['pool_version']} (dvc {inputs['pool_dvc_md5']}), labels {inputs['labels_version']}, "
            f"{inputs['labeled_before']} labeled and {inputs['pending_before']} pending before"
        )
        print(
            f"  backbone {inputs['backbone']['backbone']} weights sha256 {inputs['backbone']['weights_sha256'][:16]}..,"
            f" code {inputs['code_version']}, git {inputs['git_commit'][:12]} ({inputs['git_code_diff'][:12]})"
        )
        print(
            "  parameters: "
            + "; ".join(
                f"{section} " + ", ".join(f"{k}={v}" for k, v in values.items())
                for section, values in inputs["parameters"].items()
            )
        )
        print(f"  Dagster run {inputs['dagster_run_id']}, MLflow run {inputs['mlflow_run_id']} (verified)")
    for entry in report.get("not_picked", []):
        print(f"round {entry['round']}: not picked: {entry['why']} (MLflow run {entry['mlflow_run_id']})")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    import json

    from dagster_project.defs.planning import project_dagster_home
    from dagster_project.lineage import reproduce

    project_dagster_home(args.project.resolve())
    report = reproduce(args.run_id, args.project, args.scratch)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        verdict = "identical" if report["identical"] else f"{report['picks_differing']} of {report['picks']} differ"
        code = (
            " (the code changed since: " + f"{report['recorded_code_version']} -> {report['current_code_version']})"
            if report["code_changed"]
            else ""
        )
        print(
            f"round {report['round']}, MLflow run {args.run_id}: re-run in {report['scratch']}: "
            f"{report['picks']} picks, {verdict}{code}"
        )
    return 0 if report["identical"] else 1


def _rounds(args: argparse.Namespace) -> int:
    from bilaf.rounds import OPEN_NAME, Ledger, issued_batch
    from bilaf.stages.paths import ProjectPaths
    from bilaf.stages.state import RoundKnowledge

    paths = ProjectPaths(args.project.resolve())
    ledger = Ledger.load(paths.root)
    for entry in ledger.frozen:
        print(
            f"round {entry['round']}: frozen, {entry['items']} items sent "
            f"(pool {entry['inputs']['pool_version']}, labels {entry['inputs']['labels_version']})"
        )
    issued = issued_batch(paths.root)
    state = paths.output("round") / OPEN_NAME
    if state.is_file():
        known = RoundKnowledge.load(paths)
        batch = "its batch is issued" if issued and int(issued["round"]) == known.round else "no batch yet"
        print(
            f"round {known.round}: open, {batch}; {len(known.labeled)} items labeled and "
            f"{len(known.pending)} pending from earlier rounds"
        )
    else:
        print("no round yet: run the pipeline (`bilaf run`)")
    return 0


def _run(args: argparse.Namespace) -> int:
    import dagster as dg
    from mlflow.exceptions import MlflowException

    from bilaf.stages.compute import check_compute
    from bilaf.stages.sources import check_budget
    from dagster_project.cli.run_log import QUIET_CONSOLE, RunReport, event_log_path, plan_line
    from dagster_project.definitions import build_definitions
    from dagster_project.defs.planning import expected_round, plan_refresh, project_dagster_home, refresh_in_flight
    from dagster_project.defs.resources import push_pending
    from dagster_project.defs.tracking import DAGSTER_URL_ENV, close_abandoned_runs, process_tags
    from dagster_project.team import check_services

    if not args.verbose:  # MLflow's INFO lines (store creation, "View run ... at") are in its UI
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    root = args.project.resolve()
    project_dagster_home(root)
    defs = build_definitions(str(root))
    project = defs.resources["project"]
    params = project.params()  # invalid parameters stop here, before any compute
    check_budget(project.paths, params)
    check_compute(project.paths, params)  # so does a Dask scheduler that cannot be reached
    check_services(root, defs.resources["mlflow"].resolved_tracking_uri())  # and a shared service that is down
    webserver = os.environ.get(DAGSTER_URL_ENV)
    if args.queue and not webserver:
        raise InvalidInputError(f"--queue needs the team's Dagster webserver in ${DAGSTER_URL_ENV} (`make team-up`)")
    with project_lock(root, "bilaf run"), dg.DagsterInstance.get() as instance:
        for stage in STAGES:
            remove_leftovers(project.paths.output(stage))
        for line in close_abandoned_runs(instance, defs.resources["mlflow"]):
            print(line)
        for target in push_pending(root):
            print(f"Pushed {target} to the DVC remote (an earlier push had failed).")
        running = refresh_in_flight(instance)
        if running is not None:
            raise InvalidInputError(
                f"Dagster run {running.dagster_run.run_id} of this project is "
                f"{running.dagster_run.status.value}: wait for it (Dagster UI: `make ui`)"
            )
        plan = plan_refresh(instance, project.paths, params)
        if not plan:
            print("Everything is up to date: params.yaml, the pool, the labels and the code are unchanged.")
            return 0
        round_number = expected_round(project.paths, plan)
        print(plan_line(round_number, plan))
        tags = {"bilaf/trigger": "cli", "bilaf/round": str(round_number)}
        if args.queue:
            run_id = _submit(webserver, plan.asset_keys, tags)
            print(f"Queued run {run_id}: the team's daemon launches it. Follow it: {webserver}/runs/{run_id}")
            return 0
        started = time.perf_counter()
        run_id = str(uuid.uuid4())  # Dagster's run ids are UUID4s; known before the run to follow its events
        report = RunReport(event_log_path(Path(os.environ["DAGSTER_HOME"]), run_id))
        # add_event_listener is not @public in Dagster 1.13.27; it is how the instance feeds an
        # in-process run's events to a caller as they are stored.
        instance.add_event_listener(run_id, report)
        try:
            result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
                run_config={} if args.verbose else QUIET_CONSOLE,
                instance=instance,
                asset_selection=plan.asset_keys,
                run_id=run_id,
                raise_on_error=False,
                tags={**tags, **process_tags()},
            )
        finally:
            report.close()
        try:
            defs.resources["mlflow"].finish_dagster_run(result.run_id, result.success)
        except MlflowException as error:  # the store may be what failed the run
            print(
                f"MLflow store unreachable ({str(error).splitlines()[0]}): the MLflow runs of {result.run_id} "
                "stay open until the next run ends them."
            )
        elapsed = time.perf_counter() - started
    if not result.success:
        print(f"Run {result.run_id} failed after {elapsed:.0f} s:\n" + "\n".join(_failures(result)))
        print(f"Its full event log: {report.log_path}")
        return 1
    mlflow = defs.resources["mlflow"]
    print(
        f"Run {result.run_id} succeeded in {elapsed:.0f} s. "
        + _summary(project.paths)
        + " "
        + mlflow.where_to_look(mlflow.experiment_id(mlflow.client()))
    )
    return 0


def _submit(webserver: str, asset_keys: list, tags: dict[str, str]) -> str:
    """Submit a run of ``asset_keys`` to the Dagster webserver at ``webserver``: its run queue and
    daemon launch it (Dagster's GraphQL client, the public API for this)."""
    from urllib.parse import urlparse

    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

    url = urlparse(webserver)
    client = DagsterGraphQLClient(
        url.hostname, port_number=url.port, use_https=url.scheme == "https", path_prefix=url.path.rstrip("/")
    )
    try:
        return client.submit_job_execution("__ASSET_JOB", asset_selection=asset_keys, tags=tags)
    except DagsterGraphQLClientError as error:
        raise InvalidInputError(f"the Dagster webserver at {webserver} refused the run: {error}") from None


def _summary(paths) -> str:
    """One line on the round the run left: batch, labels, model."""
    from bilaf import artifacts
    from bilaf.stages.paths import pool_unreadable
    from bilaf.stages.state import RoundKnowledge

    known = RoundKnowledge.load(paths)
    parts = [f"Round {known.round}: {len(known.labeled)} labeled, {len(known.pending)} pending."]
    unreadable = pool_unreadable(paths)
    if unreadable:
        parts.append(
            f"{len(unreadable)} unreadable file(s) skipped in the pool, e.g. {unreadable[0]['origin']}: "
            f"{unreadable[0]['reason']} (all in data/pool_report.json)."
        )
    metrics = paths.output("evaluation") / "metrics.json"
    model = artifacts.read_json(paths.output("finetuned_model") / "round.json")
    if not model.get("trained"):
        parts.append(f"No model yet: waiting for {model.get('waiting_for')}.")
    elif metrics.is_file():
        scores = artifacts.read_json(metrics)
        parts.append(
            f"Test top-1: finetuned {scores['finetuned']['top1']:.3f}, linear probe "
            f"{scores['linear_probe']['top1']:.3f}, kNN {scores['knn']['top1']:.3f}."
        )
    return " ".join(parts)


def _failures(result) -> list[str]:
    """Each failed step with the error that stopped it (the innermost cause: what the user did)."""
    lines = []
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause
        reason = error.message.strip() if error is not None else event.message
        lines.append(f"  {event.step_key}: {reason}")
    return lines or [event.message for event in result.all_events if event.is_failure][-3:]
