# ngffreg — set-up, demo and tests. Every target creates .venv when missing and reuses it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ngffreg-installed
DEMO   := demo-output
# The external-reader tools environment (see tools-env below); TOOLS_PYTHON is empty when no
# Python 3.12 is found.
TOOLS_VENV   := .venv-tools
TOOLS_STAMP  := $(TOOLS_VENV)/.ngffreg-tools-installed
TOOLS_REQS   := ome-zarr-models ome-zarr ome-zarr-transformations-conformance jsonschema \
                napari napari-ome-zarr "transformnd[vectorfield-dask]"
ifndef TOOLS_PYTHON
TOOLS_PYTHON := $(shell sh tests/tools_python.sh)
endif

.PHONY: install demo test docs lint bench-convert bench-points greedy-env tools-env bigstream-env \
        clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependency declarations change; pip's cache is kept.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ngffreg demo --output $(DEMO)

test: $(STAMP) $(if $(TOOLS_PYTHON),$(TOOLS_STAMP))
	@test -n "$(TOOLS_PYTHON)" || echo "No python3.12: tests/test_external_readers.py will skip."
	NGFFREG_DATA_DIR=$${NGFFREG_DATA_DIR:-$(abspath ../shared/data)} $(PY) -m pytest -n 2 --dist loadfile
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	$(VENV)/bin/ruff check src tests benchmarks

# The documentation site (user guide, CLI and API reference, notebooks) into site/;
# warnings are errors.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench-convert: $(STAMP)
	$(PY) benchmarks/bench_convert.py

bench-points: $(STAMP)
	$(PY) benchmarks/bench_points.py

# Side by side with ANTs (and bigstream: BENCH_ARGS="--bigstream-python PATH"); see
# benchmarks/RESULTS.md. Quick: small levels, ~15 min on 2 cores; full: full resolution.
bench: $(STAMP)
	NGFFREG_DATA_DIR=$${NGFFREG_DATA_DIR:-$(abspath ../shared/data)} $(PY) benchmarks/bench.py --quick $(BENCH_ARGS)

bench-full: $(STAMP)
	NGFFREG_DATA_DIR=$${NGFFREG_DATA_DIR:-$(abspath ../shared/data)} $(PY) benchmarks/bench.py --full $(BENCH_ARGS)

# The readers microscopists use (ome-zarr-models, ome-zarr-py, napari-ome-zarr, the RFC-5
# conformance runner) need Python >= 3.12, so they live in an environment of their own, used
# only by tests/test_external_readers.py through tests/external_readers.py; never imported in
# .venv. Python 3.12 is found by tests/tools_python.sh (or given as TOOLS_PYTHON=...); without
# it `make test` goes on and those tests skip. Reinstalled only when constraints-tools.txt
# changes; pip's cache is kept.
$(TOOLS_STAMP): constraints-tools.txt
	@test -n "$(TOOLS_PYTHON)" || { echo "No Python 3.12 found (see tests/tools_python.sh);" \
	    "set TOOLS_PYTHON=/path/to/python3.12"; exit 1; }
	$(TOOLS_PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -c constraints-tools.txt $(TOOLS_REQS)
	touch $@

tools-env: $(TOOLS_STAMP)

# The reference greedy (PyPI picsl-greedy) for benchmarks/bench_blocks.py --greedy-python: a
# benchmark reference only, in an environment of its own; never a dependency of ngffreg and
# never imported in .venv.
GREEDY_ENV := benchmarks/_envs/greedy
$(GREEDY_ENV)/.installed:
	$(PYTHON) -m venv $(GREEDY_ENV)
	$(GREEDY_ENV)/bin/pip install picsl-greedy==1.4.0.3 numpy SimpleITK
	touch $@

greedy-env: $(GREEDY_ENV)/.installed

# bigstream 5.0.3 (PyPI) for benchmarks/bench_easifish.py (issue 17: bigstream side by side on
# its own EASI-FISH example pair): a benchmark reference only, in an environment of its own
# (it needs zarr < 3); never a dependency of ngffreg and never imported in .venv. Versions
# tested together in constraints-bigstream.txt; reinstalled only when it changes; pip's cache
# is kept.
BIGSTREAM_VENV  := .venv-bigstream
BIGSTREAM_STAMP := $(BIGSTREAM_VENV)/.ngffreg-bigstream-installed
$(BIGSTREAM_STAMP): constraints-bigstream.txt
	$(PYTHON) -m venv $(BIGSTREAM_VENV)
	$(BIGSTREAM_VENV)/bin/python -m pip install -c constraints-bigstream.txt bigstream==5.0.3
	touch $@

bigstream-env: $(BIGSTREAM_STAMP)

clean:
	rm -rf $(DEMO) .pytest_cache site
