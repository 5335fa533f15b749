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

.PHONY: install test test-fast mutants demo lint clean

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

# Planted faults, one at a time in a temporary copy of the tree, each of which must turn
# the fast suite red; prints which tests caught each (tests/mutants.py).
mutants: install
	$(PY) tests/mutants.py

# The main job on the built-in corpus: synthesise it; build shards for pre-training
# (LibriSpeech layout train-clean + train-other, 5 % held out) and the downstream tasks
# with the pre-training tokenizer (speaker verification: train-clean's 40 speakers,
# tested on test-clean's 10); pre-train the tiny model on 2 CPU ranks under the deepspeed
# launcher; fine-tune and evaluate emotion (IEMOCAP fold 1), sentiment and speaker
# verification with and without pre-training at 10 % of the labels (3 seeds, beside the
# frozen probes of the pre-trained and of a random backbone), 30 % (1 seed) and 100 %
# (2 seeds); print the comparison table; check the MLflow UI of the store in headless
# Chromium (launch/ui_check.py: screenshots in $(DEMO_DIR)/ui; where Chromium is missing
# and cannot be installed it says why and the demo still succeeds). Every step resumes or
# skips work already done, so an interrupted demo continues where it stopped.
DEMO_TRACKING := sqlite:///$(CURDIR)/$(DEMO_DIR)/mlflow.db
DEMO_TOKENIZER := $(DEMO_DIR)/shards/pretrain/train/tokenizer.json
DEMO_PRETRAIN_STEPS ?= 3000
DEMO_FINETUNE := --task all --shards-root $(DEMO_DIR)/shards --init $(DEMO_DIR)/pretrain \
	--out $(DEMO_DIR)/finetune --tracking-uri $(DEMO_TRACKING) --epochs 6 --min-steps 150 --lr 1e-3 \
	--micro-batch-size 8 --ds zero_optimization.stage=0 --task-option speaker:epochs=4 \
	--task-option speaker:micro_batch_size=16 --task-option emotion:fold=1 --log-every 50
demo: install
	$(PY) launch/make_demo_corpus.py --out $(DEMO_DIR)/corpus
	$(PY) launch/prepare_data.py --corpus $(DEMO_DIR)/corpus/librispeech --split train-clean --split train-other \
		--holdout-fraction 0.05 --vocab-size 2000 --samples-per-shard 250 --out $(DEMO_DIR)/shards/pretrain
	$(PY) launch/prepare_data.py --corpus $(DEMO_DIR)/corpus/librispeech --split train-clean --split test-clean \
		--samples-per-shard 200 --tokenizer $(DEMO_TOKENIZER) --out $(DEMO_DIR)/shards/speaker
	$(PY) launch/prepare_data.py --corpus $(DEMO_DIR)/corpus/iemocap --samples-per-shard 100 \
		--tokenizer $(DEMO_TOKENIZER) --out $(DEMO_DIR)/shards/emotion
	$(PY) launch/prepare_data.py --corpus $(DEMO_DIR)/corpus/mosei --samples-per-shard 100 \
		--tokenizer $(DEMO_TOKENIZER) --out $(DEMO_DIR)/shards/sentiment
	$(VENV)/bin/deepspeed --num_gpus 2 launch/pretrain.py --deepspeed_config ds_configs/cpu.json \
		--preset tiny --train-shards $(DEMO_DIR)/shards/pretrain/train \
		--valid-shards $(DEMO_DIR)/shards/pretrain/valid --lr 2e-3 --steps $(DEMO_PRETRAIN_STEPS) \
		--eval-every 500 --save-every 500 --log-every 100 --resume auto --out $(DEMO_DIR)/pretrain \
		--tracking-uri $(DEMO_TRACKING)
	$(PY) launch/ablate.py $(DEMO_FINETUNE) --variants pretrained,scratch,probe,probe_random \
		--fractions 0.1 --seeds 3
	$(PY) launch/ablate.py $(DEMO_FINETUNE) --variants pretrained,scratch --fractions 0.3,1 --seeds 0.3:1,1:2
	$(PY) launch/compare.py --tracking-uri $(DEMO_TRACKING)
	$(PY) launch/ui_check.py --tracking-uri $(DEMO_TRACKING) --out $(DEMO_DIR)/ui --skip-without-browser
	@echo "MLflow store: $(DEMO_DIR)/mlflow.db; browse it with"
	@echo "  $(VENV)/bin/mlflow ui --backend-store-uri $(DEMO_TRACKING)"
	@echo "  (MLflow 3 opens experiments on their GenAI overview: switch to 'Model training' for the runs)"

lint: install
	$(VENV)/bin/ruff check ctal_ds launch tests benchmarks

clean:
	rm -rf $(VENV) .cache .pytest_cache runs
