"""The Dagster webserver serves every asset and check; it is stopped cleanly by PID."""

import os
import signal
import subprocess
import time

import requests

from bilaf.config import Params
from bilaf.stages import STAGES
from dagster_project.defs.checks import ASSET_CHECKS

from .conftest import BIN, free_port

QUERY = """{ assetNodes { assetKey { path } isObservable
             assetChecksOrError { ... on AssetChecks { checks { name } } } } }"""


def _restore_default_sigint() -> None:
    # A process started in the background ignores SIGINT unless its default handler is restored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_webserver_serves_every_asset_and_check(tmp_path):
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "BILAF_PROJECT_DIR": str(tmp_path)}
    server = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-m", "dagster_project.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_restore_default_sigint,
    )
    try:
        url = f"http://127.0.0.1:{port}/graphql"
        deadline, payload = time.time() + 180, None
        while time.time() < deadline and payload is None:
            try:
                response = requests.post(url, json={"query": QUERY}, timeout=10)
                if response.ok and response.json().get("data", {}).get("assetNodes"):
                    payload = response.json()["data"]["assetNodes"]
            except requests.ConnectionError:
                pass
            if payload is None:
                assert server.poll() is None, "the webserver exited early"
                time.sleep(1)
        assert payload is not None, "the webserver did not answer within 180 s"
        keys = {"/".join(node["assetKey"]["path"]) for node in payload}
        sources = {"pool", "labels"} | {f"params/{section}" for section in Params.section_names()}
        assert keys == set(STAGES) | sources
        observable = {"/".join(node["assetKey"]["path"]) for node in payload if node["isObservable"]}
        assert observable == sources
        checks = {check["name"] for node in payload for check in (node["assetChecksOrError"] or {}).get("checks", [])}
        assert checks == {next(iter(check.check_specs)).name for check in ASSET_CHECKS}
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise AssertionError("the webserver ignored SIGINT") from None
