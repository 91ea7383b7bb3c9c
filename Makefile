# organizer: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR := .demo
PHOTOS ?=
export ORGANIZER_LIBRARY ?= $(CURDIR)/$(DEMO_DIR)/library

.PHONY: demo test bench lint venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# One stamp per set of extras, remade when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[$*]'
	touch $@

venv: $(VENV)/.installed-dev,demo

# The main job: ingest -> cluster -> report.
demo: $(VENV)/.installed-demo
ifeq ($(PHOTOS),)
	$(BIN)/python scripts/demo_photos.py $(DEMO_DIR)/photos
	$(BIN)/organizer ingest $(DEMO_DIR)/photos
else
	$(BIN)/organizer ingest "$(PHOTOS)"
endif
	$(BIN)/organizer cluster -k auto --k-max 12
	$(BIN)/organizer report -o $(DEMO_DIR)/report.html
	@echo "library: $(ORGANIZER_LIBRARY)"
	@echo "report:  $(CURDIR)/$(DEMO_DIR)/report.html (open it in a browser; it works offline)"

test: $(VENV)/.installed-dev,demo
	$(BIN)/pytest

# Benchmarks print tables; they are slow (tens of minutes) and never part of `make test`.
bench: $(VENV)/.installed-dev,demo
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/cluster.py
	$(BIN)/python bench/report.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/distributed.py

# ruff, and every relative link (and #anchor) in README.md, CHANGELOG.md and docs/ resolves.
lint: $(VENV)/.installed-dev,demo
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/check_links.py

clean:
	rm -rf $(DEMO_DIR) build *.egg-info
