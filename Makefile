# The two commands of the README: `make run` and `make test`. Everything else is a step.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
UV := .uv/bin/uv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
# Where `make run` listens: `make run PORT=8001 HOST=0.0.0.0`. Set here, not with ?=, so that
# only the command line moves it (some shells export HOST as the machine's name).
HOST := 127.0.0.1
PORT := 8000

.PHONY: run test install install-run install-demo lint typecheck pytest system-deps bench reliability lecture-results clean

run: install-run ## install what serving needs, start the embedded PostgreSQL, migrate, serve on $(HOST):$(PORT)
	$(BIN)/taskmanager serve --host $(HOST) --port $(PORT)

test: install system-deps lint typecheck pytest ## install, lint, type-check, run every test

install: $(VENV)/.installed

# What serving needs (the project and its dependencies, no extra). --inexact: the tools of
# `make test`, if installed, stay; `make run` after `make test` then installs nothing.
install-run: $(VENV)/.installed-run

install-demo: $(VENV)/.installed-demo ## the demo extra, for `taskmanager demo ...`

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "taskmanager needs Python 3.11+; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv .uv
	.uv/bin/python -m pip install --quiet --disable-pip-version-check 'uv>=0.9,<1'

# --compile-bytecode: the installed packages' .pyc files are written once, here; where
# PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile SQLAlchemy, FastAPI
# and Pydantic anew on import (about 1 s of each CLI start and test subprocess).
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra dev --extra demo --compile-bytecode --python $(PYTHON)
	@touch $@ $(VENV)/.installed-run $(VENV)/.installed-demo

$(VENV)/.installed-run: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --inexact --compile-bytecode --python $(PYTHON)
	@touch $@

$(VENV)/.installed-demo: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --inexact --extra demo --compile-bytecode --python $(PYTHON)
	@touch $@ $(VENV)/.installed-run

system-deps: ## Debian packages some tests drive (chromium); skipped where apt is unusable
	@bash scripts/install-system-deps.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy --strict src

pytest: install
	$(BIN)/pytest; status=$$?; if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

bench: install system-deps ## what the stack costs against raw asyncpg (wrk), ~10 minutes
	$(BIN)/python bench/run.py

reliability: install system-deps ## run the fault and bad-input tests, regenerate docs/reliability.md
	rm -f build/reliability-results.json
	$(BIN)/pytest -m reliability -q
	$(BIN)/python scripts/reliability_report.py

lecture-results: install ## run the lecture's Common Mistakes, regenerate docs/lecture-results.md (+ .json)
	@mkdir -p build
	set -o pipefail; status=0; \
	COLUMNS=100 $(BIN)/taskmanager demo mistakes --json docs/lecture-results.json \
		| tee build/lecture-results.txt || status=$$?; \
	$(BIN)/python -m taskmanager.demo.mistakes.record \
		docs/lecture-results.json build/lecture-results.txt docs/lecture-results.md; \
	exit $$status

clean:
	rm -rf $(VENV) .uv .pytest_cache .mypy_cache .ruff_cache
