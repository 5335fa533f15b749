"""Real audio and a model directory for the tests of the processor, embed and launch/embed.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ctal_ds.data.features import FeatureConfig
from ctal_ds.data.tokenizer import CTALTokenizer
from ctal_ds.model import CTALConfig, CTALForPretraining

TEXTS = ["hello there", "the river runs under the stone bridge", "good night"]


def voiced(seconds: float, rate: int, f0: float, seed: int) -> np.ndarray:
    """A harmonic tone with vibrato and breath noise: speech-like spectra, not silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 5 * t))) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
    return (0.2 * x + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def tiny_export(directory: Path, seed: int = 0) -> Path:
    """A pre-training export as launch/export.py writes it: weights, tokenizer.json
    (trained on TEXTS) and feature_config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = CTALTokenizer.train(TEXTS * 3, vocab_size=300, min_frequency=1)
    tokenizer.save(directory.parent / f"{directory.name}-tokenizer.json")
    config = CTALConfig.preset("tiny", vocab_size=tokenizer.vocab_size, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(seed)
    return CTALForPretraining(config).save_pretrained(
        directory, tokenizer_file=directory.parent / f"{directory.name}-tokenizer.json", feature_config=FeatureConfig()
    )
