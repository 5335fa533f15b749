"""The full DeepSpeed training step against the bare model step, and ZeRO-0 vs ZeRO-2 memory.

    python benchmarks/train_step.py --preset base --batch 4 --frames 200 --tokens 24 --steps 5

One command, two processes per phase (gloo, one CPU thread each, or one GPU each),
three phases in turn, each in fresh processes so that its memory is its own:

  bare   plain torch on each rank alone: forward, backward, clip_grad_norm_(1.0),
         torch.optim.AdamW.step() -- the optimizer DeepSpeed builds from
         ds_configs/cpu.json (`torch_adam`); no communication. With --precision bf16
         the model and Adam states are plain bf16 (no fp32 master weights, unlike the
         engine), so that row is a lower bound rather than a like-for-like baseline
  zero0  the trainer's step (ctal_ds.train.trainer.Trainer.train_step) around a
         DeepSpeed engine at ZeRO stage 0: gradients all-reduced, every rank keeps the
         whole optimizer state
  zero2  the same at ZeRO stage 2: optimizer state, fp32 master weights and
         gradients partitioned over the ranks

Every phase trains on the same fixed batches (benchmarks/model.py `make_batch`;
real lengths 90-100 % of --frames / --tokens). Columns:

  s/step       median over --steps timed steps (after 2 warm-up steps)
  samples/s    real utterances of both ranks per second
  GFLOP/s/rank matmul FLOPs of ctal_ds.model.flops.training_flops (real lengths) per
               second per rank; MFU divides it by the peak: --peak-flops, or else the
               best 2048^3 matmul with --threads threads, measured once before the phases
  vs bare      s/step of the row / s/step of bare: what the engine, the all-reduce and
               the trainer's bookkeeping cost on top of the model's own work
  optim MB     bytes held by the optimizer on one rank: Adam moments plus, under ZeRO,
               the fp32 master partition
  RSS +MB      growth of the process's resident memory from before the model was built
               to the peak over the timed steps (CPU only; on GPU: max allocated)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from model import make_batch, matmul_peak  # noqa: E402  (benchmarks/model.py)

from ctal_ds.model import CTALConfig, CTALForPretraining, count_parameters  # noqa: E402
from ctal_ds.model.flops import training_flops  # noqa: E402

PHASES = ("bare", "zero0", "zero2")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def optimizer_mb(optimizer) -> float:
    """Adam moments of the (innermost) torch optimizer, plus ZeRO's fp32 master partition."""
    inner = getattr(optimizer, "optimizer", optimizer)
    total = sum(t.numel() * t.element_size() for s in inner.state.values() for t in s.values() if torch.is_tensor(t))
    for group in getattr(optimizer, "single_partition_of_fp32_groups", []):
        total += group.numel() * group.element_size()
    return total / 2**20


class Cycle:
    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        return batch


def engine_step_fn(args, model, stage: int, rank: int, world: int, out: Path, batches):
    import deepspeed

    from ctal_ds.train import ds_config
    from ctal_ds.train.checkpoint import Checkpointer
    from ctal_ds.train.config import DataConfig, OptimOverrides, RunConfig
    from ctal_ds.train.health import HealthMonitor
    from ctal_ds.train.stop import StopRequest
    from ctal_ds.train.task import PretrainTask
    from ctal_ds.train.tracking import NullTracker
    from ctal_ds.train.trainer import Trainer

    over = OptimOverrides(precision=args.precision, micro_batch_size=args.batch, grad_accum=1, warmup_steps=1,
                          extra=[f"zero_optimization.stage={stage}"])  # fmt: skip
    accel = deepspeed.accelerator.get_accelerator()
    ds, _, _, _ = ds_config.resolve(ds_config.load(REPO / "ds_configs" / "cpu.json"), over, 1000, world,
                                    "WORLD_SIZE", accel.device_name(), accel.is_fp16_supported())  # fmt: skip
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    cfg = RunConfig(out=out, deepspeed_config=out, data=DataConfig(train_shards=out))
    trainer = Trainer(cfg, engine, Cycle(batches), Checkpointer(out, rank, world, 1, lambda: None), NullTracker(),
                      HealthMonitor(1.0, 3), StopRequest(), rank, world, task=PretrainTask())  # fmt: skip
    return trainer.train_step, lambda: optimizer_mb(engine.optimizer)


def bare_step_fn(args, model, batches):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device=device, dtype=DTYPES[args.precision])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    stream = Cycle([{k: v.to(device) for k, v in b.items()} for b in batches])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(next(stream))["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step, lambda: optimizer_mb(optimizer)


def run_phase(rank: int, world: int, port: int, phase: str, args, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(args.threads)
    if torch.cuda.is_available():
        torch.cuda.set_device(rank)
    import deepspeed

    deepspeed.init_distributed(auto_mpi_discovery=False)
    peak = args.peak_flops
    config = CTALConfig.preset(args.preset, dropout=0.0)
    batches = [make_batch(config, args.batch, args.frames, args.tokens, seed=100 * rank + i) for i in range(4)]
    flops = [training_flops(config, b["text_mask"].sum(1).tolist(), b["audio_mask"].sum(1).tolist(),
                            int((b["mlm_labels"] != -100).sum()), int(b["mcam_mask"].sum())) for b in batches]  # fmt: skip
    base_mb = memory_mb()
    torch.manual_seed(0)
    model = CTALForPretraining(config)
    if phase == "bare":
        step, optim_mb = bare_step_fn(args, model, batches)
    else:
        step, optim_mb = engine_step_fn(args, model, int(phase[-1]), rank, world, Path(out), batches)
    for _ in range(2):
        step()
    times, peak_mb = [], 0.0
    for _ in range(args.steps):
        torch.distributed.barrier()  # ranks start each timed step together
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        peak_mb = max(peak_mb, memory_mb())
    seconds = statistics.median(times)
    result = {
        "s_per_step": seconds,
        "samples": args.batch,
        "flops_per_step": statistics.mean(flops),
        "peak": peak,
        "optim_mb": optim_mb(),
        "rss_mb": peak_mb - base_mb,
        "params": count_parameters(model),
    }
    Path(out, f"{phase}_{rank}.json").write_text(json.dumps(result))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--peak-flops", type=float, help="peak FLOP/s of one device (default: measured)")
    args = p.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    if args.peak_flops is None:
        # One measurement for every phase, so MFU rows share a denominator.
        torch.set_num_threads(args.threads)
        args.peak_flops = matmul_peak(DTYPES[args.precision])
        measured = True
    else:
        measured = False
    world = 2
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        for phase in PHASES:
            mp.spawn(run_phase, args=(world, free_port(), phase, args, out), nprocs=world, join=True)
            rows[phase] = [json.loads(Path(out, f"{phase}_{r}.json").read_text()) for r in range(world)]
    first = rows["bare"][0]
    print(f"preset={args.preset} params={first['params'] / 1e6:.1f}M precision={args.precision} batch={args.batch} "
          f"frames<={args.frames} tokens<={args.tokens} ranks={world} threads/rank={args.threads} "
          f"timed steps={args.steps}")  # fmt: skip
    print(f"training GFLOP per step per rank (matmul, real lengths): {first['flops_per_step'] / 1e9:.2f}; "
          f"peak per rank: {first['peak'] / 1e9:.0f} GFLOP/s ({'measured 2048^3 matmul' if measured else 'given'})")
    header = f"{'phase':<7}{'s/step':>8}{'samples/s':>11}{'GFLOP/s/rank':>14}{'MFU':>7}{'vs bare':>9}{'optim MB':>10}{'RSS +MB':>9}"
    print(header)
    bare = max(r["s_per_step"] for r in rows["bare"])
    for phase in PHASES:
        rs = rows[phase]
        seconds = max(r["s_per_step"] for r in rs)  # the slowest rank paces the job
        achieved = statistics.mean(r["flops_per_step"] for r in rs) / seconds
        mfu = achieved / statistics.mean(r["peak"] for r in rs)
        print(f"{phase:<7}{seconds:>8.3f}{sum(r['samples'] for r in rs) / seconds:>11.1f}{achieved / 1e9:>14.1f}"
              f"{100 * mfu:>6.1f}%{seconds / bare:>9.2f}{max(r['optim_mb'] for r in rs):>10.1f}"
              f"{max(r['rss_mb'] for r in rs):>9.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
