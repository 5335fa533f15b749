"""ctal-ds: DeepSpeed pre-training of CTAL audio-and-language Transformers.

The model classes and the processor are importable from here:

    from ctal_ds import CTALModel
    model = CTALModel.from_pretrained("runs/base/export")
    out = model.embed(audio="utt.wav", text="the transcript")

They are loaded on first use, so that ``import ctal_ds.data...`` (e.g. in a shard
building worker) does not import torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_MODEL_EXPORTS = (
    "CTALConfig",
    "CTALForPretraining",
    "CTALForSequenceTask",
    "CTALModel",
    "CTALProcessor",
    "load_pretrained",
)

__all__ = ["__version__", *_MODEL_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _MODEL_EXPORTS:
        import ctal_ds.model

        return getattr(ctal_ds.model, name)
    raise AttributeError(f"module 'ctal_ds' has no attribute {name!r}")
