"""The DeepSpeed training step against the bare and the DDP model step, with a per-phase profile.

    python benchmarks/train_step.py --preset base --batch 4 --frames 200 --tokens 24 --steps 10
    python benchmarks/train_step.py --rows zero2,rbs-2e8,no-rs,adam-fused --profile ...

Two processes (gloo, --threads CPU threads each, or one GPU each) build every row of
--rows and take their steps in turn: each round times one step of every row (the order
rotates from round to round, and the ranks start each step together), so a change in the
machine's load hits every row alike. --isolate instead runs each row in fresh processes
of its own, the only way its resident memory (RSS +MB) is its own.

Rows (--rows, comma-separated; default bare,ddp,zero0,zero2):

  bare   plain torch on each rank alone: forward, backward, clip_grad_norm_, and the
         torch.optim.AdamW that DeepSpeed builds from --config (`torch_adam`: its lr, betas,
         eps, weight decay, `fused` / `foreach`, and its gradient_clipping); no
         communication, so not what a 2-rank job can reach.
         With --precision bf16 the model and Adam states are plain bf16 (no fp32 master
         weights, unlike the engine): a lower bound rather than a like-for-like baseline
  ddp    the same around torch.nn.parallel.DistributedDataParallel: gradients all-reduced
         over the ranks (in buckets, during the backward pass) -- the honest baseline
  zero0  the trainer's step (ctal_ds.train.trainer.Trainer.train_step) around a DeepSpeed
         engine built from --config (default ds_configs/cpu.json) at ZeRO stage 0
  zero2  the same at ZeRO stage 2
  <variant>  ZeRO-2 with one setting changed (`VARIANTS` below, e.g. rbs-2e8, overlap,
         no-clip, no-rs, adam-fused); --variants adds every one of them

Every row trains on the same fixed batches (benchmarks/model.py `make_batch`; real lengths
90-100 % of --frames / --tokens). Columns:

  s/step       median over --steps timed rounds (after --warmup rounds) of the slowest
               rank's step; min-max beside it
  vs bare/ddp  median over rounds of the row's step / the bare (ddp) step of the same round
  samples/s    real utterances of both ranks per second
  GFLOP/s/rank matmul FLOPs of ctal_ds.model.flops.training_flops (real lengths) per
               second per rank; MFU divides it by the peak: --peak-flops, or else the
               best 2048^3 matmul with --threads threads, measured once before the rows
  optim MB     bytes held by the optimizer on one rank: Adam moments plus, under ZeRO,
               the fp32 master partition
  RSS +MB      (--isolate only) growth of the resident memory from before the model was
               built to the peak over the timed steps (on GPU: max allocated)

--profile times the phases of every row's step on rank 0 (self time of each phase, ms per
step, median over the timed rounds): the trainer's bookkeeping, forward, backward,
gradient bucketing and reduction (copies and the communication itself), the overflow
check, the gradient norm, clipping, the Adam update, the parameter all-gather and the
engine's own step. The timers wrap methods of the engine, of its ZeRO optimizer and of
DeepSpeed's communication backend (a few microseconds per call, some hundred calls per
step); a collective's time includes the wait for the other rank, so under uneven load
the first collective after a phase absorbs the ranks' skew.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from model import make_batch, matmul_peak  # noqa: E402  (benchmarks/model.py)

from ctal_ds.model import CTALConfig, CTALForPretraining  # noqa: E402
from ctal_ds.model.flops import training_flops  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BASE_ROWS = ("bare", "ddp", "zero0", "zero2")
# ZeRO-2 with one DeepSpeed setting changed: row name -> `--ds` assignments.
VARIANTS: dict[str, list[str]] = {
    "rbs-5e6": ["zero_optimization.reduce_bucket_size=5000000"],
    "rbs-2e8": ["zero_optimization.reduce_bucket_size=200000000"],
    "agbs-5e6": ["zero_optimization.allgather_bucket_size=5000000"],
    "agbs-2e8": ["zero_optimization.allgather_bucket_size=200000000"],
    "overlap": ["zero_optimization.overlap_comm=true"],
    "no-contig": ["zero_optimization.contiguous_gradients=false"],
    "round-robin": ["zero_optimization.round_robin_gradients=true"],
    "no-rs": ["zero_optimization.reduce_scatter=false"],
    # Reduce each rank's slice of a bucket to that rank, instead of all-reducing the bucket.
    "reduce-to-owner": ["zero_optimization.use_multi_rank_bucket_allreduce=false"],
    "no-clip": ["gradient_clipping=0.0"],
    # torch.optim.AdamW's single fused CPU kernel instead of its per-op loop.
    "adam-fused": ["optimizer.params.fused=true"],
    # DeepSpeed's own Adam: FusedAdam, on CPU the C++ kernel of DeepSpeedCPUAdam (JIT-built).
    "ds-adam": ["optimizer.params.torch_adam=false"],
    "fused+rbs-5e6": ["optimizer.params.fused=true", "zero_optimization.reduce_bucket_size=5000000"],
}
MODEL_PHASES = ("forward", "backward (autograd)")
PHASE_ORDER = (
    "trainer bookkeeping",
    "trainer agreement all-reduce",
    "forward",
    "backward (autograd)",
    "grad bucketing (hooks, copies)",
    "grad reduction (flatten, copies)",
    "grad reduction: comm",
    "overflow check",
    "overflow check: comm",
    "grad norm",
    "grad norm: comm",
    "clip",
    "Adam update",
    "optimizer wrapper (grad partition, fp32->model copy)",
    "param all-gather",
    "param all-gather: comm",
    "engine step (scheduler, zero_grad)",
    "zero_grad",
)


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


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


class Cycle:
    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        return batch


class PhaseTimer:
    """Self time per phase label (a phase's time minus that of the phases it calls)."""

    # The timer of the step being timed: module-level functions and the communication
    # backend are patched once and book into it.
    current: PhaseTimer | None = None

    def __init__(self) -> None:
        self.active = False
        self.stack: list[tuple[str, float]] = []  # (label, time of timed callees)
        self.step_times: collections.Counter = collections.Counter()
        self.per_step: list[dict[str, float]] = []

    def wrap(self, fn, label: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not self.active:
                return fn(*args, **kwargs)
            self.stack.append((label, 0.0))
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total = time.perf_counter() - start
                _, callees = self.stack.pop()
                self.step_times[label] += total - callees
                if self.stack:
                    parent, inner = self.stack[-1]
                    self.stack[-1] = (parent, inner + total)

        return timed

    def comm(self, *args, fn, **kwargs):
        """A collective, booked under the phase that issued it (`<phase>: comm`)."""
        if not self.stack:
            return fn(*args, **kwargs)
        return self.wrap(fn, f"{self.stack[-1][0].split(' (')[0]}: comm")(*args, **kwargs)

    def patch(self, obj, attr: str, label: str) -> None:
        if hasattr(obj, attr):
            setattr(obj, attr, self.wrap(getattr(obj, attr), label))

    def end_step(self) -> None:
        self.per_step.append(dict(self.step_times))
        self.step_times.clear()


def profile_engine(timer: PhaseTimer, trainer, engine) -> None:
    from deepspeed.comm import comm as ds_comm
    from deepspeed.runtime.zero import stage_1_and_2

    timer.patch(trainer, "_agree_before_update", "trainer agreement all-reduce")
    timer.patch(engine, "forward", "forward")
    timer.patch(engine, "backward", "backward (autograd)")
    timer.patch(engine, "allreduce_gradients", "grad reduction (flatten, copies)")
    timer.patch(engine, "clip_fp32_gradients", "clip")
    timer.patch(engine, "step", "engine step (scheduler, zero_grad)")
    timer.patch(engine, "zero_grad", "zero_grad")
    opt = engine.optimizer
    if isinstance(opt, stage_1_and_2.DeepSpeedZeroOptimizer):
        timer.patch(opt, "reduce_independent_p_g_buckets_and_remove_grads", "grad bucketing (hooks, copies)")
        for name in ("reduce_ipg_grads", "average_tensor", "copy_grads_in_partition",
                     "independent_gradient_partition_epilogue"):  # fmt: skip
            timer.patch(opt, name, "grad reduction (flatten, copies)")
        timer.patch(opt, "has_overflow", "overflow check")
        timer.patch(opt, "scaled_global_norm", "grad norm")
        timer.patch(opt, "unscale_and_clip_grads", "clip")
        timer.patch(opt, "step", "optimizer wrapper (grad partition, fp32->model copy)")
        timer.patch(opt, "zero_grad", "zero_grad")
        timer.patch(opt.optimizer, "step", "Adam update")
        # The ZeRO step calls the module-level function by its imported name.
        patch_global(stage_1_and_2, "all_gather_dp_groups", "param all-gather")
    else:
        timer.patch(opt, "step", "Adam update")
    for name in ("all_reduce", "reduce", "all_gather_into_tensor", "all_gather", "reduce_scatter_tensor", "broadcast"):
        patch_global(ds_comm.cdb, name, None)


def patch_global(obj, attr: str, label: str | None) -> None:
    """Book calls of obj.attr into PhaseTimer.current under `label` (None: as a collective)."""
    fn = getattr(obj, attr, None)
    if fn is None or getattr(fn, "_phase_timed", False):
        return

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        timer = PhaseTimer.current
        if timer is None:
            return fn(*args, **kwargs)
        if label is None:
            return timer.comm(*args, fn=fn, **kwargs)
        return timer.wrap(fn, label)(*args, **kwargs)

    timed._phase_timed = True
    setattr(obj, attr, timed)


def engine_row(args, model, stage: int, extra: list[str], rank: int, world: int, out: Path, batches,
               timer: PhaseTimer | None):  # fmt: skip
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
                          extra=[f"zero_optimization.stage={stage}", *extra])  # fmt: skip
    accel = deepspeed.accelerator.get_accelerator()
    ds, _, _, _ = ds_config.resolve(ds_config.load(args.config), over, 1000, world, "WORLD_SIZE",
                                    accel.device_name(), accel.is_fp16_supported())  # fmt: skip
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    cfg = RunConfig(out=out, deepspeed_config=out, data=DataConfig(train_shards=out))
    trainer = Trainer(cfg, engine, Cycle(batches), Checkpointer(out, rank, world, 1, lambda: None), NullTracker(),
                      HealthMonitor(1.0, 3), StopRequest(), rank, world, task=PretrainTask())  # fmt: skip
    step = trainer.train_step
    if timer is not None:
        profile_engine(timer, trainer, engine)
        step = timer.wrap(step, "trainer bookkeeping")
    return step, lambda: optimizer_mb(engine.optimizer)


def torch_optimizer(config: Path, params) -> tuple[torch.optim.Optimizer, float]:
    """The torch AdamW that DeepSpeed builds from `config` (`torch_adam`), and its clipping."""
    from ctal_ds.train import ds_config

    ds = ds_config.load(config)
    opt = dict(ds.get("optimizer", {}).get("params", {}))
    kwargs = {k: opt[k] for k in ("lr", "betas", "eps", "weight_decay", "fused", "foreach") if k in opt}
    return torch.optim.AdamW(params, **kwargs), float(ds.get("gradient_clipping", 0.0))


def torch_row(args, model, batches, ddp: bool, timer: PhaseTimer | None):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device=device, dtype=DTYPES[args.precision])
    net = model
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device == "cuda" else None)
    optimizer, clip_norm = torch_optimizer(args.config, model.parameters())
    stream = Cycle([{k: v.to(device) for k, v in b.items()} for b in batches])
    timed = timer.wrap if timer is not None else (lambda fn, label: fn)
    zero_grad = timed(functools.partial(optimizer.zero_grad, set_to_none=True), "zero_grad")
    forward = timed(lambda batch: net(batch)["loss"], "forward")
    backward = timed(lambda loss: loss.backward(), "backward (autograd)")
    clip = timed(lambda: clip_norm and torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm), "clip")
    update = timed(optimizer.step, "Adam update")

    def step() -> None:
        zero_grad()
        backward(forward(next(stream)))
        clip()
        update()

    return timed(step, "trainer bookkeeping"), lambda: optimizer_mb(optimizer)


def build_row(name: str, args, rank: int, world: int, out: Path, batches, timer):
    torch.manual_seed(0)
    model = CTALForPretraining(CTALConfig.preset(args.preset, **args.model))
    if name in ("bare", "ddp"):
        return torch_row(args, model, batches, name == "ddp", timer)
    if name in ("zero0", "zero2"):
        return engine_row(args, model, int(name[-1]), [], rank, world, out, batches, timer)
    return engine_row(args, model, 2, args.settings[name], rank, world, out, batches, timer)


def run_rows(rank: int, world: int, port: int, names: list[str], args, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(args.threads)
    if torch.cuda.is_available():
        torch.cuda.set_device(rank)
    import deepspeed

    deepspeed.init_distributed(auto_mpi_discovery=False)
    config = CTALConfig.preset(args.preset, **args.model)
    batches = [make_batch(config, args.batch, args.frames, args.tokens, seed=100 * rank + i) for i in range(4)]
    flops = [training_flops(config, b["text_mask"].sum(1).tolist(), b["audio_mask"].sum(1).tolist(),
                            int((b["mlm_labels"] != -100).sum()), int(b["mcam_mask"].sum())) for b in batches]  # fmt: skip
    base_mb = memory_mb()
    rows = {}
    for name in names:
        timer = PhaseTimer() if args.profile else None
        step, optim_mb = build_row(name, args, rank, world, Path(out), batches, timer)
        rows[name] = (step, optim_mb, timer)
    times: dict[str, list[float]] = {name: [] for name in names}
    peak_mb = 0.0
    for round_ in range(args.warmup + args.steps):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            step, _, timer = rows[name]
            torch.distributed.barrier()  # ranks start each step together
            if timer is not None:
                timer.active = round_ >= args.warmup
                PhaseTimer.current = timer if timer.active else None
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if timer is not None and timer.active:
                timer.active, PhaseTimer.current = False, None
                timer.end_step()
            if round_ >= args.warmup:
                times[name].append(elapsed)
                peak_mb = max(peak_mb, memory_mb())
        if rank == 0:
            print(f"[train_step] round {round_ + 1}/{args.warmup + args.steps} done", file=sys.stderr, flush=True)
    result = {
        "times": times,
        "samples": args.batch,
        "flops_per_step": statistics.mean(flops),
        "peak": args.peak_flops,
        "optim_mb": {name: rows[name][1]() for name in names},
        "rss_mb": peak_mb - base_mb,
        "profile": {name: rows[name][2].per_step for name in names} if args.profile else {},
    }
    Path(out, f"{'_'.join(names)}_{rank}.json").write_text(json.dumps(result))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_rows(text: str, variants: bool) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if variants:
        names += [n for n in VARIANTS if n not in names]
    unknown = [n for n in names if n not in BASE_ROWS and n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--rows: unknown row(s) {unknown}; choose from {list(BASE_ROWS) + list(VARIANTS)}")
    return list(dict.fromkeys(names))


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def print_results(args, names: list[str], per_rank: list[dict], measured: bool, load_before, load_after) -> None:
    world = len(per_rank)
    # The slowest rank paces the job: per round, the max over ranks.
    times = {n: [max(r["times"][n][i] for r in per_rank) for i in range(args.steps)] for n in names}
    first = per_rank[0]
    config = CTALConfig.preset(args.preset, **args.model)
    params = sum(p.numel() for p in CTALForPretraining(config).parameters())
    model_text = args.preset + "".join(f" {k}={v}" for k, v in args.model.items())
    print(f"command: python benchmarks/train_step.py {' '.join(sys.argv[1:])}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average before {load_before[0]:.2f} "
          f"{load_before[1]:.2f} {load_before[2]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f} "
          f"{load_after[2]:.2f}; torch {torch.__version__}")  # fmt: skip
    print(f"model={model_text} params={params / 1e6:.1f}M precision={args.precision} batch={args.batch} "
          f"frames<={args.frames} tokens<={args.tokens} ranks={world} threads/rank={args.threads} "
          f"timed rounds={args.steps} (after {args.warmup}) {'isolated rows' if args.isolate else 'interleaved rows'}")  # fmt: skip
    print(f"training GFLOP per step per rank (matmul, real lengths): {first['flops_per_step'] / 1e9:.2f}; "
          f"peak per rank: {first['peak'] / 1e9:.0f} GFLOP/s ({'measured 2048^3 matmul' if measured else 'given'})")
    name_width = max(12, *(len(n) + 2 for n in names))
    header = (f"{'row':<{name_width}}{'s/step':>8}{'min-max':>14}{'vs bare':>9}{'vs ddp':>8}{'samples/s':>11}"
              f"{'GFLOP/s/rank':>14}{'MFU':>7}{'optim MB':>10}")  # fmt: skip
    if args.isolate:
        header += f"{'RSS +MB':>9}"
    print(header)
    for name in names:
        seconds = statistics.median(times[name])
        achieved = statistics.mean(r["flops_per_step"] for r in per_rank) / seconds
        mfu = achieved / statistics.mean(r["peak"] for r in per_rank)
        vs = [f"{median_ratio(times[name], times[ref]):.2f}" if ref in times else "-" for ref in ("bare", "ddp")]
        line = (f"{name:<{name_width}}{seconds:>8.3f}{f'{min(times[name]):.3f}-{max(times[name]):.3f}':>14}{vs[0]:>9}{vs[1]:>8}"
                f"{sum(r['samples'] for r in per_rank) / seconds:>11.1f}{achieved / 1e9:>14.1f}{100 * mfu:>6.1f}%"
                f"{max(r['optim_mb'][name] for r in per_rank):>10.1f}")  # fmt: skip
        if args.isolate:
            line += f"{max(r['rss_mb'][name] for r in per_rank):>9.0f}"
        print(line)
    for name in names:
        settings = args.settings.get(name)
        if settings:
            print(f"  {name}: ZeRO-2 with {' '.join(settings)}")
    if args.profile:
        print_profile(names, per_rank[0]["profile"])


def print_profile(names: list[str], profile: dict[str, list[dict[str, float]]]) -> None:
    labels = [p for p in PHASE_ORDER if any(p in step for n in names for step in profile[n])]
    labels += sorted({p for n in names for step in profile[n] for p in step} - set(labels))
    width = max(len(p) for p in labels) + 2
    col = max(12, *(len(n) + 2 for n in names))
    print("\nper-phase self time on rank 0, ms per step (median over the timed rounds)")
    print(f"{'phase':<{width}}" + "".join(f"{n:>{col}}" for n in names))
    for label in labels:
        cells = [statistics.median(step.get(label, 0.0) for step in profile[n]) * 1e3 for n in names]
        print(f"{label:<{width}}" + "".join(f"{c:>{col}.1f}" if c else f"{'-':>{col}}" for c in cells))
    totals = [statistics.median(sum(step.values()) for step in profile[n]) * 1e3 for n in names]
    print(f"{'total (step)':<{width}}" + "".join(f"{c:>{col}.1f}" for c in totals))
    # Forward and backward compute are the same work in every row; the rest is what the
    # optimizer, the communication and the engine add.
    rest = [statistics.median(sum(v for k, v in step.items() if k not in MODEL_PHASES) for step in profile[n]) * 1e3
            for n in names]  # fmt: skip
    print(f"{'all but forward and backward':<{width}}" + "".join(f"{c:>{col}.1f}" for c in rest))


def main() -> None:
    from ctal_ds.train.cli import parse_assignments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--model-override", action="append", default=[], metavar="FIELD=VALUE",
                   help="CTALConfig field, e.g. hidden_size=384 (repeatable)")  # fmt: skip
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--steps", type=int, default=10, help="timed rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--rows", default=",".join(BASE_ROWS), help=f"comma-separated: {list(BASE_ROWS) + list(VARIANTS)}")
    p.add_argument("--variants", action="store_true", help="add every ZeRO-2 variant row")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                   help="a ZeRO-2 row of your own, e.g. before:optimizer.params.fused=false (repeatable)")  # fmt: skip
    p.add_argument("--config", type=Path, default=REPO / "ds_configs" / "cpu.json", help="DeepSpeed JSON")
    p.add_argument("--isolate", action="store_true", help="each row in fresh processes (RSS per row)")
    p.add_argument("--profile", action="store_true", help="per-phase table of every row (rank 0)")
    p.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--peak-flops", type=float, help="peak FLOP/s of one device (default: measured)")
    args = p.parse_args()
    args.model = {"dropout": 0.0, **parse_assignments(args.model_override, "--model-override")}
    for spec in args.variant:
        name, _, settings = spec.partition(":")
        if not name or "=" not in settings or name in BASE_ROWS:
            raise SystemExit(f"--variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE], NAME not one of {BASE_ROWS}")
        VARIANTS[name] = settings.split(",")
        args.rows += f",{name}"
    names = parse_rows(args.rows, args.variants)
    args.settings = {name: VARIANTS[name] for name in names if name in VARIANTS}  # travels to the ranks
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    load_before = os.getloadavg()
    measured = args.peak_flops is None
    if measured:
        # One measurement for every row, so MFU rows share a denominator.
        torch.set_num_threads(args.threads)
        args.peak_flops = matmul_peak(DTYPES[args.precision])
    world = 2
    groups = [[n] for n in names] if args.isolate else [names]
    per_rank: list[dict] = [{"times": {}, "optim_mb": {}, "rss_mb": {}, "profile": {}} for _ in range(world)]
    with tempfile.TemporaryDirectory() as out:
        for group in groups:
            mp.spawn(run_rows, args=(world, free_port(), group, args, out), nprocs=world, join=True)
            for r in range(world):
                result = json.loads(Path(out, f"{'_'.join(group)}_{r}.json").read_text())
                for key in ("samples", "flops_per_step", "peak"):
                    per_rank[r][key] = result[key]
                for key in ("times", "optim_mb", "profile"):
                    per_rank[r][key].update(result[key])
                for name in group:
                    per_rank[r]["rss_mb"][name] = result["rss_mb"]
    print_results(args, names, per_rank, measured, load_before, os.getloadavg())


if __name__ == "__main__":
    main()
