"""Per-layer activation checkpointing: recompute a layer's activations in backward.

Non-reentrant checkpointing (use_reentrant=False) works with keyword arguments,
inputs that do not require grad, and DeepSpeed's ZeRO; it restores the RNG state for
the recomputation, so dropout masks and hence gradients equal those of a run without
checkpointing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_layer(layer: nn.Module, *args: Any, checkpointing: bool) -> torch.Tensor:
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)
