# MarScope-STAC: two commands on a fresh clone.
#   make demo   create .venv if missing, install, run the main job on the embedded default
#   make test   create .venv if missing, install, run ruff, mypy and the pytest suite
#
# GPU users: install the torch/torchvision pair matching your CUDA first, then run
#   make demo CONSTRAINTS=/dev/null

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.marscope-installed

.PHONY: demo test install lint clean-products

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[dev]'
	$(BIN)/python -m marscope_stac.webassets || echo "warning: the web map (marscope serve) needs npm"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/marscope demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

clean-products:
	rm -rf products/* catalogs/demo
