"""Engine start-up shared by pre-training and fine-tuning (and evaluation).

`init_process_group` discovers the ranks (ctal_ds/dist.py), starts the process group
with the run's timeouts and sizes torch's CPU thread pool; `close_process_group` leaves
it together. `build_engine` wraps a model built with the run's seed (identical weights on every
rank) in a DeepSpeed engine, after re-seeding each rank for its own dropout stream,
and aligns the warmup schedule with the updates. `start_run` resumes from a
checkpoint when there is one, then opens (or reattaches to) the MLflow run on rank 0
and records the run id in the client state that every checkpoint saves.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctal_ds import dist
from ctal_ds.train.config import TimeoutConfig
from ctal_ds.train.schedule import align_warmup


def init_process_group(timeouts: TimeoutConfig | None = None) -> dist.RankInfo:
    """`timeouts`: of the start-up and of every later collective (default: TimeoutConfig())."""
    from deepspeed.accelerator import get_accelerator

    timeouts = timeouts if timeouts is not None else TimeoutConfig()
    info = dist.init_distributed(startup_timeout_s=timeouts.startup_s, collective_timeout_s=timeouts.collective_s)
    if get_accelerator().device_name() == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Ranks on one host share its cores; torch would otherwise give each all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_world_size))
    return info


def close_process_group() -> None:
    """Leave together: ZeRO-3 jobs could abort at interpreter exit while ranks were
    still flushing; a final barrier and flushed outputs avoid it (DESIGN section 5)."""
    torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    torch.distributed.destroy_process_group()


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank python/numpy/torch seeds: dropout differs between ranks, as their data does."""
    for seed_fn in (random.seed, np.random.seed, torch.manual_seed):
        seed_fn(seed + rank)


def build_engine(
    model: torch.nn.Module, ds: dict[str, Any], seed: int, rank: int, steps: int, params: list | None = None
) -> Any:
    """The DeepSpeed engine of ``model``; ``params``: its parameter groups (default: every
    trainable parameter in one group)."""
    import deepspeed

    seed_rank(seed, rank)
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ds)
    align_warmup(engine, steps)
    return engine


def start_run(
    trainer: Any,
    cfg: Any,
    info: Any,
    ds: dict[str, Any],
    plan: Any,
    resume_dir: Path | None,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> str | None:
    """Resume (every rank), then start tracking (rank 0); returns the MLflow run id.

    `params` and `tags` are added to the standard ones (run and DeepSpeed configs,
    model config, batch plan, versions; launcher, host, SLURM job, resume point).
    """
    from ctal_ds.train import components

    client = trainer.resume(resume_dir) if resume_dir is not None else {}
    run_id = client.get("mlflow_run_id")
    if info.is_main:
        print(f"[ctal-ds] {f'resumed from {resume_dir}' if resume_dir else 'fresh run'}", flush=True)
        all_params = {**components.tracking_params(cfg, ds, trainer.engine.module, plan), **(params or {})}
        all_tags = {**components.run_tags(info, resume_dir, trainer.step), **(tags or {})}
        resumed_step = trainer.step if resume_dir is not None else None
        run_id = trainer.tracker.start(run_id, all_params, all_tags, resumed_step)
        components.log_start_artifacts(trainer.tracker, trainer.checkpointer)
    trainer.client_state["mlflow_run_id"] = run_id  # kept in every checkpoint
    return run_id
