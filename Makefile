# dssl developer and user commands. Every target that needs Python creates .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dssl-installed
STUDY ?= studies/demo.yaml
MLFLOW_DB ?= $(CURDIR)/mlflow.db
UI_PORT ?= 5000
RAY_DASHBOARD_PORT ?= 8265
CLUSTER_CPUS ?= $(shell nproc)

export RAY_AUTH_MODE ?= token
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup test study smoke data ui cluster-up cluster-down job-smoke benchmark clean

setup: $(STAMP)

# torch==2.13.0 is installed on its own first: pip then reuses it instead of resolving
# another torch build for Ray's or MLflow's requirements.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 setup'"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

study: $(STAMP) data
	$(BIN)/dssl run $(STUDY)

smoke: $(STAMP)
	$(BIN)/dssl run studies/smoke.yaml

# The datasets that studies of kind parquet read: the two-view digits for studies/digits-two-view.yaml.
data: $(STAMP)
	test -f data/digits-two-view/dataset.yaml || $(BIN)/dssl data digits --out data/digits-two-view

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MLFLOW_DB) --host 127.0.0.1 --port $(UI_PORT)

# A local Ray head for `ray job submit`. Jobs inherit this environment, so their MLflow runs
# land in ./mlflow.db and their results in ./dssl_results.
cluster-up: $(STAMP)
	MLFLOW_TRACKING_URI=sqlite:///$(MLFLOW_DB) DSSL_STORAGE_PATH=$(CURDIR)/dssl_results \
	PATH=$(CURDIR)/$(BIN):$$PATH \
	$(BIN)/ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 \
		--dashboard-port=$(RAY_DASHBOARD_PORT) --num-cpus=$(CLUSTER_CPUS) --disable-usage-stats
	@echo "Submit a study: RAY_AUTH_MODE=token $(BIN)/ray job submit --address http://127.0.0.1:$(RAY_DASHBOARD_PORT) --working-dir . -- dssl run studies/smoke.yaml"

cluster-down: $(STAMP)
	$(BIN)/ray stop --force

job-smoke: $(STAMP)
	$(BIN)/ray job submit --address http://127.0.0.1:$(RAY_DASHBOARD_PORT) --working-dir . -- dssl run studies/smoke.yaml

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf dssl_results mlartifacts mlflow.db .pytest_cache
