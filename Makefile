# Two set-up commands: `make run` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/isic-9class/Train
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the shipped defaults: audit a folder (duplicates, conflicts, unreadable files), then screen it
# with the shipped default model (models/default): melanoma alert + referral per image in predictions.csv.
# DATA defaults to the shared Train split, which the default model was trained on: the figures it prints show the
# pipeline working, not its accuracy (see the README for held-out figures). `make run DATA=folder` screens another.
run: $(STAMP)
	$(BIN)/melanoma audit $(DATA) --json audit.json
	$(BIN)/melanoma predict $(DATA) --out predictions.csv

# The whole test suite (CPU; includes the slow-marked training tests).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Everything but the slow-marked tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/predict_speed.py

clean-venv:
	rm -rf $(VENV)
