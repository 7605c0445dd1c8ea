# Set-up is part of each target: the first call creates .venv and installs FERBench into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ferbench-installed

.PHONY: demo test lint install clean

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ferbench demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
