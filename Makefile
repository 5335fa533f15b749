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

# The main job on the built-in corpus: synthesise it, then build shards for
# pre-training (LibriSpeech layout, 5 % held out) and for the downstream tasks, all
# with the pre-training tokenizer.
demo: install
	$(PY) launch/make_demo_corpus.py --out $(DEMO_DIR)/corpus
	$(PY) launch/prepare_data.py --corpus $(DEMO_DIR)/corpus/librispeech --split train-clean \
		--holdout-fraction 0.05 --vocab-size 2000 --samples-per-shard 100 --out $(DEMO_DIR)/shards/pretrain
	$(PY) launch/prepare_data.py --corpus $(DEMO_DIR)/corpus/librispeech --samples-per-shard 200 \
		--tokenizer $(DEMO_DIR)/shards/pretrain/train/tokenizer.json --out $(DEMO_DIR)/shards/speaker
	$(PY) launch/prepare_data.py --corpus $(DEMO_DIR)/corpus/iemocap --samples-per-shard 100 \
		--tokenizer $(DEMO_DIR)/shards/pretrain/train/tokenizer.json --out $(DEMO_DIR)/shards/emotion
	$(PY) launch/prepare_data.py --corpus $(DEMO_DIR)/corpus/mosei --samples-per-shard 100 \
		--tokenizer $(DEMO_DIR)/shards/pretrain/train/tokenizer.json --out $(DEMO_DIR)/shards/sentiment

lint: install
	$(VENV)/bin/ruff check ctal_ds launch tests benchmarks

clean:
	rm -rf $(VENV) .cache .pytest_cache runs
