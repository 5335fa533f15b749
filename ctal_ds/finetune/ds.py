"""The DeepSpeed config of a fine-tune: pre-training's resolver plus a cosine schedule.

The JSON file owns ZeRO stage, precision, clipping and the optimizer, exactly as in
pre-training, and ``ctal_ds.train.ds_config.resolve`` checks it the same way. With
``schedule="cosine"`` (the default) its scheduler section is replaced by DeepSpeed's
``WarmupCosineLR`` spanning the whole run, so every JSON of ``ds_configs/`` gives the
paper's fine-tuning schedule (cosine annealing, section 4.2.1). The engine steps it once
per optimizer step, never per micro batch or per epoch (the public release stepped it
per batch with T_max = epochs); ``align_warmup`` makes update k use iteration k.

WarmupCosineLR always warms up over at least 2 steps; without ``--warmup-steps`` the
warmup is flat (``warmup_min_ratio`` 1): the first updates run at the full lr.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ctal_ds.train import ds_config
from ctal_ds.train.ds_config import BatchPlan


def batch_plan(raw: dict[str, Any], cfg: Any, world: int, world_var: str) -> BatchPlan:
    """Micro batch x accumulation x world of the run, before its length is known."""
    return ds_config.resolve_batch(copy.deepcopy(raw), cfg.optim, world, world_var, str(cfg.deepspeed_config))


def cosine_scheduler(steps: int, warmup: int, warmup_min_ratio: float, cos_min_ratio: float) -> dict[str, Any]:
    flat = warmup == 0
    return {
        "type": "WarmupCosineLR",
        "params": {
            "total_num_steps": steps,
            "warmup_num_steps": max(warmup, 1),
            "warmup_min_ratio": 1.0 if flat else warmup_min_ratio,
            "warmup_type": "linear",
            "cos_min_ratio": cos_min_ratio,
        },
    }


def resolve(
    raw: dict[str, Any], cfg: Any, steps: int, world: int, world_var: str, accelerator: str, fp16_supported: bool
) -> tuple[dict[str, Any], BatchPlan, list[str]]:
    """The config DeepSpeed gets, its batch plan, and notes for the log."""
    raw = copy.deepcopy(raw)
    optim = cfg.optim
    if cfg.schedule == "cosine":
        raw["scheduler"] = cosine_scheduler(steps, optim.warmup_steps or 0, cfg.warmup_min_ratio, cfg.cos_min_ratio)
        # The warmup is set above (0 means none, which WarmupCosineLR cannot take as is).
        optim = dataclasses.replace(optim, warmup_steps=None)
    ds, plan, steps, notes = ds_config.resolve(
        raw, optim, steps, world, world_var, accelerator, fp16_supported, str(cfg.deepspeed_config)
    )
    sched = ds.get("scheduler") or {}
    notes.append(f"schedule {sched.get('type', 'none')} over {steps} optimizer steps")
    return ds, plan, notes
