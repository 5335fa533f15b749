"""With the same weights, CTAL equals a network built from transformers' RoBERTa modules.

This pins the architecture to a widely used implementation: post-LN RoBERTa layers
for text, RoBERTa layers with cross-attention to H_w^N for audio (without the causal
mask that transformers attaches to decoder layers), RoBERTa's MLM head.
"""

import importlib.util
from pathlib import Path

import torch
from prerequisites import require_module

from ctal_ds.model import CTALForPretraining

require_module("transformers", "a dev requirement: benchmarks/model.py assembles the reference from it")

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "model.py"


def load_benchmark_module():
    spec = importlib.util.spec_from_file_location("ctal_model_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ctal_equals_roberta_modules_with_copied_weights(tiny_config, batch):
    bench = load_benchmark_module()
    torch.manual_seed(0)
    ours = CTALForPretraining(tiny_config).eval()
    hf = bench.HFReference(tiny_config).eval()
    bench.copy_weights(hf, ours)
    torch.testing.assert_close(hf(batch)["loss"], ours(batch)["loss"], atol=1e-5, rtol=0)

