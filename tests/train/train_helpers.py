"""Shared pieces of the engine tests: real DeepSpeed engines in spawned gloo processes.

The functions run inside `torch.multiprocessing.spawn` children, so they live in a
module (importable by name in the child), and report back through files.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from ctal_ds.model import CTALConfig, CTALForPretraining
from ctal_ds.train.checkpoint import Checkpointer
from ctal_ds.train.config import DataConfig, LoopConfig, RunConfig
from ctal_ds.train.health import HealthMonitor
from ctal_ds.train.schedule import align_warmup
from ctal_ds.train.stop import StopRequest
from ctal_ds.train.task import PretrainTask
from ctal_ds.train.tracking import NullTracker
from ctal_ds.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
BOS, PAD, EOS, MASK = 0, 1, 2, 4
PRETRAIN = REPO / "launch" / "pretrain.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, fn: Callable[..., Any], out: str, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    # Two ranks share two cores: one thread each avoids oversubscription.
    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist

    try:
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
        result = fn(rank, world, *args)
        Path(out, f"result_{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    except BaseException:
        Path(out, f"error_{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()


def run_ranks(fn: Callable[..., Any], world: int, out: Path, *args: Any, timeout: float = 420) -> list[Any]:
    """Run `fn(rank, world, *args)` in `world` gloo processes; returns each rank's result.

    The ranks get `timeout` seconds together (a spawn of the tiny model's scenarios takes
    a minute or two on a loaded 2-core machine); then they are killed and the failure
    says which were still running.
    """
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    context = mp.spawn(_child, args=(world, free_port(), fn, str(out), args), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    done = False
    try:
        while not done and time.monotonic() < deadline:
            done = context.join(timeout=max(0.1, deadline - time.monotonic()))
    except Exception as err:
        errors = [p.read_text() for p in sorted(out.glob("error_*.txt"))]
        raise AssertionError("rank failed:\n" + "\n".join(errors)) from err
    if not done:
        running = [r for r, p in enumerate(context.processes) if p.is_alive()]
        for process in context.processes:
            process.kill()
            process.join(30)
        raise AssertionError(f"ranks {running} of {world} still running {fn.__name__} after {timeout:.0f} s; killed")
    return [json.loads((out / f"result_{r}.json").read_text()) for r in range(world)]


# Data ----------------------------------------------------------------------------------


def make_batch(cfg: CTALConfig, gen: torch.Generator, size: int, exact_masks: bool = False) -> dict[str, Any]:
    """A pre-training batch per docs/contracts.md: padded, with MLM and MCAM corruption.

    `exact_masks`: every utterance gets 2 masked tokens and 5 masked frames, so a batch
    mean equals the mean of its utterances' means (what accumulation tests compare).
    """
    lengths_l = torch.randint(6, 20, (size,), generator=gen)
    lengths_t = torch.randint(20, 60, (size,), generator=gen)
    max_l, max_t = int(lengths_l.max()), int(lengths_t.max())
    text_mask = torch.arange(max_l)[None] < lengths_l[:, None]
    audio_mask = torch.arange(max_t)[None] < lengths_t[:, None]
    # Words from a small range with a fixed pattern per position, so MLM is learnable.
    tokens = 5 + (torch.arange(max_l)[None] * 7 + torch.randint(0, 3, (size, 1), generator=gen)) % 50
    tokens[:, 0] = BOS
    tokens[torch.arange(size), lengths_l - 1] = EOS
    tokens = torch.where(text_mask, tokens, torch.full_like(tokens, PAD))
    pick = (torch.rand(size, max_l, generator=gen) < 0.3) & text_mask
    pick[:, 0] = False
    pick[:, 1] = True
    if exact_masks:
        pick[:] = False
        pick[:, 1:3] = True
    frames = torch.sin(torch.arange(max_t)[None, :, None] * 0.1 + torch.arange(cfg.feat_dim)[None, None] * 0.05)
    frames = frames.repeat(size, 1, 1) + 0.1 * torch.randn(size, max_t, cfg.feat_dim, generator=gen)
    frames = frames * audio_mask[..., None]
    mcam_mask = (torch.rand(size, max_t, generator=gen) < 0.2) & audio_mask
    mcam_mask[:, 0] = True
    if exact_masks:
        mcam_mask[:] = False
        mcam_mask[:, :5] = True
    return {
        "input_ids": torch.where(pick, torch.full_like(tokens, MASK), tokens),
        "text_mask": text_mask,
        "audio_feats": frames.masked_fill(mcam_mask[..., None], 0.0),
        "audio_mask": audio_mask,
        "mlm_labels": torch.where(pick, tokens, torch.full_like(tokens, -100)),
        "mcam_targets": frames,
        "mcam_mask": mcam_mask,
        "keys": [f"utt{i}" for i in range(size)],
    }


class SyntheticStream:
    """Infinite, resumable stream: batch i of rank r is a pure function of (seed, r, i).

    `sizes` cycles through batch sizes, as a frame-bucketed loader's batches vary.
    """

    def __init__(self, cfg: CTALConfig, seed: int, rank: int, sizes: tuple[int, ...] = (4,)) -> None:
        self.cfg, self.seed, self.rank, self.sizes = cfg, seed, rank, sizes
        self.index = 0

    def __iter__(self) -> SyntheticStream:
        return self

    def __next__(self) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 10_007 + self.index)
        batch = make_batch(self.cfg, gen, self.sizes[self.index % len(self.sizes)])
        self.index += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index = state["index"]


class FixedBatches:
    """Rank r's samples, cut into batches of `size`: the same samples whatever the size."""

    def __init__(self, cfg, rank: int, size: int, total: int = 24) -> None:
        gen = torch.Generator().manual_seed(100 + rank)
        singles = [make_batch(cfg, gen, 1, exact_masks=True) for _ in range(total)]
        self.batches = [_concat(singles[i : i + size]) for i in range(0, total, size)]
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.batches[self.index]
        self.index += 1
        return batch


def _concat(items):
    """Pad single-utterance batches to a common length and stack them."""
    out = {}
    for key in items[0]:
        if key == "keys":
            out[key] = [k for it in items for k in it[key]]
            continue
        longest = max(it[key].shape[1] for it in items)
        pad_value = {"input_ids": PAD, "mlm_labels": -100}.get(key, 0)
        padded = []
        for it in items:
            t = it[key]
            shape = (t.shape[0], longest - t.shape[1], *t.shape[2:])
            padded.append(torch.cat([t, torch.full(shape, pad_value, dtype=t.dtype)], dim=1))
        out[key] = torch.cat(padded)
    return out


# Engines and trainers --------------------------------------------------------------------


def tiny_config(**overrides: Any) -> CTALConfig:
    return CTALConfig.preset("tiny", **overrides)


def ds_config(stage: int, micro: int = 4, accum: int = 1, world: int = 2, lr: float = 3e-3, **extra: Any) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world,
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": 0.01, "torch_adam": True}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr,
                                                          "warmup_num_steps": 2, "warmup_type": "linear",
                                                          "total_num_steps": 100}},
        "zero_optimization": {"stage": stage},
    }
    cfg.update(extra)
    return cfg


def make_engine(model_cfg: CTALConfig, ds: dict, seed: int = 0):
    import deepspeed

    torch.manual_seed(seed)
    model = CTALForPretraining(model_cfg)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    return engine


class ListTracker(NullTracker):
    """Keeps every logged row in memory."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.rows.append({"step": step, **metrics})


def make_trainer(engine, stream, out: Path, rank: int, world: int, steps: int, **loop: Any) -> Trainer:
    import torch.distributed as dist

    cfg = RunConfig(
        out=out, deepspeed_config=out / "ds.json", data=DataConfig(train_shards=out),
        loop=LoopConfig(steps=steps, log_every=loop.pop("log_every", 1), export_final=False, **loop),
    )
    cfg.checkpoint.save_every = 10**9
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(out / "checkpoints", rank, world, keep_last=2, barrier=dist.barrier,
                        side_json={"model_config.json": {"architecture": type(engine.module).__name__,
                                                         "model": engine.module.config.to_dict(),
                                                         "head": engine.module.head_config()}})
    align_warmup(engine, steps)
    return Trainer(cfg, engine, stream, ckpt, ListTracker(), HealthMonitor(1.0, 3),
                   StopRequest(cfg.loop.exit_at_step), rank, world, task=PretrainTask())


def params_of(engine) -> dict[str, torch.Tensor]:
    """Full fp32 parameters of a ZeRO-0/1/2 engine (each rank holds all of them)."""
    return {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# launch/pretrain.py in subprocesses -------------------------------------------------------


def job_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "CROSS_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    return env


def pretrain_args(shards: Path, out: Path, *extra: str) -> list[str]:
    """A tiny run on the demo shards; `extra` appends or overrides flags."""
    return [
        "--deepspeed_config", str(REPO / "ds_configs" / "cpu.json"), "--train-shards", str(shards / "train"),
        "--valid-shards", str(shards / "valid"), "--out", str(out), "--preset", "tiny", "--micro-batch-size", "4",
        "--warmup-steps", "2", "--lr", "1e-3", "--log-every", "1", "--flush-every", "2", "--num-workers", "1",
        *extra,
    ]  # fmt: skip


def start_ranks(args: list[str], world: int, log_dir: Path, rank_args: dict[int, list[str]] | None = None,
                **env: str) -> list[subprocess.Popen]:  # fmt: skip
    """`world` processes of launch/pretrain.py found by RANK/WORLD_SIZE, as torchrun would start them;
    `rank_args[r]` is appended to rank r's flags."""
    port = str(free_port())
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(world):
        rank_env = job_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env)  # fmt: skip
        log = open(log_dir / f"rank{rank}.log", "w")  # the child keeps it; closed at its exit
        own = (rank_args or {}).get(rank, [])
        procs.append(subprocess.Popen([sys.executable, str(PRETRAIN), *args, *own], env=rank_env, cwd=REPO,
                                      stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
    return procs


def wait_ranks(procs: list[subprocess.Popen], log_dir: Path, timeout: float = 300) -> list[int]:
    """The exit codes of the ranks of `start_ranks`, which get `timeout` seconds together;
    then every rank is killed and the failure names those still running, with the logs."""
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            running = [r for r, p in enumerate(procs) if p.poll() is None]
            for p in procs:
                p.kill()
                p.wait()
            raise AssertionError(
                f"ranks {running} of launch/pretrain.py still running after {timeout:.0f} s; killed\n{logs(log_dir)}"
            ) from None
    return codes


def logs(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(log_dir.glob("*.log")))
