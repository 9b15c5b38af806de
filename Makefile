# MarScope-STAC: two commands on a fresh clone.
#   make demo   create .venv if missing, install, run the main job on the embedded default
#   make test   create .venv if missing, install, run ruff, mypy, the docs build and the tests
#   make docs   build the documentation site into site/ (strict: any warning fails)
#   make dist   build the sdist and the wheel into dist/ (the web map's npm files inside)
#   make wheel-venv  install the wheel alone into a fresh .wheel-venv, as `pip install` would
#               for a user (no editable install, no dev tools); the tests run it from outside
#               the checkout
#   make services  install the real servers the tests start (PostgreSQL+PostGIS, nginx from
#               Debian; stac-fastapi-pgstac, pypgstac and moto in .services/venv)
#   make model  rebuild the bundled model from its recipe (fit: data, its member, calibration
#               per cell size) into build/fit; RECIPE=bundled builds the previous one (four
#               members averaged); about an hour a member on a CPU; resumes where it stopped
#   make bundle  release that build's model as the bundled one (RECIPE as for make model)
#
# GPU users: install the torch/torchvision pair matching your CUDA first, then run
#   make demo CONSTRAINTS=/dev/null

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.marscope-installed

FUZZ_SECONDS ?= 1800
FUZZ_TESTS := test_fuzzed_stac_documents test_fuzzed_options test_fuzzed_geotiffs \
	test_fuzzed_scheduler_environment

WHEEL_VENV ?= .wheel-venv
WHEEL_STAMP := $(WHEEL_VENV)/.marscope-wheel

.PHONY: demo test install lint docs fuzz clean-products services dist wheel-venv model bundle

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[dev]'
	$(BIN)/python -m marscope_stac.web || echo "warning: the web map (marscope serve) needs its files from the npm registry"
	@touch $(STAMP)

install: $(STAMP)

RECIPE ?= fit

model: $(STAMP)
	$(BIN)/marscope -v build-model $(RECIPE) --out build/$(notdir $(basename $(RECIPE)))

bundle: $(STAMP)
	$(BIN)/marscope release-model local-dir:build/$(notdir $(basename $(RECIPE)))/model \
		--name marscope-small --out marscope_stac/data/models/marscope-small --overwrite

demo: $(STAMP)
	$(BIN)/marscope demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

services:
	PYTHON=$(PYTHON) services/install.sh

dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

# a fresh venv when the dependencies change; this build's wheel installed into it each time
$(WHEEL_VENV)/.deps: pyproject.toml $(CONSTRAINTS)
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	@touch $@

$(WHEEL_STAMP): $(WHEEL_VENV)/.deps $(shell git ls-files marscope_stac setup.py 2>/dev/null)
	$(MAKE) dist
	$(WHEEL_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  -c $(CONSTRAINTS) dist/*.whl
	$(WHEEL_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  --force-reinstall --no-deps dist/*.whl
	@touch $@

wheel-venv: $(WHEEL_STAMP)

test: lint docs services wheel-venv
	$(BIN)/pytest

# the fuzzing suite with fresh random inputs, FUZZ_SECONDS shared among its properties; a
# property still finding nothing when its time is up counts as passed (timeout's 124; it
# stops pytest with SIGTERM, since the CLI under test turns SIGINT into its own exit 130)
fuzz: $(STAMP)
	@n=$$(echo $(FUZZ_TESTS) | wc -w); each=$$(( $(FUZZ_SECONDS) / n )); \
	for t in $(FUZZ_TESTS); do \
	  echo "fuzz: $$t for $$each s"; \
	  MARSCOPE_FUZZ=1 timeout -k 30 $$each $(BIN)/pytest -q -x -p no:cacheprovider \
	    "tests/system/test_fuzz.py::$$t"; rc=$$?; \
	  if [ $$rc -ne 0 ] && [ $$rc -ne 124 ]; then echo "fuzz: $$t found a failure"; exit 1; fi; \
	done; echo "fuzz: nothing found in $(FUZZ_SECONDS) s"

clean-products:
	rm -rf products/* catalogs/demo
