"""Why an item was picked, or not, in every round: each fact read from the place that recorded it
(the MLflow run of that selection version and the artifacts it logged, linked to the runs of its
inputs by their DVC hashes) and verified when it is read, never taken from today's working files.

Verification: every artifact read from a run matches the sha256 in the run's output manifest, whose
own hash is a tag of the run; the logged parameters hash to the run's `params_hash:*` tags; the
Dagster run the MLflow run names exists; the DVC version of the output is still stored (cache or
default remote). A mismatch raises `LineageError` naming the record that disagrees.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from bilaf import rounds
from bilaf.errors import BilafError, InvalidInputError
from bilaf.stages import STAGES, lineage_params
from bilaf.stages.paths import ProjectPaths
from bilaf.stages.selection import SELECTION_COLUMNS
from dagster_project import dvc


class LineageError(InvalidInputError):
    """A recorded fact disagrees with its record (tampered artifact, missing run or version)."""


def _typed(value: str) -> Any:
    """A parameter as MLflow stored it (JSON for numbers, booleans and null; text as is)."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _cell(value: Any) -> Any:
    """A CSV cell as a plain Python value: NaN and "" become None."""
    if value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and value == ""):
        return None
    return value.item() if hasattr(value, "item") else value


# What explains a pick: its selection row without the id and path it was asked by, round first.
_WHY_PICKED = ("round", *(column for column in SELECTION_COLUMNS if column not in ("id", "path", "round")))


class Records:
    """The MLflow runs and Dagster runs of one project, read and verified."""

    def __init__(self, root: Path, tracking_uri: str | None = None):
        from dagster_project.defs.tracking import (
            EXPERIMENT_NAME,
            embedded_database,
            project_tracking_uri,
            tracking_client,
        )

        self.paths = ProjectPaths(Path(root).resolve())
        self.uri = project_tracking_uri(self.paths.root, tracking_uri)
        database = embedded_database(self.uri)
        if database is not None and not database.is_file():
            raise LineageError(f"no MLflow store at {self.uri}: nothing has been recorded for {self.paths.root} yet")
        self.client = tracking_client(self.uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is None:
            raise LineageError(
                f"the MLflow store {self.uri} holds no {EXPERIMENT_NAME!r} experiment: run the pipeline first"
            )
        self.experiment_id = experiment.experiment_id
        self._scratch = tempfile.TemporaryDirectory()
        # Each record is read and checked once, however many picks and rounds cite it.
        self._artifacts: dict[tuple[str, str], Path] = {}
        self._verified: set[str] = set()

    def runs(self, asset: str, extra: str = "") -> list:
        """FINISHED runs of one asset, oldest first."""
        query = f"tags.asset_key = '{asset}' and attributes.status = 'FINISHED'" + (f" and {extra}" if extra else "")
        return self.client.search_runs(
            [self.experiment_id], query, order_by=["attributes.start_time ASC"], max_results=50_000
        )

    def run_of_version(self, asset: str, md5: str):
        """The latest FINISHED run that produced this DVC version of an asset's output."""
        found = self.runs(asset, f"tags.dvc_md5 = '{md5}'")
        if not found:
            raise LineageError(f"no finished MLflow run of {asset} recorded its output version {md5}")
        return found[-1]

    def artifact(self, run, relative: str) -> Path:
        """A file the run logged, after checking it against the run's output manifest and the
        manifest against the run's tag."""
        key = (run.info.run_id, relative)
        if key not in self._artifacts:
            self._artifacts[key] = self._checked_download(run, relative)
        return self._artifacts[key]

    def _checked_download(self, run, relative: str) -> Path:
        from dagster_project.defs.tracking import OUTPUT_MANIFEST, canonical_sha256, sha256_file

        run_id = run.info.run_id
        manifest_file = Path(self.client.download_artifacts(run_id, OUTPUT_MANIFEST, self._folder(run_id)))
        manifest = json.loads(manifest_file.read_text())
        if canonical_sha256(manifest) != run.data.tags.get("output_manifest_sha256"):
            raise LineageError(
                f"MLflow run {run_id}: its {OUTPUT_MANIFEST} does not match the run's "
                "output_manifest_sha256 tag (the logged artifacts were changed)"
            )
        name = run.data.tags["output_name"]
        inside = relative.removeprefix(f"{name}/") if relative != name else name
        if inside not in manifest:
            raise LineageError(f"MLflow run {run_id} recorded no file {relative} (it has {sorted(manifest)[:8]})")
        local = Path(self.client.download_artifacts(run_id, relative, self._folder(run_id)))
        if sha256_file(local) != manifest[inside]["sha256"]:
            raise LineageError(
                f"MLflow run {run_id}: artifact {relative} does not match its recorded sha256 "
                f"{manifest[inside]['sha256']} (it was changed after the run)"
            )
        return local

    def _folder(self, run_id: str) -> str:
        folder = Path(self._scratch.name) / run_id
        folder.mkdir(exist_ok=True)
        return str(folder)

    def verify(self, run) -> None:
        """The run's parameters hash to its tags, its Dagster run exists, its output is still stored."""
        from bilaf.config import section_hash_of, validated_section

        if run.info.run_id in self._verified:
            return
        tags, asset = run.data.tags, run.data.tags["asset_key"]
        for section in lineage_params(asset):
            values = {
                key.removeprefix(f"{section}."): _typed(value)
                for key, value in run.data.params.items()
                if key.startswith(f"{section}.")
            }
            try:
                recomputed = section_hash_of(validated_section(section, values))
            except BilafError as error:
                raise LineageError(
                    f"MLflow run {run.info.run_id}: its {section} parameters are not valid: {error}"
                ) from None
            if recomputed != tags.get(f"params_hash:{section}"):
                raise LineageError(
                    f"MLflow run {run.info.run_id}: its logged {section} parameters hash to "
                    f"{recomputed}, its tag params_hash:{section} says {tags.get(f'params_hash:{section}')}"
                )
        dagster_run = tags.get("dagster_run_id")
        if self.dagster_runs.get(dagster_run) is None:
            raise LineageError(
                f"MLflow run {run.info.run_id} names Dagster run {dagster_run}, which this project's "
                f"Dagster instance ({os.environ.get('DAGSTER_HOME')}) does not hold"
            )
        if dvc.is_dvc_project(self.paths.root) and dvc.find_object(self.paths.root, tags["dvc_md5"]) is None:
            raise LineageError(
                f"{asset} version {tags['dvc_md5']} (MLflow run {run.info.run_id}) is in neither the "
                "DVC cache nor the default remote any more (was `dvc gc` run?)"
            )
        self._verified.add(run.info.run_id)

    @cached_property
    def dagster_runs(self) -> dict[str, Any]:
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            return {record.dagster_run.run_id: record.dagster_run.status.value for record in instance.get_run_records()}

    def inputs(self, run) -> dict[str, Any]:
        """The exact inputs of a selection version, each from the run that produced it."""
        tags = run.data.tags
        embeddings = self.run_of_version("embeddings", tags[_input_tag("embeddings")])
        meta = json.loads(self.artifact(embeddings, "embeddings/meta.json").read_text())
        round_run = self.run_of_version("round", tags[_input_tag("round")])
        state = json.loads(self.artifact(round_run, f"{STAGES['round'].output}/{rounds.OPEN_NAME}").read_text())
        for linked in (embeddings, round_run):
            self.verify(linked)
        return {
            "round": state["round"],
            "pool_version": state["pool_version"],
            "pool_dvc_md5": tags.get("data_version"),
            "labels_version": state["labels_version"],
            "labels_dvc_md5": tags.get("labels_dvc_md5"),
            "labeled_before": len(state["labeled"]),
            "pending_before": len(state["pending"]),
            "backbone": {key: meta[key] for key in ("backbone", "weights_sha256", "image_size", "mean", "std")},
            "parameters": {
                section: {
                    key.removeprefix(f"{section}."): _typed(value)
                    for key, value in sorted(run.data.params.items())
                    if key.startswith(f"{section}.")
                }
                for section in lineage_params("boundary_set")
            },
            "code_version": tags.get("code_version"),
            "git_commit": tags.get("git_commit"),
            "git_code_diff": tags.get("git_code_diff"),
            "dagster_run_id": tags.get("dagster_run_id"),
            "mlflow_run_id": run.info.run_id,
            "selection_dvc_md5": tags.get("dvc_md5"),
        }


def _input_tag(stage: str) -> str:
    """The MLflow tag holding the DVC version of ``stage``'s output that a run read."""
    return dvc.dvc_input_tag(STAGES[stage].output)


def _date(run) -> str:
    return datetime.datetime.fromtimestamp(run.info.start_time / 1000, tz=datetime.UTC).isoformat()


def explain(item_id: str, root: Path, tracking_uri: str | None = None) -> dict[str, Any]:
    """Every selection version that picked ``item_id`` with its exact inputs; for an item never
    picked, why not in each round (labeled, pending, removed as noise, outscored, not in the pool)."""
    records = Records(root, tracking_uri)
    selections = records.runs("boundary_set")
    if not selections:
        raise LineageError("no selection has been recorded yet: run the pipeline first")
    picked, latest_per_round = [], {}
    for run in selections:
        records.verify(run)
        selection = pd.read_csv(
            records.artifact(run, "boundary_set/selection.csv"),
            dtype={"id": str},
            keep_default_na=False,
            na_values={column: [""] for column in ("boundary_score", "penalty_factor", "margin")},
        )
        latest_per_round[int(run.data.tags.get("round", 0))] = run
        for row in selection[selection["id"] == item_id].to_dict("records"):
            picked.append(
                {
                    "date": _date(run),
                    **{key: _cell(row[key]) for key in _WHY_PICKED},
                    "inputs": records.inputs(run),
                }
            )
    report: dict[str, Any] = {"id": item_id, "picked": picked}
    if not picked:
        report["not_picked"] = [
            {
                "round": number,
                "date": _date(run),
                "why": _why_not(records, run, item_id),
                "mlflow_run_id": run.info.run_id,
            }
            for number, run in sorted(latest_per_round.items())
        ]
    return report


def _why_not(records: Records, run, item_id: str) -> str:
    """Why the selection version of ``run`` did not pick the item, where its records can say."""
    state = json.loads(
        records.artifact(
            records.run_of_version("round", run.data.tags[_input_tag("round")]),
            f"{STAGES['round'].output}/{rounds.OPEN_NAME}",
        ).read_text()
    )
    if item_id in state["labeled"]:
        return f"labeled already ({state['labeled'][item_id]}) before this round"
    if item_id in state["pending"]:
        return "pending: sent to annotators in an earlier round, not labeled yet"
    denoised_run = records.run_of_version("denoised_pool", run.data.tags[_input_tag("denoised_pool")])
    denoised = json.loads(records.artifact(denoised_run, "denoised_pool.json").read_text())
    strategy = denoised["strategy"]
    if "skipped" in denoised:
        return f"not among the picks of {strategy} (this round's method), which ranks the whole pool itself"
    ids = denoised["ids"]
    if item_id not in ids:
        return "not in the pool (or not in the train split) when this round selected"
    position = ids.index(item_id)
    if "regions" in denoised:
        regions, classes = denoised["regions"], denoised["classes"]
        region = classes[regions["assignment"][position]]
        if not regions["kept"][position]:
            return f"removed as noise by IDC from the region of class {region!r}"
        return f"kept in the region of class {region!r} but outscored: its share of picks went to items nearer a rival class"
    stage_two = denoised["denoised"]
    core = ids[stage_two["cores"][stage_two["assignment"][position]]]
    if not stage_two["kept"][position]:
        return f"removed as noise by IDC from the cluster of core {core}"
    return f"kept in the cluster of core {core} but outscored: its share of picks went to items nearer a rival core"


def reproduce(run_id: str, root: Path, scratch: Path | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """Re-run the selection of boundary_set run ``run_id`` from its recorded inputs (embeddings,
    rounds state and pool manifest at their DVC versions, its logged parameters) in a scratch
    folder, with today's code; report whether the picks are identical."""
    import yaml

    from bilaf.config import Params
    from bilaf.stages import run_stage

    records = Records(root, tracking_uri)
    run = records.client.get_run(run_id)
    if run.data.tags.get("asset_key") != "boundary_set":
        raise LineageError(
            f"MLflow run {run_id} is not a selection (boundary_set) run: it is {run.data.tags.get('asset_key')!r}"
        )
    records.verify(run)
    recorded = pd.read_csv(records.artifact(run, "boundary_set/selection.csv"), dtype=str, keep_default_na=False)
    inputs = records.inputs(run)
    folder = Path(scratch or tempfile.mkdtemp(prefix=f"bilaf-reproduce-{run_id[:8]}-"))
    tags = run.data.tags
    dvc.restore(records.paths.root, tags[_input_tag("embeddings")], folder / STAGES["embeddings"].output)
    dvc.restore(records.paths.root, tags[_input_tag("round")], folder / STAGES["round"].output)
    dvc.restore(records.paths.root, tags["data_version"], folder / "data", only={"manifest.csv"})
    params = Params().model_dump()
    params.update(inputs["parameters"])
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("core_centers", "denoised_pool", "boundary_set"):
        run_stage(stage, folder)
    again = pd.read_csv(folder / STAGES["boundary_set"].output / "selection.csv", dtype=str, keep_default_na=False)
    same = recorded[["id", "role"]].equals(again[["id", "role"]])
    differing = len(set(recorded["id"]) ^ set(again["id"])) // 2 + abs(len(recorded) - len(again))
    current = STAGES["boundary_set"].code_version()
    return {
        "mlflow_run_id": run_id,
        "round": inputs["round"],
        "identical": bool(same),
        "picks": len(recorded),
        "picks_differing": differing,
        "scratch": str(folder),
        "recorded_code_version": tags.get("code_version"),
        "current_code_version": current,
        "code_changed": tags.get("code_version") != current,
    }
