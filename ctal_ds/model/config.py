"""Typed configuration of the CTAL backbone (paper section 3.1, sizes in section 4.1)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ATTENTION_BACKENDS = ("sdpa", "eager", "fused")

# Sizes follow the paper's naming (section 4.1): BASE is N=3, LARGE is N=6 layers per
# stream. The public release called 3/3 "tiny" and 6/6 "base"; here "tiny" is a
# test-sized model, not the paper's BASE.
_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=1000,
        num_text_layers=2,
        num_audio_layers=2,
        hidden_size=64,
        num_heads=4,
        ffn_size=128,
        max_tokens=128,
        max_frames=512,
    ),
    "base": dict(num_text_layers=3, num_audio_layers=3),
    "large": dict(num_text_layers=6, num_audio_layers=6),
}


@dataclass
class CTALConfig:
    """Sizes and switches of the two-stream CTAL encoder.

    The defaults are the paper's BASE model (N=3, A=12, H=768) with a 30K byte-level
    BPE vocabulary.
    """

    vocab_size: int = 30000
    num_text_layers: int = 3
    num_audio_layers: int = 3
    hidden_size: int = 768
    num_heads: int = 12
    ffn_size: int = 3072
    # Residual and embedding dropout, as in RoBERTa.
    dropout: float = 0.1
    # 0 by default: with attention dropout SDPA leaves its fused kernel for the slow
    # MATH kernel on CPU (3-4x slower), and the fused Triton kernel has no dropout.
    attention_dropout: float = 0.0
    max_tokens: int = 512
    # 3000 frames = 37.5 s at 80 frames/s (hop 200 samples at 16 kHz), above the
    # longest LibriSpeech utterance (~35 s).
    max_frames: int = 3000
    feat_dim: int = 160
    pad_token_id: int = 1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    attn_impl: str = "sdpa"
    activation_checkpointing: bool = False
    # False: no cross-attention, the two streams never meet. Pre-trained with MLM + MCAM
    # this is the paper's unimodal pre-training (table 4 (g): a RoBERTa-like text model
    # and a Mockingjay-like audio model, fused only at fine-tuning).
    cross_attention: bool = True

    def __post_init__(self) -> None:
        if self.attn_impl not in ATTENTION_BACKENDS:
            raise ValueError(f"attn_impl must be one of {ATTENTION_BACKENDS}, got {self.attn_impl!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.attn_impl == "fused" and self.attention_dropout > 0:
            raise ValueError("attn_impl='fused' has no attention dropout; set attention_dropout=0")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} outside vocab of {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> CTALConfig:
        """Named size (`tiny`, `base`, `large`) with any field overridden."""
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    def replace(self, **overrides: Any) -> CTALConfig:
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CTALConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown CTALConfig fields: {sorted(unknown)}")
        return cls(**values)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> CTALConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def estimate_parameters(config: CTALConfig) -> dict[str, int]:
    """Parameter count of the backbone by component, from the config alone.

    The MLM decoder is tied to the token embeddings and adds only its bias, so it is
    counted under `mlm_head` without a second vocabulary matrix.
    """
    h, f, v = config.hidden_size, config.ffn_size, config.vocab_size
    layer_norm = 2 * h
    attention = 4 * (h * h + h)
    ffn = h * f + f + f * h + h
    text_layer = attention + layer_norm + ffn + layer_norm
    audio_layer = text_layer + (attention + layer_norm if config.cross_attention else 0)
    counts = {
        "text_embeddings": v * h + config.max_tokens * h + layer_norm,
        "text_layers": config.num_text_layers * text_layer,
        "audio_embeddings": config.feat_dim * h + h + config.max_frames * h + layer_norm,
        "audio_layers": config.num_audio_layers * audio_layer,
        "mlm_head": h * h + h + layer_norm + v,
        "mcam_head": h * h + h + layer_norm + h * config.feat_dim + config.feat_dim,
    }
    counts["backbone"] = sum(
        counts[k] for k in ("text_embeddings", "text_layers", "audio_embeddings", "audio_layers")
    )
    counts["pretraining"] = counts["backbone"] + counts["mlm_head"] + counts["mcam_head"]
    return counts


def count_parameters(module: Any, trainable_only: bool = False) -> int:
    """Number of distinct parameters of a module; tied weights count once."""
    # Module.parameters() already yields a shared Parameter only once.
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
