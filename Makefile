# Set-up is part of each target: the first call creates .venv and installs FERBench into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ferbench-installed

.PHONY: demo test test-fast docs lint install clean

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ferbench demo

# The suite runs on two workers, each test file on one (its module fixtures built once); the subprocess, launch
# and SLURM tests wait much of their time, so one worker alone left half of the two-core reference machine idle.
# The committed leaderboards' fingerprints are checked twice: natively, and from an empty fingerprint cache on an
# emulated AVX2-only CPU (fingerprints mean the same on every x86-64 machine: docs/concepts/fingerprints.md).
AVX2 := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
	NPY_DISABLE_CPU_FEATURES="AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15
	cache=$$(mktemp -d) && env $(AVX2) FERBENCH_CACHE=$$cache $(PY) -m pytest -q tests/test_freshness.py \
		-k committed_leaderboards; status=$$?; rm -rf $$cache; exit $$status

# The loop for people changing the code: everything but the tests marked subprocess (real FERBench, accelerate, pip
# and probe processes), cluster (SLURM) and statistical (Monte-Carlo), spread test by test over two workers.
# `make test` runs all of them.
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist load -m "not subprocess and not cluster and not statistical"

# The documentation site, into site/: strict (a warning, a broken link or a missing anchor fails the build). Its
# reference pages and boards are generated from the code as it builds (bench/docs). NO_MKDOCS_2_WARNING quiets the
# theme's banner about MkDocs 2, which is not FERBench's to act on.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) runs site
