"""Load a DeepSpeed JSON and resolve it for this run before `deepspeed.initialize`.

Everything that can be checked without compute is checked here, so a wrong
setting fails in the first second with a message that says what to change, not
after the engine has been built on every rank:

- batch arithmetic: train_batch_size = micro x accumulation x world size;
- precision: at most one of fp16 / bf16, and fp16 only where the accelerator has it;
  bf16 accumulates gradients in fp32 where DeepSpeed allows it (ZeRO 1-3);
- schedule: the LR schedule spans the run's `--steps`, warmup fits inside it;
- optimizer: on accelerators without CUDA, torch's Adam stands in for FusedAdam.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctal_ds.train.cli import parse_assignments
from ctal_ds.train.config import ConfigError, OptimOverrides

PRECISIONS = ("fp32", "fp16", "bf16")
_SCHEDULES_WITH_TOTAL = ("WarmupDecayLR", "WarmupCosineLR")


@dataclass(frozen=True)
class BatchPlan:
    micro: int  # most utterances in one micro batch (batches are frame-bucketed)
    accum: int
    world: int
    world_source: str  # the environment variable the world size was read from

    @property
    def global_batch(self) -> int:
        return self.micro * self.accum * self.world

    def describe(self) -> str:
        return (
            f"train_batch_size {self.global_batch} = micro batch {self.micro} (max utterances) "
            f"x gradient accumulation {self.accum} x world size {self.world} "
            f"(world size from {self.world_source})"
        )


def load(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--ds {key}: {part} is not a section of the DeepSpeed config")
    node[parts[-1]] = value


def precision_of(cfg: dict[str, Any]) -> str:
    fp16 = cfg.get("fp16", {}).get("enabled", False)
    bf16 = cfg.get("bf16", {}).get("enabled", False)
    if fp16 and bf16:
        raise ConfigError(
            "fp16 and bf16 are both enabled in the DeepSpeed config; enable one, "
            "or pick with --precision fp32|fp16|bf16"
        )
    return "fp16" if fp16 else "bf16" if bf16 else "fp32"


def set_precision(cfg: dict[str, Any], precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    # The fp16 block keeps its loss-scaling settings when disabled, so switching back
    # and forth on the command line never loses them.
    cfg.setdefault("fp16", {})["enabled"] = precision == "fp16"
    cfg.setdefault("bf16", {})["enabled"] = precision == "bf16"


def set_bf16_grad_accumulation(cfg: dict[str, Any]) -> bool:
    """bf16 gradients summed over micro batches lose low bits; accumulate them in fp32.

    DeepSpeed accepts fp32 accumulation for bf16 with ZeRO 1-3 (stage 1 then uses its
    BF16_Optimizer) but refuses it at stage 0, where accumulation stays in bf16.
    """
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    if precision_of(cfg) != "bf16" or stage < 1 or "grad_accum_dtype" in cfg.get("data_types", {}):
        return False
    cfg.setdefault("data_types", {})["grad_accum_dtype"] = "fp32"
    return True


def resolve_batch(
    cfg: dict[str, Any], opt: OptimOverrides, world: int, world_source: str, source: str
) -> BatchPlan:
    micro = opt.micro_batch_size or cfg.get("train_micro_batch_size_per_gpu")
    accum = opt.grad_accum or cfg.get("gradient_accumulation_steps")
    total = cfg.get("train_batch_size")
    overridden = opt.micro_batch_size is not None or opt.grad_accum is not None
    for name, value in (("micro batch", micro), ("gradient accumulation", accum), ("train_batch_size", total)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r} ({source})")
    if micro is None and accum is None:
        raise ConfigError(
            f"{source}: set train_micro_batch_size_per_gpu (or --micro-batch-size) and "
            "gradient_accumulation_steps (or --grad-accum)"
        )
    if micro is None or accum is None:
        known = micro or accum
        if total is None or total % (known * world):
            raise ConfigError(
                f"{source}: cannot derive the {'micro batch' if micro is None else 'accumulation'}: "
                f"train_batch_size {total} is not a multiple of {known} x world size {world} "
                f"(from {world_source}); set both train_micro_batch_size_per_gpu and "
                "gradient_accumulation_steps"
            )
        derived = total // (known * world)
        micro, accum = (derived, accum) if micro is None else (micro, derived)
    plan = BatchPlan(micro, accum, world, world_source)
    if total is not None and total != plan.global_batch:
        hint = (
            "train_batch_size is derived; drop it from the file, "
            if overridden
            else "remove train_batch_size from the file (it is derived), "
        )
        if total % (micro * world) == 0:
            hint += f"or keep it and set --grad-accum {total // (micro * world)}"
        else:
            hint += f"or set train_batch_size to {plan.global_batch}"
        raise ConfigError(
            f"{source}: train_batch_size {total} != micro batch {micro} x gradient accumulation "
            f"{accum} x world size {world} (from {world_source}) = {plan.global_batch}; {hint}"
        )
    cfg["train_micro_batch_size_per_gpu"] = plan.micro
    cfg["gradient_accumulation_steps"] = plan.accum
    cfg["train_batch_size"] = plan.global_batch
    return plan


def resolve_schedule(cfg: dict[str, Any], opt: OptimOverrides, steps: int | None, source: str) -> int:
    """Apply lr/warmup overrides; returns the run length in optimizer steps.

    `steps` None takes the schedule's own total_num_steps, so a shipped config runs
    its full schedule by default; a number makes the schedule span exactly that.
    """
    optimizer = cfg.get("optimizer")
    if opt.lr is not None:
        if optimizer is None:
            raise ConfigError(f"--lr given but {source} has no optimizer section")
        optimizer.setdefault("params", {})["lr"] = opt.lr
    sched = cfg.get("scheduler") or {}
    params = sched.setdefault("params", {})
    kind = sched.get("type")
    if steps is None:
        steps = params.get("total_num_steps") if kind in _SCHEDULES_WITH_TOTAL else None
        if steps is None:
            raise ConfigError(f"{source} has no scheduler total_num_steps: give the run length with --steps")
    if opt.lr is not None and "warmup_max_lr" in params:
        params["warmup_max_lr"] = opt.lr
    if opt.warmup_steps is not None:
        params["warmup_num_steps"] = opt.warmup_steps
    if kind in _SCHEDULES_WITH_TOTAL:
        # The schedule spans the run: its length is --steps, not a number in the file.
        params["total_num_steps"] = steps
    if kind in ("WarmupLR", "WarmupDecayLR"):
        # DeepSpeed's default log warmup from warmup_min_lr=0 gives lr=0 for the first
        # two steps (DESIGN section 5); make the linear warmup explicit.
        params.setdefault("warmup_type", "linear")
    warmup = params.get("warmup_num_steps", 0)
    if kind in _SCHEDULES_WITH_TOTAL and warmup > steps:
        raise ConfigError(
            f"warmup_num_steps {warmup} exceeds the run's {steps} steps; "
            "set --warmup-steps below --steps"
        )
    return steps


def adapt_to_accelerator(cfg: dict[str, Any], accelerator: str, fp16_supported: bool, source: str) -> list[str]:
    """Run-time choice of the GPU-only paths; returns notes to print."""
    notes: list[str] = []
    if precision_of(cfg) == "fp16" and not fp16_supported:
        raise ConfigError(
            f"{source}: fp16 is not supported on the {accelerator} accelerator; "
            "use --precision bf16 (or fp32), or run on a GPU"
        )
    optimizer = cfg.get("optimizer") or {}
    offload = cfg.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    if (
        accelerator != "cuda"
        and str(optimizer.get("type", "")).lower() in ("adam", "adamw")
        and offload == "none"
        and "torch_adam" not in optimizer.get("params", {})
    ):
        # FusedAdam is a CUDA kernel; off-GPU DeepSpeed would JIT-build a CPU op instead.
        # torch's Adam is the twin that needs no build and gives the same update.
        optimizer.setdefault("params", {})["torch_adam"] = True
        notes.append(f"optimizer: torch.optim {optimizer['type']} (no FusedAdam on {accelerator})")
    return notes


def resolve(
    cfg: dict[str, Any],
    opt: OptimOverrides,
    steps: int | None,
    world: int,
    world_source: str,
    accelerator: str = "cpu",
    fp16_supported: bool = False,
    source: str = "DeepSpeed config",
) -> tuple[dict[str, Any], BatchPlan, int, list[str]]:
    """The config DeepSpeed will get, the batch plan, the run's steps, notes for the log."""
    cfg = copy.deepcopy(cfg)
    for key, value in parse_assignments(opt.extra, "--ds").items():
        set_dotted(cfg, key, value)
    if opt.precision is not None:
        set_precision(cfg, opt.precision)
    precision = precision_of(cfg)
    notes = adapt_to_accelerator(cfg, accelerator, fp16_supported, source)
    if set_bf16_grad_accumulation(cfg):
        notes.append("bf16 with fp32 gradient accumulation (data_types.grad_accum_dtype)")
    if opt.grad_clip is not None:
        cfg["gradient_clipping"] = opt.grad_clip
    plan = resolve_batch(cfg, opt, world, world_source, source)
    steps = resolve_schedule(cfg, opt, steps, source)
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    notes[:0] = [plan.describe(), f"precision {precision}, ZeRO stage {stage}, {steps} optimizer steps"]
    return cfg, plan, steps, notes
