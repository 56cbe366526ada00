# Two commands do all the set-up on a fresh machine:
#   make demo   installs into .venv and runs the quickstart study (the embedded default)
#   make test   installs into .venv (with dev extras) and runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH   = torch==2.14.1 torchvision==0.29.1

.PHONY: install install-dev demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/scaling plan sweeps/quickstart.yaml
	$(BIN)/scaling submit sweeps/quickstart.yaml
	$(BIN)/scaling report sweeps/quickstart.yaml
	@echo
	@echo "look next:  .venv/bin/scaling status sweeps/quickstart.yaml"
	@echo "            .venv/bin/scaling ui sweeps/quickstart.yaml      (MLflow UI on http://127.0.0.1:5000)"
	@echo "            runs/quickstart/report/report.html               (the report)"
	@echo "            jupyter lab analysis/                            (notebooks on the same parquet)"

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check scaling tests benchmarks
	$(BIN)/ruff format --check scaling tests benchmarks

bench: install-dev
	$(BIN)/python benchmarks/bench_plan.py
	$(BIN)/python benchmarks/bench_augment.py
	$(BIN)/python benchmarks/bench_imagefolder.py
	$(BIN)/python benchmarks/bench_accumulate.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_local.py
	$(BIN)/python benchmarks/bench_report.py
	$(BIN)/python benchmarks/bench_costmodel.py

clean:
	rm -rf $(VENV) runs runs-slurm runs-ray mlflow.db mlflow-slurm.db mlflow-ray.db mlruns reports
