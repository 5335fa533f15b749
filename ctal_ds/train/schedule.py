"""DeepSpeed's warmup schedules, aligned with the optimizer updates they drive.

DeepSpeed steps the scheduler after each update, starting from iteration -1, so
update k uses the lr of iteration k-2 (and update 1 the initial lr). With
`warmup_min_lr` 0 the first two updates therefore use lr 0, with linear and log
warmup alike (DESIGN section 5 saw it with log); `WarmupCosineLR` gives lr 0 to the
first update whatever its `warmup_min_ratio`. Starting the scheduler at iteration 1
gives update k the lr of iteration k: a linear warmup reaches its peak exactly at
update `warmup_num_steps`. The decay's end is moved one step past the run: the last
update of `WarmupDecayLR` is not at lr 0, and `WarmupCosineLR` reaches `cos_min_ratio`
at the last update, not one update earlier (its progress is clamped at the end, so the
last two updates would share the floor).
"""

from __future__ import annotations

from typing import Any


def align_warmup(engine: Any, steps: int) -> bool:
    """Align a WarmupLR / WarmupDecayLR / WarmupCosineLR scheduler; False for others.

    Call before a resume: loading a checkpoint restores the iteration, and the
    decay's end (not part of the scheduler's state) stays as set here.
    """
    from deepspeed.runtime.lr_schedules import WarmupCosineLR, WarmupDecayLR, WarmupLR

    scheduler = engine.lr_scheduler
    if not isinstance(scheduler, (WarmupLR, WarmupCosineLR)):
        return False
    if isinstance(scheduler, (WarmupDecayLR, WarmupCosineLR)):
        scheduler.total_num_steps = steps + 1
    scheduler.step(1)
    return True
