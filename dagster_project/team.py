"""A team's services on this machine (`make team-up`): Postgres for Dagster and MLflow, a SeaweedFS
S3 object store for DVC's remote, MLflow's artifacts and the embedding cache, an MLflow tracking
server, the Dagster webserver and daemon, and optionally a Dask cluster. Every server is bound to
127.0.0.1, keeps its data under one folder (`.team/`), and is stopped by PID.

What the project reads is written beside them, with no secret in it: ``team.env`` (source it: the
Dagster instance, the MLflow server, the object store's endpoint, the DVC remote) and the DVC
remote ``team`` in `.dvc/config.local`. Passwords and keys are generated on first start into
``secrets/`` (mode 0600) and reach programs only through files named by the environment
(`PGPASSFILE`, `AWS_SHARED_CREDENTIALS_FILE`), never on a command line or in a log.

A real deployment points the same settings at managed services instead (README "Running it for a
team"); `check_services` is what every run asks first, whichever hosts they are.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from bilaf.errors import BilafError, InvalidInputError
from dagster_project.cluster import process_alive, stop_process_group
from dagster_project.defs.tracking import DAGSTER_URL_ENV
from dagster_project.dvc import REMOTE_ENV as DVC_REMOTE_ENV

DEFAULT_FOLDER = ".team"  # also the command line's default (dagster_project.cli.team)
BUCKET = "bilaf"
DVC_REMOTE = "team"
HOST = "127.0.0.1"
_STATE = "team.json"
_PORT_NAMES = (
    "postgres",
    "s3",
    "s3_grpc",
    "weed_master",
    "weed_master_grpc",
    "weed_volume",
    "weed_volume_grpc",
    "weed_filer",
    "weed_filer_grpc",
    "mlflow",
    "dagster",
)


class ServiceUnavailableError(BilafError):
    """A team service does not answer: named with its address, before any work is done."""


@dataclass(frozen=True)
class TeamServices:
    """A started team: where each service answers and the environment file that points at them."""

    folder: Path
    ports: dict[str, int]
    cluster: bool

    @property
    def env_file(self) -> Path:
        return self.folder / "team.env"

    @property
    def urls(self) -> dict[str, str]:
        return {
            "Dagster UI": f"http://{HOST}:{self.ports['dagster']}",
            "MLflow": f"http://{HOST}:{self.ports['mlflow']}",
            "S3 (SeaweedFS)": f"http://{HOST}:{self.ports['s3']}",
            "Postgres": f"postgresql://bilaf@{HOST}:{self.ports['postgres']}",
        }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _secret_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _prepare(folder: Path) -> dict:
    """The team's state (ports, generated credentials' files): created on first start, then kept,
    so every URL and the DVC remote stay valid across restarts."""
    state_file = folder / _STATE
    if state_file.is_file():
        return json.loads(state_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    secret_dir = folder / "secrets"
    password, access_key, secret_key = (
        secrets.token_urlsafe(24),
        "bilaf" + secrets.token_hex(8),
        secrets.token_urlsafe(32),
    )
    _secret_file(secret_dir / "postgres-password", password + "\n")
    _secret_file(secret_dir / "pgpass", f"{HOST}:*:*:bilaf:{password}\n")
    _secret_file(
        secret_dir / "aws-credentials",
        f"[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n",
    )
    identities = {
        "identities": [
            {
                "name": "bilaf",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    _secret_file(secret_dir / "s3.json", json.dumps(identities))
    state = {"ports": {name: _free_port() for name in _PORT_NAMES}, "pids": {}}
    state_file.write_text(json.dumps(state, indent=2))
    return state


def _save(folder: Path, state: dict) -> None:
    (folder / _STATE).write_text(json.dumps(state, indent=2))


def _as_postgres_user() -> list[str]:
    """Postgres refuses to run as root: as root its programs run as the `postgres` account."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise InvalidInputError("Postgres cannot run as root and this machine has no `postgres` account") from None
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]


def _postgres_program(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise InvalidInputError(f"PostgreSQL's `{name}` is not installed (Debian: apt-get install postgresql-15)")
    return found


def _start_postgres(folder: Path, port: int, timeout_s: float) -> None:
    data = folder / "postgres" / "data"
    prefix = _as_postgres_user()
    if not (data / "PG_VERSION").is_file():
        (folder / "postgres").mkdir(parents=True, exist_ok=True)
        password_file = folder / "postgres" / ".initdb-password"
        shutil.copyfile(folder / "secrets" / "postgres-password", password_file)
        if prefix:
            for path in (folder / "postgres", password_file):
                shutil.chown(path, "postgres", "postgres")
            if subprocess.run([*prefix, "test", "-r", str(password_file)]).returncode != 0:
                password_file.unlink()
                raise InvalidInputError(
                    f"as root, Postgres runs as the `postgres` account, which cannot reach {folder / 'postgres'}: "
                    "give it search permission on the folders above (chmod o+x) or use another --folder"
                )
        try:
            _checked(
                [
                    *prefix,
                    _postgres_program("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "bilaf",
                    "--auth=scram-sha-256",
                    f"--pwfile={password_file}",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ],
                "initdb",
            )
        finally:
            password_file.unlink(missing_ok=True)
    _checked(
        [
            *prefix,
            _postgres_program("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "postgres" / "postgres.log"),
            "-o",
            f"-h {HOST} -p {port} -k {data}",
            "-w",
            "-t",
            str(int(timeout_s)),
            "start",
        ],
        "pg_ctl start",
    )


def _ensure_databases(folder: Path, port: int) -> None:
    """Dagster's and MLflow's databases, created when missing."""
    import psycopg2

    connection = psycopg2.connect(
        host=HOST, port=port, user="bilaf", dbname="postgres", passfile=str(folder / "secrets" / "pgpass")
    )
    connection.autocommit = True  # CREATE DATABASE runs outside a transaction
    try:
        with connection.cursor() as cursor:
            for database in ("dagster", "mlflow"):
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE DATABASE {database}")
    finally:
        connection.close()


def _stop_postgres(folder: Path) -> bool:
    data = folder / "postgres" / "data"
    if not (data / "postmaster.pid").is_file():
        return False
    subprocess.run(
        [*_as_postgres_user(), _postgres_program("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
        capture_output=True,
    )
    return True


def _checked(command: list[str], what: str) -> None:
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise InvalidInputError(f"{what} failed: {(completed.stderr or completed.stdout).strip().splitlines()[-1:]}")


def _spawn(command: list[str], log: Path, env: dict[str, str]) -> int:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=log.parent
        ).pid


def service_environment(folder: Path, ports: dict[str, int], cluster: bool) -> dict[str, str]:
    """What a project run (and each server) reads to use the team's services: no secret, only
    where the credential files are."""
    folder = folder.resolve()
    env = {
        "DAGSTER_HOME": str(folder / "dagster_home"),
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports['mlflow']}",
        DAGSTER_URL_ENV: f"http://{HOST}:{ports['dagster']}",
        DVC_REMOTE_ENV: DVC_REMOTE,
        "BILAF_EMBEDDING_CACHE": f"s3://{BUCKET}/embeddings",
        "PGPASSFILE": str(folder / "secrets" / "pgpass"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "secrets" / "aws-credentials"),
        "AWS_ENDPOINT_URL": f"http://{HOST}:{ports['s3']}",
        "AWS_DEFAULT_REGION": "us-east-1",
        # boto >= 1.36 sends checksums some non-AWS S3 servers refuse (dvc #10695).
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        # A server that went away fails the run in seconds, not after MLflow's default ~2 min of retries.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    if cluster:
        env["BILAF_DASK_SCHEDULER"] = str(folder / "cluster" / "scheduler.json")
    return env


def instance_settings(postgres_port: int) -> dict:
    """The team's Dagster instance: the project's own settings (`planning.INSTANCE_CONFIG`), with
    run, event and schedule storage on the team's Postgres (its password from $PGPASSFILE) and runs
    queued, then launched one at a time by the daemon."""
    import yaml

    from dagster_project.defs.planning import INSTANCE_CONFIG

    settings = yaml.safe_load(INSTANCE_CONFIG)
    settings["storage"] = {
        "postgres": {
            "postgres_db": {
                "username": "bilaf",
                "hostname": HOST,
                "db_name": "dagster",
                "port": postgres_port,
                "scheme": "postgresql+psycopg2",  # SQLAlchemy 2.1's plain postgresql:// means psycopg 3
            }
        }
    }
    settings["run_coordinator"] = {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}
    settings["concurrency"]["runs"] = {"max_concurrent_runs": 1}
    return settings


def _write_configuration(root: Path, folder: Path, env: dict[str, str], ports: dict[str, int]) -> None:
    import yaml

    from dagster_project import dvc

    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(
        "# Written by `bilaf team up` (dagster_project.team.instance_settings).\n"
        + yaml.safe_dump(instance_settings(ports["postgres"]), sort_keys=False)
    )
    (folder / "team.env").write_text(
        "# Written by `bilaf team up`: `source .team/team.env` points this shell's bilaf, dvc and mlflow at the\n"
        "# team's services. No secret here: they stay in .team/secrets (mode 0600).\n"
        + "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())
    )
    if dvc.is_dvc_project(root):
        for args in (
            ("remote", "add", "--local", "--force", DVC_REMOTE, f"s3://{BUCKET}/dvc"),
            ("remote", "modify", "--local", DVC_REMOTE, "endpointurl", env["AWS_ENDPOINT_URL"]),
            ("remote", "modify", "--local", DVC_REMOTE, "credentialpath", env["AWS_SHARED_CREDENTIALS_FILE"]),
        ):
            dvc.run_dvc(root, *args)


def _weed_command(folder: Path, ports: dict[str, int]) -> list[str]:
    """SeaweedFS master, volume, filer and S3 gateway in one process, every port on 127.0.0.1."""
    flags = {
        "-ip": HOST,
        "-ip.bind": HOST,
        "-dir": str(folder / "objects"),
        "-s3.config": str(folder / "secrets" / "s3.json"),
        "-s3.port.iceberg": "0",  # SeaweedFS's other gateways stay off
        "-s3.port.lance": "0",
        "-master.volumeSizeLimitMB": "256",
        "-volume.max": "0",
    }
    for service in ("master", "volume", "filer"):
        flags[f"-{service}.port"] = str(ports[f"weed_{service}"])
        flags[f"-{service}.port.grpc"] = str(ports[f"weed_{service}_grpc"])
    flags["-s3.port"], flags["-s3.port.grpc"] = str(ports["s3"]), str(ports["s3_grpc"])
    return [str(Path(sys.executable).with_name("weed")), "server", "-s3", "-master.telemetry=false"] + [
        part for flag, value in flags.items() for part in (flag, value)
    ]


def _mlflow_command(ports: dict[str, int]) -> list[str]:
    """The tracking server on Postgres (password from $PGPASSFILE), artifacts proxied to S3."""
    return [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        HOST,
        "--port",
        str(ports["mlflow"]),
        "--backend-store-uri",
        f"postgresql+psycopg2://bilaf@{HOST}:{ports['postgres']}/mlflow",
        "--artifacts-destination",
        f"s3://{BUCKET}/mlflow",
        "--workers",
        "1",
        # MLflow 3 answers 403 to a Host header it was not told about (mlflow #17910).
        "--allowed-hosts",
        f"{HOST}:{ports['mlflow']},localhost:{ports['mlflow']}",
    ]


def start_team(root: Path, folder: Path | None = None, cluster: bool = True, timeout_s: float = 120.0) -> TeamServices:
    """Start (or restart what is not running of) the team's services for the project ``root``;
    return once each answers its health check. Running services are left as they are."""
    root = Path(root).resolve()
    folder = Path(folder or root / DEFAULT_FOLDER).resolve()
    state = _prepare(folder)
    ports, pids = state["ports"], state["pids"]
    env = service_environment(folder, ports, cluster)
    _write_configuration(root, folder, env, ports)
    process_env = {**os.environ, **env}
    dagster_env = {**process_env, "BILAF_PROJECT_DIR": str(root)}
    alive = running(folder)
    if "postgres" not in alive:
        _start_postgres(folder, ports["postgres"], timeout_s)
    _ensure_databases(folder, ports["postgres"])
    (folder / "objects").mkdir(exist_ok=True)
    commands = {
        "objects": (_weed_command(folder, ports), process_env),
        "mlflow": (_mlflow_command(ports), {**process_env, "MLFLOW_S3_ENDPOINT_URL": env["AWS_ENDPOINT_URL"]}),
        "dagster-daemon": ([str(Path(sys.executable).with_name("dagster-daemon")), "run"], dagster_env),
        "dagster": (
            [str(Path(sys.executable).with_name("dagster-webserver")), "-h", HOST, "-p", str(ports["dagster"])],
            dagster_env,
        ),
    }
    for name, (command, environment) in commands.items():
        if name not in alive:
            if name.startswith("dagster"):
                command = [*command, "-m", "dagster_project.definitions", "-d", str(root)]
            pids[name] = _spawn(command, folder / f"{name}.log", environment)
            _save(folder, state)
        if name == "objects":  # MLflow's artifacts and the daemon's runs need the bucket
            _wait_until(
                lambda: _bucket_ready(env),
                timeout_s,
                "the S3 object store",
                env["AWS_ENDPOINT_URL"],
                folder,
                name,
                pids,
            )
    state["cluster"] = cluster
    _save(folder, state)
    if cluster and "cluster" not in alive:
        from dagster_project.cluster import start_cluster

        start_cluster(folder / "cluster", env=process_env)  # its PIDs are kept in cluster/
    checks = {
        "mlflow": (
            lambda: _http_ok(f"{env['MLFLOW_TRACKING_URI']}/health"),
            "the MLflow server",
            env["MLFLOW_TRACKING_URI"],
        ),
        "dagster": (
            lambda: _http_ok(f"{env[DAGSTER_URL_ENV]}/server_info"),
            "the Dagster webserver",
            env[DAGSTER_URL_ENV],
        ),
        "dagster-daemon": (lambda: _daemon_healthy(env), "the Dagster daemon", env["DAGSTER_HOME"]),
    }
    for name, (ready, what, address) in checks.items():
        _wait_until(ready, timeout_s, what, address, folder, name, pids)
    return TeamServices(folder, ports, cluster)


def _http_ok(url: str, timeout_s: float = 3) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _bucket_ready(env: dict[str, str]) -> bool:
    """The object store answers and holds the team's bucket (created on first start)."""
    import configparser

    import boto3
    import botocore.config
    import botocore.exceptions

    credentials = configparser.ConfigParser()
    credentials.read(env["AWS_SHARED_CREDENTIALS_FILE"])
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=credentials["default"]["aws_access_key_id"],
        aws_secret_access_key=credentials["default"]["aws_secret_access_key"],
        config=botocore.config.Config(
            connect_timeout=2, retries={"max_attempts": 1}, request_checksum_calculation="when_required"
        ),
    )
    try:
        client.head_bucket(Bucket=BUCKET)
        return True
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
            client.create_bucket(Bucket=BUCKET)
            return True
        return False
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError, OSError):
        return False


def _daemon_healthy(env: dict[str, str]) -> bool:
    completed = subprocess.run(
        [str(Path(sys.executable).with_name("dagster-daemon")), "liveness-check"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    return completed.returncode == 0


def _wait_until(
    ready, timeout_s: float, what: str, address: str, folder: Path, name: str, pids: dict[str, int]
) -> None:
    """Until ``ready()``; ServiceUnavailableError with the last line of the service's log as soon as
    its process exits, or when ``timeout_s`` passes."""
    log = folder / f"{name}.log"
    deadline = time.monotonic() + timeout_s
    while not ready():
        exited = not process_alive(pids[name])
        if exited or time.monotonic() > deadline:
            lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
            last = next((line.strip() for line in reversed(lines) if line.strip() and not line[0].isspace()), "")
            why = "exited while starting" if exited else f"did not answer within {timeout_s:g} s"
            raise ServiceUnavailableError(f"{what} ({address}) {why}: {last[:300]} (log: {log})")
        time.sleep(0.5)


def running(folder: Path) -> set[str]:
    """The names of the team's services of ``folder`` that run now (Postgres: its port answers)."""
    state_file = Path(folder) / _STATE
    if not state_file.is_file():
        return set()
    state = json.loads(state_file.read_text())
    alive = {name for name, pid in state["pids"].items() if process_alive(pid)}
    from dagster_project.cluster import running as cluster_running

    if cluster_running(Path(folder) / "cluster"):
        alive.add("cluster")
    if _reachable(HOST, state["ports"]["postgres"]):
        alive.add("postgres")
    return alive


def stop_service(folder: Path, name: str, timeout_s: float = 20.0) -> bool:
    """Stop one service of the team (``postgres``, ``objects``, ``mlflow``, ``dagster``,
    ``dagster-daemon``, ``cluster``); False if it was not running."""
    folder = Path(folder).resolve()
    if name == "postgres":
        return _stop_postgres(folder)
    if name == "cluster":
        from dagster_project.cluster import stop_cluster

        return bool(stop_cluster(folder / "cluster"))
    pid = json.loads((folder / _STATE).read_text())["pids"].get(name)
    return pid is not None and stop_process_group(pid, timeout_s)


# Clients first, storage last: nothing writes to a store that is already gone.
_STOP_ORDER = ("dagster-daemon", "dagster", "cluster", "mlflow", "objects", "postgres")


def stop_team(folder: Path) -> list[str]:
    """Stop every service of the team of ``folder``; their data stays for the next start."""
    folder = Path(folder)
    if not (folder / _STATE).is_file():
        return []
    return [name for name in _STOP_ORDER if stop_service(folder, name)]


def status(folder: Path) -> str:
    folder = Path(folder)
    if not (folder / _STATE).is_file():
        return f"no team services in {folder} (start them with `make team-up`)"
    state = json.loads((folder / _STATE).read_text())
    alive = running(folder)
    services = TeamServices(folder, state["ports"], state.get("cluster", False))
    urls = {
        "postgres": services.urls["Postgres"],
        "objects": services.urls["S3 (SeaweedFS)"],
        "mlflow": services.urls["MLflow"],
        "dagster": services.urls["Dagster UI"],
        "dagster-daemon": str(folder / "dagster_home"),
        "cluster": str(folder / "cluster" / "scheduler.json"),
    }
    names = [name for name in _STOP_ORDER[::-1] if name != "cluster" or services.cluster]
    return "\n".join(f"{name}: {'running' if name in alive else 'stopped'} ({urls[name]})" for name in names)


def stop_refresh_sensor(root: Path, env: dict[str, str]) -> None:
    """Stop the refresh sensor in the instance of ``env`` (Dagster's CLI): runs are then only the
    ones asked for, e.g. while measuring or testing the queue."""
    subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "sensor",
            "stop",
            "refresh_sensor",
            "-m",
            "dagster_project.definitions",
            "-d",
            str(root),
        ],
        env=env,
        check=True,
        capture_output=True,
    )


def check_services(root: Path, tracking_uri: str) -> None:
    """Every shared service this project is configured to use answers: the Dagster instance's
    storage, the MLflow server, the DVC remote. ServiceUnavailableError naming the first that does
    not, with its address; nothing for the embedded default (files of the project)."""
    import yaml

    from dagster_project import dvc

    home = os.environ.get("DAGSTER_HOME")
    config = Path(home) / "dagster.yaml" if home else None
    settings = (yaml.safe_load(config.read_text()) or {}) if config is not None and config.is_file() else {}
    storage = settings.get("storage", {}).get("postgres", {}).get("postgres_db")
    if storage is not None:
        host, port = storage["hostname"], int(storage.get("port", 5432))
        if not _reachable(host, port):
            raise ServiceUnavailableError(f"Dagster's Postgres at {host}:{port} does not answer (`make team-status`)")
    if tracking_uri.startswith(("http://", "https://")) and not _http_ok(f"{tracking_uri.rstrip('/')}/health"):
        raise ServiceUnavailableError(f"the MLflow server at {tracking_uri} does not answer (`make team-status`)")
    remote = dvc.project_remote(root)
    if remote is not None and remote[2]:
        endpoint = urlparse(remote[2])
        if not _reachable(endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)):
            raise ServiceUnavailableError(
                f"the object store of DVC remote {remote[0]!r} at {remote[2]} does not answer (`make team-status`)"
            )


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False
