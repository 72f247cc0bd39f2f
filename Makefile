# Two set-up commands: `make run` and `make test`. Each creates .venv from the lock when it is missing.
# The lock (requirements.lock: every package, exact version, sha256 hashes) is installed first, then the
# package itself with --no-deps, so a fresh machine gets exactly the versions CI tested.
# `make lock` refreshes the lock from pyproject.toml (compatible ranges, for library users).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
DATA ?= ../shared/data/isic-9class/Train
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run screen test test-fast bench lock docs clean-venv

# --compile-bytecode: the .pyc files are written once here. Where PYTHONDONTWRITEBYTECODE is set (CI images
# often set it) Python would otherwise compile torch, Lightning and torchvision from source in every process:
# about 14 s of CPU per `melanoma train` start on 2 cores, paid by every test that starts one.
$(STAMP): requirements.lock pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python --require-hashes requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

# The main job: the clinic service on the shipped default model (models/default), audit trail in a SQLite file
# under .melanoma/. Open the printed URL in a browser.
run: $(STAMP)
	mkdir -p .melanoma
	$(BIN)/melanoma serve --model models/default --host $(HOST) --port $(PORT) --db sqlite:///.melanoma/audit.sqlite

# Batch screening of a folder (no service): audit it, then melanoma alert + referral per image in predictions.csv.
screen: $(STAMP)
	$(BIN)/melanoma audit $(DATA) --json audit.json
	$(BIN)/melanoma predict $(DATA) --out predictions.csv

# The whole test suite (CPU; includes the slow-marked training, browser and PostgreSQL tests).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Everything but the slow, browser and PostgreSQL tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser and not postgres"

bench: $(STAMP)
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/predict_speed.py

# Refresh requirements.lock from pyproject.toml (needs network to PyPI).
lock:
	$(PYTHON) -m pip install --quiet uv==$(UV_VERSION)
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
		--no-header --output-file requirements.lock

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
