# loraforge: two entry points on a fresh clone — `make demo` and `make test`.
# Both build the virtualenv at .venv/ first (torch==2.13.0 CPU wheel installed before anything that depends on it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-fast lint perf openapi presets clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,worker-cpu]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/loraforge demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests --ignore=tests/perf -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit tests/template -p no:cacheprovider

lint: $(STAMP)
	$(PY) -m ruff check .

perf: $(STAMP)
	$(PY) -m pytest -q -s tests/perf -p no:cacheprovider

openapi: $(STAMP)
	$(PY) -m loraforge.api.openapi > openapi.json

# presets.yaml (the commented source) -> presets.json (what the functions read); a test fails when they drift.
presets: $(STAMP)
	$(PY) -c "from loraforge.presets import compile_presets; print(compile_presets(), end='')" > layers/common/python/loraforge/presets/presets.json

clean:
	rm -rf $(VENV) .loraforge .pytest_cache
