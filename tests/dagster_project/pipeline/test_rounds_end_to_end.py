"""Three annotation rounds end to end on a tiny real project (imported labels): new images are
ingested, annotators' labels imported, each round re-selects around what is labeled or pending
and finetunes on every label so far. docs/rounds.md invariants 1-4 are asserted on the way.

Tests run in file order and build on each other (one project goes through the rounds).
"""

import copy
import os
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from bilaf.features import pool_version, read_manifest
from bilaf.features.sources import fashion_mnist_source
from dagster_project.cli import main as bilaf
from dagster_project.definitions import build_definitions
from dagster_project.defs.sensors import refresh_request, refresh_sensor

from .conftest import BIN, TINY_PARAMS, make_project, project_environment, run, write_params

PARAMS = copy.deepcopy(TINY_PARAMS)
PARAMS["data"].update(train_size=200, test_size=100)
PARAMS["core"]["n_cores"] = 8
PARAMS["boundary"]["budget"] = 24
PARAMS["annotation"]["labels"] = "imported"
NEW_IMAGES = 40
SELECTION_STAGES = {
    "core_centers",
    "denoised_pool",
    "boundary_set",
    "annotation_batch",
    "finetuned_model",
    "evaluation",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("rounds"), PARAMS)
    with project_environment(root):
        yield root


def _env(root: Path) -> dict:
    return {**os.environ, "DAGSTER_HOME": str(root / ".dagster_home"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _batch(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "artifacts" / "annotation_batch" / "to_annotate.csv", dtype={"id": str})


def _open(root: Path) -> dict:
    return yaml.safe_load((root / "rounds" / "open.json").read_text())


def _truth(root: Path) -> dict[str, str]:
    """What a careful annotator answers: the class of each pool item in the source (Fashion-MNIST);
    the ingested arrivals are unlabeled in the manifest, their class is known from the source."""
    manifest = read_manifest(root / "data")
    known = {item: name for item, name in zip(manifest["id"], manifest["class_name"]) if name}
    return {**_SOURCE_TRUTH, **known}


_SOURCE_TRUTH: dict[str, str] = {}


def _write_annotations(path: Path, ids: list[str], root: Path) -> Path:
    truth = _truth(root)
    pd.DataFrame({"id": ids, "label": [truth[item] for item in ids]}).to_csv(path, index=False)
    return path


def _request(root: Path):
    """What the refresh sensor decides now, evaluated through Dagster's sensor testing API."""
    with dg.DagsterInstance.get() as instance:
        resources = build_definitions(str(root)).resources
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            return refresh_sensor(context)


def _materialized_in_last_run() -> set[str]:
    with dg.DagsterInstance.get() as instance:
        latest = instance.get_runs(limit=1)[0]
        records = instance.all_logs(latest.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return {record.dagster_event.asset_key.to_user_string() for record in records}


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


def _picked_by_select(root: Path) -> list[str]:
    """The open round's picks by the documented library call: `select` on the pool's features with
    the round's labeled and pending items and params.yaml's values (one-shot BiLAF with the core
    section's cores, or later_rounds' method once labels of two classes exist)."""
    from bilaf.config import load_params
    from bilaf.selection import select
    from bilaf.selection.strategy import ONE_SHOT
    from bilaf.stages.paths import ProjectPaths
    from bilaf.stages.selection import TrainPool, round_strategy
    from bilaf.stages.state import RoundKnowledge

    paths = ProjectPaths(root)
    params = load_params(paths.params)
    pool, known = TrainPool.load(paths), RoundKnowledge.load(paths)
    labels, pending = pool.label_rows(known)
    strategy = round_strategy(params, len(pool.ids), labels, pending)
    method, n_cores = (
        ("bilaf", params.core.n_cores) if strategy == ONE_SHOT else (strategy, params.later_rounds.n_cores)
    )
    options = (
        {
            "n_cores": n_cores,
            "core_method": params.core.method,
            "variant": params.denoise.variant,
            "penalty": params.boundary.penalty,
            "n_neighbors": params.denoise.n_neighbors,
            "ring_fraction": params.denoise.ring_fraction,
            "removal_ratio": params.denoise.removal_ratio,
        }
        if method == "bilaf"
        else {}
    )
    result = select(
        pool.source, params.boundary.budget, method, seed=params.core.seed, labels=labels, pending=pending, **options
    )
    return pool.ids_at(result.indices)


def _picked_by_the_pipeline(root: Path) -> list[str]:
    selection = root / "artifacts" / "boundary_set" / "selection.csv"
    return pd.read_csv(selection, dtype={"id": str}, keep_default_na=False)["id"].tolist()


def test_round_one_issues_a_batch_and_waits_for_labels(project, capsys):
    assert bilaf(["run", "--project", str(project)]) == 0
    out = capsys.readouterr().out
    assert "No model yet" in out and "bilaf labels import" in out
    assert _open(project)["round"] == 1
    batch = _batch(project)
    assert len(batch) == PARAMS["boundary"]["budget"] and not batch["labeled"].any()
    model = yaml.safe_load((project / "artifacts" / "finetuned_model" / "round.json").read_text())
    assert model["trained"] is False
    assert isinstance(_request(project), dg.SkipReason)  # nothing changed since
    assert _picked_by_the_pipeline(project) == _picked_by_select(project)  # one-shot BiLAF


def test_new_images_are_ingested_and_launch_exactly_one_run(project, tmp_path):
    source = fashion_mnist_source()
    taken = {origin.removeprefix("fashion-mnist:") for origin in read_manifest(project / "data")["origin"]}
    folder = tmp_path / "arrivals"
    folder.mkdir()
    written = 0
    for index, record in enumerate(source.records):
        if record.split != "train" or record.name in taken:
            continue
        image = source.load(index)
        image.save(folder / f"new-{written:03d}.png")
        from bilaf.features import image_id

        _SOURCE_TRUTH[image_id(image)] = source.classes[record.label]
        written += 1
        if written == NEW_IMAGES:
            break
    (folder / "notes.txt").write_text("not an image")  # ignored, and said so
    (folder / "broken.png").write_bytes(b"not a png")  # unreadable, and said so
    data_dvc = (project / "data.dvc").read_text()
    assert bilaf(["ingest", str(folder), "--project", str(project)]) == 0
    assert (project / "data.dvc").read_text() != data_dvc  # a new pool version, recorded by DVC
    manifest = read_manifest(project / "data")
    assert (manifest["split"] == "train").sum() == PARAMS["data"]["train_size"] + NEW_IMAGES
    first, again = _request(project), _request(project)
    assert isinstance(first, dg.RunRequest) and first.run_key == again.run_key
    assert dg.AssetKey("pool") in first.asset_selection and first.tags["bilaf/round"] == "2"
    with dg.DagsterInstance.get() as instance:  # a run still writing the project: nothing more launches
        busy = instance.add_run(
            dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
        )
        try:
            skipped = refresh_request(instance, build_definitions(str(project)).resources["project"])
            assert isinstance(skipped, dg.SkipReason) and busy.run_id in skipped.skip_message
        finally:
            instance.delete_run(busy.run_id)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("id,label\nffffffffffffffff,Coat\n", "not in the pool"),
        ("id,label\n{other},Coat\n", "not in round 1's batch"),
        ("id,label\n{first},Parka\n", "Parka"),
        ("id,label\n{first},Coat\n{first},Coat\n", "more than once"),
    ],
)
def test_bad_label_files_are_refused_with_nothing_written(project, tmp_path, capsys, rows, message):
    batch = _batch(project)["id"].tolist()
    other = next(item for item in read_manifest(project / "data")["id"] if item not in batch)
    path = tmp_path / "bad.csv"
    path.write_text(rows.format(first=batch[0], other=other))
    before = _tree_bytes(project / "labels") if (project / "labels").exists() else {}
    assert bilaf(["labels", "import", str(path), "--round", "1", "--project", str(project)]) == 2
    assert message in capsys.readouterr().err
    assert (_tree_bytes(project / "labels") if (project / "labels").exists() else {}) == before


def test_round_two_builds_on_every_label_of_round_one(project, tmp_path):
    round_one = _batch(project)["id"].tolist()
    answers = _write_annotations(tmp_path / "round-1.csv", round_one, project)
    assert bilaf(["labels", "import", str(answers), "--round", "1", "--project", str(project)]) == 0
    assert (project / "labels" / "round-001.csv").is_file() and (project / "labels.dvc").is_file()
    request = _request(project)  # new labels: one run of the next round
    assert isinstance(request, dg.RunRequest) and dg.AssetKey("labels") in request.asset_selection
    assert bilaf(["run", "--project", str(project)]) == 0
    assert isinstance(_request(project), dg.SkipReason)  # and nothing more once it ran
    state = _open(project)
    assert state["round"] == 2 and set(state["labeled"]) == set(round_one) and state["pending"] == []
    frozen = pd.read_csv(project / "rounds" / "round-001" / "batch.csv", dtype={"id": str})
    assert frozen["id"].tolist() == round_one  # round 1's batch stays retrievable as it was sent
    round_two = _batch(project)["id"].tolist()
    assert len(round_two) == PARAMS["boundary"]["budget"] and not set(round_two) & set(round_one)  # invariant 1
    selection = pd.read_csv(project / "artifacts" / "boundary_set" / "selection.csv", dtype=str, keep_default_na=False)
    assert set(selection["role"]) == {"boundary"} and (selection["predicted_class"] != "").all()
    assert _picked_by_the_pipeline(project) == _picked_by_select(project)  # label-aware BiLAF
    with dg.DagsterInstance.get() as instance:  # invariant 3: only the new images were embedded
        metadata = instance.get_latest_materialization_event(dg.AssetKey("embeddings")).asset_materialization.metadata
    assert metadata["computed"].value == NEW_IMAGES
    metrics = yaml.safe_load((project / "artifacts" / "evaluation" / "metrics.json").read_text())
    assert metrics["round"] == 2 and metrics["train_items"] == len(round_one)


def test_changing_the_open_rounds_parameters_reruns_that_round_only(project):
    before = _tree_bytes(project / "rounds" / "round-001")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["boundary"]["penalty"] = 1.6
    write_params(project, params)
    assert bilaf(["run", "--project", str(project)]) == 0
    assert _materialized_in_last_run() == {"boundary_set", "annotation_batch", "finetuned_model", "evaluation"}
    assert _open(project)["round"] == 2  # invariant 4: the same round, re-selected
    assert _tree_bytes(project / "rounds" / "round-001") == before
    assert not (project / "rounds" / "round-002").exists()


def test_round_three_spends_its_budget_around_pending_items(project, tmp_path):
    round_two = _batch(project)["id"].tolist()
    answered = round_two[: len(round_two) // 2]  # annotators returned half of round 2 so far
    answers = _write_annotations(tmp_path / "round-2.csv", answered, project)
    assert bilaf(["labels", "import", str(answers), "--round", "2", "--project", str(project)]) == 0
    assert bilaf(["run", "--project", str(project)]) == 0
    state = _open(project)
    assert state["round"] == 3 and set(state["pending"]) == set(round_two) - set(answered)
    round_three = set(_batch(project)["id"])
    assert not round_three & (set(state["labeled"]) | set(state["pending"]))  # invariant 1
    assert _picked_by_the_pipeline(project) == _picked_by_select(project)  # label-aware, around pending items
    assert pd.read_csv(project / "rounds" / "round-002" / "batch.csv", dtype={"id": str})["id"].tolist() == round_two
    metrics = yaml.safe_load((project / "artifacts" / "evaluation" / "metrics.json").read_text())
    assert metrics["train_items"] == PARAMS["boundary"]["budget"] + len(answered)


def test_a_round_is_reproducible_from_its_recorded_inputs(project):
    """Invariant 2: the same pool, labels, parameters and code give the same picks."""
    selection = project / "artifacts" / "boundary_set" / "selection.csv"
    before = selection.read_bytes()
    run(
        [str(BIN / "dvc"), "repro", "--force", "core_centers", "denoised_pool", "boundary_set", "--single-item"],
        project,
        _env(project),
    )
    assert selection.read_bytes() == before
    assert "up to date" in run([str(BIN / "dvc"), "status"], project, _env(project)).stdout


def test_a_past_round_stays_explainable_and_reproducible_after_its_parameters_changed(project, capsys):
    """Round 1 chose with the first penalty; round 2 was re-selected with penalty 1.6 and the pool and
    labels grew since. Round 1's picks are still explained from its own records and re-run exactly."""
    import json

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bilaf").experiment_id
    (first,) = client.search_runs([experiment], "tags.asset_key = 'boundary_set' and tags.round = '1'")
    round_one = pd.read_csv(project / "rounds" / "round-001" / "batch.csv", dtype={"id": str})["id"].tolist()
    assert bilaf(["explain", round_one[0], "--json", "--project", str(project)]) == 0
    report = json.loads(capsys.readouterr().out)
    (pick,) = [entry for entry in report["picked"] if entry["round"] == 1]
    inputs = pick["inputs"]
    assert inputs["mlflow_run_id"] == first.info.run_id
    assert inputs["parameters"]["boundary"]["penalty"] == PARAMS["boundary"]["penalty"] != 1.6
    assert inputs["labeled_before"] == 0 and inputs["pool_version"] != pool_version(project / "data")  # it grew
    assert (
        bilaf(
            [
                "reproduce",
                first.info.run_id,
                "--json",
                "--scratch",
                str(project.parent / "again"),
                "--project",
                str(project),
            ]
        )
        == 0
    )
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["identical"] and verdict["round"] == 1 and verdict["picks"] == PARAMS["boundary"]["budget"]
    assert not verdict["code_changed"]
    assert yaml.safe_load((project / "params.yaml").read_text())["boundary"]["penalty"] == 1.6  # today's untouched


def test_reproduce_says_when_todays_code_picks_otherwise_and_refuses_a_run_that_is_not_a_selection(
    project, capsys, monkeypatch
):
    """Today's code (patched here) swaps one of round 1's picks and has another code version: the
    verdict says so (exit 1, one pick differing, code changed); an embeddings run is refused (exit 2)."""
    import json

    import mlflow
    from bilaf.stages import StageSpec, selection

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bilaf").experiment_id
    (first,) = client.search_runs([experiment], "tags.asset_key = 'boundary_set' and tags.round = '1'")
    original = selection.selection_records

    def one_pick_swapped(result, pool, round_number):
        records = original(result, pool, round_number)
        picked = {record["id"] for record in records}
        records[0] = {**records[0], "id": next(item for item in pool.ids if item not in picked)}
        return records

    monkeypatch.setattr(selection, "selection_records", one_pick_swapped)
    monkeypatch.setattr(StageSpec, "code_version", lambda self: "0" * 16)
    arguments = ["reproduce", first.info.run_id, "--project", str(project)]
    assert bilaf([*arguments, "--json", "--scratch", str(project.parent / "changed")]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert not verdict["identical"] and verdict["picks_differing"] == 1 and verdict["code_changed"]
    assert verdict["current_code_version"] == "0" * 16 != verdict["recorded_code_version"]
    assert bilaf([*arguments, "--scratch", str(project.parent / "changed-text")]) == 1
    out = capsys.readouterr().out
    assert f"1 of {verdict['picks']} differ" in out and "the code changed since" in out
    (embeddings, *_) = client.search_runs([experiment], "tags.asset_key = 'embeddings'")
    assert bilaf(["reproduce", embeddings.info.run_id, "--project", str(project)]) == 2
    assert "is not a selection (boundary_set) run" in capsys.readouterr().err


def test_a_label_file_edited_in_place_is_seen_and_a_broken_edit_refused(project, capsys):
    round_file = project / "labels" / "round-001.csv"
    original = round_file.read_text()
    rows = original.splitlines()
    item, label = rows[1].split(",")
    replacement = next(name for name in sorted(set(_truth(project).values())) if name and name != label)
    round_file.write_text("\n".join([rows[0], f"{item},{replacement}", *rows[2:]]) + "\n")
    assert isinstance(_request(project), dg.RunRequest)  # the sensor sees the edit
    assert "labels.dvc" in run([str(BIN / "dvc"), "status"], project, _env(project)).stdout  # DVC too
    round_file.write_text(original.replace(label, "Parka", 1))
    assert bilaf(["run", "--project", str(project)]) == 1
    assert "Parka" in capsys.readouterr().out
    round_file.write_text(original)
    assert bilaf(["run", "--project", str(project)]) == 0
