"""The label round trip through a real Label Studio 1.23.2 server on 127.0.0.1.

Our tasks in (images served through a Local Files storage), every task annotated over the HTTP
API, then the JSON, JSON-MIN and CSV exports back through `bilaf labels import`. Label Studio
lives in its own venv: `make label-studio-env` (`make test-heavy` creates it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from annotation_project import BATCH_SIZE, CLASSES

from bilaf.annotation import load_labels
from dagster_project.cli import main

pytestmark = pytest.mark.heavy

REPO = Path(__file__).resolve().parents[3]
LABEL_STUDIO = REPO / ".venv-labelstudio" / "bin" / "label-studio"
STARTUP_TIMEOUT_S = 600  # a fresh data dir runs every migration first: ~100 s on 2 busy cores
EXPORTS = {"JSON": "export.json", "JSON_MIN": "export.min.json", "CSV": "export.csv"}


@dataclasses.dataclass
class LabelStudio:
    base_url: str
    session: requests.Session

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the HTTP API with the user's token; a failure shows Label Studio's answer."""
        response = self.session.request(method, self.base_url + path, timeout=60, **kwargs)
        assert response.ok, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def label_studio(project: Path, tmp_path: Path) -> Iterator[LabelStudio]:
    """A Label Studio serving `project` as its local-files document root; stopped by process group."""
    if not LABEL_STUDIO.exists():
        pytest.skip(
            f"Label Studio 1.23.2 is not installed at {LABEL_STUDIO}: run `make label-studio-env` "
            "(or `make test-heavy`)"
        )
    port, token, data_dir = _free_port(), secrets.token_hex(20), tmp_path / "label-studio-data"
    env = {
        **os.environ,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(project),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",  # no network: don't ask PyPI for a newer version
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
    }
    log_path = tmp_path / "label-studio.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [
                str(LABEL_STUDIO),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--username",
                "annotator@example.com",
                "--password",
                secrets.token_hex(8),
                "--user-token",
                token,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_until_up(server, base_url, log_path)
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        yield LabelStudio(base_url, session)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _wait_until_up(server: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"label-studio exited ({server.returncode}):\n{log_path.read_text()[-3000:]}"
        try:
            if requests.get(f"{base_url}/health", timeout=5).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(2)
    raise AssertionError(f"label-studio not up after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


def test_round_trip_through_label_studio(label_studio: LabelStudio, project: Path, pool_ids: list[str], tmp_path: Path):
    tasks_file, config_file = tmp_path / "tasks.json", tmp_path / "config.xml"
    assert main(["labels", "tasks", "--round", "1", "--out", str(tasks_file), "--project", str(project)]) == 0
    assert main(["labels", "config", "--out", str(config_file), "--project", str(project)]) == 0

    created = label_studio.api(
        "POST", "/api/projects", json={"title": "bilaf round 1", "label_config": config_file.read_text()}
    ).json()
    label_studio.api(
        "POST",
        "/api/storages/localfiles",
        json={"project": created["id"], "title": "pool images", "path": str(project / "data"), "use_blob_urls": False},
    )
    imported = label_studio.api(
        "POST", f"/api/projects/{created['id']}/import", json=json.loads(tasks_file.read_text())
    ).json()
    assert imported["task_count"] == BATCH_SIZE
    tasks = label_studio.api("GET", "/api/tasks", params={"project": created["id"], "page_size": 100}).json()["tasks"]
    assert sorted(task["data"]["item_id"] for task in tasks) == sorted(pool_ids[:BATCH_SIZE])

    annotated = {}
    for task in tasks:
        item = task["data"]["item_id"]
        image = label_studio.api("GET", task["data"]["image"])
        assert image.content == (project / "data" / "images" / "train" / f"{item}.png").read_bytes()
        annotated[item] = CLASSES[(task["data"]["rank"] + 1) % len(CLASSES)]  # not the manifest's class
        label_studio.api(
            "POST",
            f"/api/tasks/{task['id']}/annotations",
            json={
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": [annotated[item]]},
                    }
                ]
            },
        )

    for export_type, name in EXPORTS.items():
        export = tmp_path / name
        export.write_bytes(
            label_studio.api("GET", f"/api/projects/{created['id']}/export", params={"exportType": export_type}).content
        )
        shutil.rmtree(project / "labels", ignore_errors=True)
        assert main(["labels", "import", str(export), "--round", "1", "--project", str(project)]) == 0, export_type
        stored = load_labels(project / "labels", pool_ids=pool_ids, classes=CLASSES, batches={1: pool_ids[:BATCH_SIZE]})
        assert stored == dict(sorted(annotated.items())), export_type
