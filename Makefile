# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
DVC_VENV := .venv-dvc
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
# OpenMP threads sleep instead of spinning between parallel regions: on 2 shared cores this made
# finetuning ~3x faster (benchmarks/finetune_speed.py). It must be set before torch is imported.
export OMP_WAIT_POLICY ?= PASSIVE
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: env run test test-heavy test-all lint format ui mlflow-ui data benchmarks clean-env cluster cluster-down cluster-status team-up team-down team-status postgres-server browser dvc-yaml

env: $(VENV)/.installed $(DVC_VENV)/.installed $(FASHION_MNIST) $(DAGSTER_HOME)/dagster.yaml

# The instance settings (telemetry off, one writing step at a time) live in dagster_project.defs.planning.
$(DAGSTER_HOME)/dagster.yaml: $(VENV)/.installed
	$(BIN)/python -c "from dagster_project.defs.planning import project_dagster_home; project_dagster_home('.')"

# torch/torchvision come from local disk (pip on Python 3.11 finds them there); everything else is
# pinned by constraints.txt.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==25.3"
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# DVC in its own venv: hydra (DVC's `-S` overrides) pins antlr4 4.9, Dagster's selection-string
# parser needs 4.13, and one interpreter can hold only one `antlr4`. A wrapper puts `dvc` on the
# app venv's PATH, with the app venv first so stage commands find `bilaf`.
$(DVC_VENV)/.installed: constraints-dvc.txt $(VENV)/.installed
	test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/python -m pip install -q --upgrade "pip==25.3"
	$(DVC_VENV)/bin/python -m pip install -q -r constraints-dvc.txt
	printf '%s\n' '#!/bin/sh' \
	  '# DVC runs from its own venv (antlr4 4.9); the app venv stays first on PATH for stage commands.' \
	  'here="$$(cd "$$(dirname "$$0")" && pwd)"' \
	  'PATH="$$here:$$PATH" exec "$$here/../../$(DVC_VENV)/bin/dvc" "$$@"' > $(BIN)/dvc
	chmod +x $(BIN)/dvc
	$(BIN)/dvc config --global core.analytics false 2>/dev/null || true
	touch $@

# Fashion-MNIST (MIT) from Debian where apt is available; elsewhere the data code downloads it.
$(FASHION_MNIST):
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	else echo "apt-get unavailable: Fashion-MNIST will be downloaded by torchvision when online"; fi

run: env
	$(BIN)/bilaf run

test: env
	$(BIN)/python -m pytest -m "not heavy" $(PYTEST_ARGS)

# ruff (configured in pyproject.toml): lint rules and the formatter's check; `make format` applies both.
lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: env
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# dvc.yaml from the stage table (bilaf/stages/table.py); a test fails when the committed file differs.
dvc-yaml: env
	$(BIN)/bilaf dvc-yaml

# The heavy tier: a real Dask cluster, the real backbone's finetune, Label Studio's round trip.
test-heavy: env label-studio-env postgres-server browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m heavy $(PYTEST_ARGS)

test-all: env label-studio-env postgres-server browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

ui: env
	@echo "Dagster UI: http://127.0.0.1:3000"
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

mlflow-ui: env
	@echo "MLflow UI: http://127.0.0.1:5000"
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow/mlflow.db --default-artifact-root mlflow/artifacts

# A Dask scheduler and 2 worker processes on 127.0.0.1 (folder .cluster/), for trying compute.scheduler on one
# box: set `compute.scheduler: .cluster/scheduler.json` in params.yaml (README "Beyond one machine").
cluster: env
	$(BIN)/bilaf cluster up

cluster-down: env
	$(BIN)/bilaf cluster down

cluster-status: env
	$(BIN)/bilaf cluster status

# A team's services on this machine, bound to 127.0.0.1, data in .team/ (README "Running it for a team"):
# Postgres, a SeaweedFS S3 store, an MLflow server, the Dagster webserver and daemon, a Dask cluster.
# `source .team/team.env` then points bilaf, dvc and mlflow at them.
team-up: env postgres-server
	$(BIN)/bilaf team up

team-down: env
	$(BIN)/bilaf team down

team-status: env
	$(BIN)/bilaf team status

# PostgreSQL's server programs (initdb, pg_ctl) from Debian when they are missing.
postgres-server:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get install -y -q postgresql-15 >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q postgresql-15 >/dev/null; }; }

# Debian's Chromium and ChromeDriver, for the browser test of the Dagster and MLflow UIs (`make test-heavy`).
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
	  { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; }

# Label Studio (the annotators' tool) in its own venv, for its round-trip test (`make test-heavy`)
# and for annotation teams running it locally.
label-studio-env:
	test -x .venv-labelstudio/bin/label-studio || \
	  { $(PYTHON) -m venv .venv-labelstudio && .venv-labelstudio/bin/pip install label-studio==1.23.2; }

clean-env:
	rm -rf $(VENV) $(DVC_VENV)
