"""Stop a run that can no longer learn, and say why.

Two failures end a run with a diagnosis and a non-zero exit, before anything is
saved (the last complete checkpoint stays the one to resume from):

- a non-finite loss on any rank: the step is not applied; the message names the
  loss part that went bad (e.g. MLM, MCAM or only their sum), the step, lr and scale;
- a collapsed fp16 loss scale: K consecutive skipped steps at `min_loss_scale`, or
  DeepSpeed's own "already at minimum" error, which it raises when hysteresis runs
  out at the floor.
"""

from __future__ import annotations

from typing import Any

_DS_MIN_SCALE_ERROR = "loss scale already at minimum"


class TrainingDiverged(RuntimeError):
    """The run cannot continue; the message is the diagnosis."""


def loss_scale(engine: Any) -> float | None:
    """Current fp16 loss scale, None when the engine does not scale the loss."""
    if not engine.fp16_enabled():
        return None
    optimizer = engine.optimizer
    for name in ("loss_scale", "cur_scale"):
        value = getattr(optimizer, name, None)
        if value is not None:
            return float(value)
    return None


def min_loss_scale(ds_config: dict[str, Any]) -> float:
    return float(ds_config.get("fp16", {}).get("min_loss_scale", 1))


class HealthMonitor:
    def __init__(self, min_scale: float, max_skips_at_min_scale: int) -> None:
        self.min_scale = min_scale
        self.max_skips = max_skips_at_min_scale
        self.skips_at_min = 0

    def check_finite(self, step: int, bad_parts: dict[str, bool], lr: float, scale: float | None) -> None:
        """`bad_parts`: loss part -> non-finite on any rank in this step; the first part
        is the total that is back-propagated, the others its terms."""
        bad = [p for p, is_bad in bad_parts.items() if is_bad]
        if not bad:
            return
        total = next(iter(bad_parts))
        parts = [p for p in bad if p != total] or [f"{total} (the sum; its parts finite)"]
        raise TrainingDiverged(
            f"non-finite {', '.join(parts)} at step {step} (lr {lr:.3g}"
            f"{'' if scale is None else f', loss scale {scale:g}'}); the step was not applied "
            "and nothing was saved. Resume from the last checkpoint with a lower --lr, "
            "more --warmup-steps or --precision bf16/fp32"
        )

    def after_step(self, step: int, skipped: bool, scale: float | None, lr: float) -> None:
        if scale is None:
            return
        self.skips_at_min = self.skips_at_min + 1 if skipped and scale <= self.min_scale else 0
        if self.skips_at_min >= self.max_skips:
            raise TrainingDiverged(self.collapse_message(step, scale, lr))

    def collapse_message(self, step: int, scale: float | None, lr: float) -> str:
        return (
            f"fp16 loss scale collapsed at step {step}: {max(self.skips_at_min, 1)} consecutive "
            f"overflowing steps at the minimum scale {scale if scale is not None else self.min_scale:g} "
            f"(lr {lr:.3g}); gradients overflow even unscaled. Nothing was saved. Resume from the "
            "last checkpoint with --precision bf16, a lower --lr or stronger --grad-clip"
        )

    @staticmethod
    def is_deepspeed_min_scale_error(err: BaseException) -> bool:
        return _DS_MIN_SCALE_ERROR in str(err).lower()
