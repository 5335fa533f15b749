# One-command set-up: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and explicitly, so that no other requirement pulls a
# different (CUDA) build in. Override on GPU machines, e.g. TORCH_SPEC='torch==2.13.0+cu128'.
TORCH_SPEC ?= torch==2.13.0
# DeepSpeed JIT-builds small ops on first use; keep them in one cache for tests and runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export MPLBACKEND ?= Agg
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?= -n 2

.PHONY: install test test-fast demo lint clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

# pytest exits 5 when it collected no tests; that is a broken suite, not a pass.
test: install
	$(PY) -m pytest $(PYTEST_ARGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: install
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow" tests

demo: install
	$(PY) launch/make_demo_corpus.py --out $(DEMO_DIR)/corpus

lint: install
	$(VENV)/bin/ruff check ctal_ds launch tests benchmarks

clean:
	rm -rf $(VENV) .cache .pytest_cache runs
