"""The Dagster and MLflow UIs as a person uses them, in headless Chromium (Debian's chromium and
chromium-driver, `make browser`): the buttons the README names exist and do what it says, and the
links between the two UIs open MLflow's training view and the Dagster run. Screenshots of each
page are saved in the test's tmp_path/screenshots (named in the failure message)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import requests
import yaml

from bilaf.stages import STAGES
from dagster_project.cli import main as bilaf
from dagster_project.cluster import stop_process_group

from .conftest import BIN, TINY_PARAMS, free_port, make_project, project_environment, write_params

pytestmark = [pytest.mark.heavy, pytest.mark.timeout(900)]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1600,1000",
)
# Without the daemon no sensor launches runs of its own, so the UI's clicks are the only runs;
# Dagster's default coordinator launches them at once (the queued one waits for a daemon).
IMMEDIATE_RUNS = "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
STALE_QUERY = "{ assetNodes { assetKey { path } staleStatus } }"


@contextlib.contextmanager
def _serving(command: list[str], ready: str, cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """A server in its own process group, answering ``ready`` within 180 s; stopped by group."""
    server = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(ready, timeout=5).ok:
                    break
            assert server.poll() is None, f"{command[0]} exited early"
            assert time.monotonic() < deadline, f"{command[0]} did not answer {ready} within 180 s"
            time.sleep(1)
        yield
    finally:
        stop_process_group(server.pid)


@contextlib.contextmanager
def _chromium(screenshots: Path) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail("Debian's chromium and chromium-driver are missing: `make browser` installs them")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    screenshots.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    except BaseException as error:
        driver.save_screenshot(str(screenshots / "failure.png"))
        error.add_note(f"screenshots: {screenshots}")
        raise
    finally:
        driver.quit()


def _element(driver, xpath: str, clickable: bool = False):
    """The element at ``xpath`` once the page shows it (clickable, if asked), within 60 s."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    condition = EC.element_to_be_clickable if clickable else EC.presence_of_element_located
    return WebDriverWait(driver, 60).until(condition((By.XPATH, xpath)))


def _click(driver, xpath: str) -> None:
    _element(driver, xpath, clickable=True).click()


def _lineage_menu(driver, item: str, attempts: int = 3) -> None:
    """The menu under the arrow beside "Materialize all" on the lineage page, then ``item``. The
    page re-renders as its live data arrives (after a run, say), which can close the menu or replace
    the item between finding and clicking it: the page is reloaded and the menu opened again."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException

    for attempt in range(1, attempts + 1):
        driver.refresh()
        _wait_for_text(driver, "Materialize all")
        try:
            _click(driver, "//button[starts-with(normalize-space(), 'Materialize all')]/following::button[1]")
            _click(driver, f"//button[@role='menuitem'][starts-with(normalize-space(), '{item}')]")
            return
        except (StaleElementReferenceException, TimeoutException):
            if attempt == attempts:
                raise


def _next_run(known: set[str]) -> dg.DagsterRun:
    """The run the UI launched (one not in ``known``), once it has ended."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with dg.DagsterInstance.get() as instance:
            new = [run for run in instance.get_runs() if run.run_id not in known]
        if new and new[0].is_finished:
            return new[0]
        time.sleep(2)
    raise AssertionError("the click launched no run that ended within 300 s")


def _run_ids() -> set[str]:
    with dg.DagsterInstance.get() as instance:
        return {run.run_id for run in instance.get_runs()}


def _materialized(run_id: str) -> set[str]:
    with dg.DagsterInstance.get() as instance:
        records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return {record.dagster_event.asset_key.to_user_string() for record in records}


def _unsynced(dagster_ui: str) -> set[str]:
    """The stages the UI marks unsynced, from the webserver's GraphQL API (what the lineage page shows)."""
    stale = requests.post(f"{dagster_ui}/graphql", json={"query": STALE_QUERY}, timeout=30).json()
    return {
        "/".join(node["assetKey"]["path"]) for node in stale["data"]["assetNodes"] if node["staleStatus"] == "STALE"
    }


def _latest_metadata(stage: str) -> dict:
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(stage))
    return dict(event.asset_materialization.metadata)


def _body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait_for_text(driver, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in _body(driver):
        assert time.monotonic() < deadline, f"{text!r} not shown within {timeout:.0f} s"
        time.sleep(0.5)


def _wait_for_text_gone(driver, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text in _body(driver):
        assert time.monotonic() < deadline, f"{text!r} still shown after {timeout:.0f} s"
        time.sleep(0.5)


def test_the_readmes_buttons_rerun_what_a_penalty_change_affects_and_the_links_open_the_training_view(tmp_path):
    from selenium.webdriver.common.by import By

    root = tmp_path / "project"
    root.mkdir()
    make_project(root, TINY_PARAMS)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(root / ".dagster_home"),
        "BILAF_PROJECT_DIR": str(root),
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    dagster_port, mlflow_port = free_port(), free_port()
    dagster_ui, mlflow_ui = f"http://127.0.0.1:{dagster_port}", f"http://127.0.0.1:{mlflow_port}"
    screenshots = tmp_path / "screenshots"
    with project_environment(root, PATH=env["PATH"]):
        assert bilaf(["run", "--project", str(root)]) == 0
        with (root / ".dagster_home" / "dagster.yaml").open("a") as config:
            config.write(IMMEDIATE_RUNS)
        webserver = [str(BIN / "dagster-webserver"), "-m", "dagster_project.definitions"]
        mlflow = [str(BIN / "mlflow"), "ui", "--backend-store-uri", "sqlite:///mlflow/mlflow.db"]
        with (
            _serving([*webserver, "-h", "127.0.0.1", "-p", str(dagster_port)], f"{dagster_ui}/server_info", root, env),
            _serving([*mlflow, "--host", "127.0.0.1", "--port", str(mlflow_port)], f"{mlflow_ui}/health", root, env),
            _chromium(screenshots) as driver,
        ):
            driver.get(f"{dagster_ui}/asset-groups")
            _wait_for_text(driver, "Materialize all")
            time.sleep(2)
            for skip in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
                skip.click()  # Dagster's first-visit community dialog
            driver.save_screenshot(str(screenshots / "dagster-lineage.png"))

            params = yaml.safe_load((root / "params.yaml").read_text())
            params["boundary"]["penalty"] = 1.5
            write_params(root, params)
            known = _run_ids()
            _lineage_menu(driver, "Observe all")
            observed = _next_run(known)
            assert observed.status == dg.DagsterRunStatus.SUCCESS
            assert not _materialized(observed.run_id)  # it only observed the sources
            assert _unsynced(dagster_ui) == {"boundary_set"}  # the one stage that reads the penalty

            known = _run_ids()
            _lineage_menu(driver, "Materialize unsynced")  # a dialog lists what it will launch
            _wait_for_text(driver, "Materialize unsynced assets")
            # The dialog opens with "Fetching asset statuses" and lists the assets once they arrive
            # (on CI's slower machine the test once read it before): read it after.
            _wait_for_text_gone(driver, "Fetching asset statuses")
            title = "//*[normalize-space()='Materialize unsynced assets']"
            launch = "//button[starts-with(., 'Materialize ') and not(starts-with(., 'Materialize all'))]"
            dialog = _element(driver, f"{title}/ancestor::*[.{launch}][1]")
            assert set(dialog.text.split()) & set(STAGES) == {"boundary_set"}, dialog.text
            driver.save_screenshot(str(screenshots / "dagster-materialize-unsynced.png"))
            _click(driver, "//button[normalize-space()='Materialize 1 assets']")
            selected = _next_run(known)
            assert selected.status == dg.DagsterRunStatus.SUCCESS
            assert _materialized(selected.run_id) & set(STAGES) == {"boundary_set"}
            # Dagster's stale status is one hop: the batch turns unsynced now that the picks changed.
            assert _unsynced(dagster_ui) == {"annotation_batch"}

            known = _run_ids()
            driver.refresh()
            _click(driver, "//button[starts-with(normalize-space(), 'Materialize all')]")
            rest = _next_run(known)
            driver.save_screenshot(str(screenshots / "dagster-after-materialize-all.png"))
            assert rest.status == dg.DagsterRunStatus.SUCCESS
            assert _unsynced(dagster_ui) == set()
            carried = {
                stage
                for stage in STAGES
                if "reused_from_run" in _latest_metadata(stage)  # unchanged inputs: carried over
            }
            assert carried == set(STAGES) - {"annotation_batch", "finetuned_model", "evaluation"}

            driver.get(f"{dagster_ui}/assets/boundary_set")
            link = _element(driver, "//a[contains(@href, '#/experiments/')]").get_attribute("href")
            assert link.endswith("?workflowType=machine_learning"), link
            driver.get(mlflow_ui + link[link.index("/#/") :])  # the link names `make mlflow-ui`'s port
            _wait_for_text(driver, "Model registry")  # the training view's navigation
            assert "Observability" not in _body(driver)  # the GenAI view's
            dagster_run = _element(driver, f"//a[contains(@href, '/runs/{selected.run_id}')]")
            assert dagster_run.text == selected.run_id[:8]  # the description links the Dagster run
            driver.save_screenshot(str(screenshots / "mlflow-run.png"))
