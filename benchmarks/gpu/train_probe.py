"""A short pre-training run under the deepspeed launcher on one GPU, and its speed.

    python benchmarks/gpu/train_probe.py --precision bf16 --shards runs/gpu_check/data/shards --out runs/gpu_check/train-bf16

Runs `deepspeed --num_gpus 1 launch/pretrain.py --deepspeed_config ds_configs/zero2.json
--preset base --precision P ...` (ZeRO-2, FusedAdam as the config's AdamW on GPU;
fp16 keeps zero2.json's dynamic loss scale) for --steps optimizer steps on real
shards, then reads the run's <out>/metrics.jsonl and prints, as the median over the
logging windows after the first (which holds the start-up and the first kernels'
compilation):

    step time, samples/s, frames/s and tokens/s (real, unpadded), model FLOP/s and MFU
    (ctal_ds/model/flops.py counts, as the trainer logs them, against the peak of
    the device from common.PEAK_FLOPS, else "peak unknown"), data-wait share (the
    time the step spent waiting for the loader: frames/s is then the loader's rate),
    peak memory, first/last loss, and for fp16 the loss scale and skipped steps.

`--optimizer torch_adam` runs torch's AdamW instead of FusedAdam (when the FusedAdam
op cannot be built). `--dry-run` prints the command and exits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, peak_flops, print_table, write_json

# The metrics a window reports, as (jsonl key, label, format).
COLUMNS = (
    ("perf/step_time_s", "step time s", "{:.4f}"),
    ("perf/samples_per_s", "samples/s", "{:.1f}"),
    ("perf/frames_per_s", "frames/s", "{:.0f}"),
    ("perf/tokens_per_s", "tokens/s", "{:.0f}"),
    ("perf/flops_per_s", "TFLOP/s", None),
    ("perf/mfu", "MFU", None),
    ("perf/data_wait_share", "data wait", None),
)
# A step that spends more than this share of its time waiting for a batch is data-bound.
DATA_BOUND_SHARE = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_command(args: argparse.Namespace, peak: float | None) -> list[str]:
    if args.launcher:
        launcher = [args.launcher]
    elif shutil.which("deepspeed", path=str(Path(sys.executable).parent)):
        launcher = [shutil.which("deepspeed", path=str(Path(sys.executable).parent))]
    else:  # the same launcher, run by this python (deepspeed installed in a parent environment)
        launcher = [sys.executable, "-m", "deepspeed.launcher.runner"]
    cmd = [
        *launcher, "--num_gpus", "1", "--master_port", str(args.master_port or free_port()),
        str(REPO / "launch" / "pretrain.py"),
        "--deepspeed_config", str(args.deepspeed_config), "--preset", args.preset,
        "--precision", args.precision, "--train-shards", str(args.shards), "--steps", str(args.steps),
        "--log-every", str(args.log_every), "--micro-batch-size", str(args.micro_batch_size),
        "--max-frames-per-batch", str(args.max_frames_per_batch), "--num-workers", str(args.num_workers),
        "--warmup-steps", "10", "--lr", "1e-4", "--out", str(args.out), "--resume", "none", "--no-export",
        "--flush-every", "1000",
    ]  # fmt: skip
    if peak:
        cmd += ["--peak-flops", f"{peak:g}"]
    if args.optimizer == "torch_adam":
        cmd += ["--ds", "optimizer.params.torch_adam=true"]
    return cmd


def read_windows(metrics_jsonl: Path) -> list[dict]:
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    return [r for r in rows if "perf/step_time_s" in r]


def summarize(windows: list[dict], peak: float | None) -> dict:
    """Medians over the windows after the first (or the only one), plus first/last values."""
    steady = windows[1:] or windows
    summary: dict = {"windows": len(windows), "steady_windows": len(steady), "last_step": windows[-1]["step"]}
    for key, _, _ in COLUMNS:
        values = [w[key] for w in steady if key in w]
        summary[key] = statistics.median(values) if values else None
    if summary["perf/mfu"] is None and peak and summary["perf/flops_per_s"]:
        summary["perf/mfu"] = summary["perf/flops_per_s"] / peak
    summary["loss_first"] = windows[0].get("train/loss")
    summary["loss_last"] = windows[-1].get("train/loss")
    summary["memory_gb"] = max(w.get("sys/memory_gb_max_rank", 0.0) for w in windows)
    for key in ("train/loss_scale", "train/skipped_steps"):
        if key in windows[-1]:
            summary[key] = windows[-1][key]
    wait = summary["perf/data_wait_share"]
    summary["data_bound"] = wait is not None and wait > DATA_BOUND_SHARE
    return summary


def format_summary(summary: dict, peak: float | None) -> list[list[str]]:
    rows = []
    for key, label, fmt in COLUMNS:
        value = summary.get(key)
        if value is None:
            text = "peak unknown" if key == "perf/mfu" and not peak else "n/a"
        elif key == "perf/flops_per_s":
            text = f"{value / 1e12:.1f}"
        elif key in ("perf/mfu", "perf/data_wait_share"):
            text = f"{100 * value:.1f} %"
        else:
            text = fmt.format(value)
        rows.append([label, text])
    rows.append(["peak used for MFU", f"{peak / 1e12:.0f} TFLOP/s" if peak else "peak unknown"])
    rows.append(["peak memory", f"{summary['memory_gb']:.1f} GiB"])
    rows.append(["loss first -> last window", f"{summary['loss_first']:.3f} -> {summary['loss_last']:.3f}"])
    if "train/loss_scale" in summary:
        rows.append(["fp16 loss scale (last)", f"{summary['train/loss_scale']:g}"])
    if "train/skipped_steps" in summary:
        rows.append(["overflow-skipped steps", f"{summary['train/skipped_steps']:.0f}"])
    wait = summary.get("perf/data_wait_share")
    rows.append(["step waited on data", "n/a" if wait is None else (
        f"yes ({100 * wait:.1f} % of the time > {100 * DATA_BOUND_SHARE:.0f} %): frames/s is the loader's rate"
        if summary["data_bound"] else f"no ({100 * wait:.1f} % of the time)")])  # fmt: skip
    return rows


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", choices=["bf16", "fp16"], required=True)
    p.add_argument("--shards", type=Path, required=True, help="a shard set (folder with manifest.json)")
    p.add_argument("--out", type=Path, required=True, help="the run's output folder (emptied first)")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--preset", default="base")
    p.add_argument("--deepspeed-config", type=Path, default=REPO / "ds_configs" / "zero2.json")
    p.add_argument("--micro-batch-size", type=int, default=64, help="most utterances per batch")
    p.add_argument("--max-frames-per-batch", type=int, default=24000, help="padded frames per batch")
    p.add_argument("--num-workers", type=int, default=6, help="loader worker processes")
    p.add_argument("--optimizer", choices=["fused_adam", "torch_adam"], default="fused_adam")
    p.add_argument("--peak-flops", type=float, help="override the peak table (FLOP/s of one device)")
    p.add_argument("--launcher", help="deepspeed launcher (default: the one beside this python, else "
                   "python -m deepspeed.launcher.runner)")
    p.add_argument("--master-port", type=int)
    p.add_argument("--json", help="write the summary to this file")
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    args = p.parse_args(argv)

    name = device_name()
    peak = args.peak_flops or peak_flops(name, args.precision)
    cmd = launcher_command(args, peak)
    print(f"device: {name}; {args.precision} peak for MFU: "
          f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'peak unknown'}")
    print("command: " + " ".join(cmd), flush=True)
    if args.dry_run:
        return 0
    if args.out.exists():
        shutil.rmtree(args.out)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("MPLBACKEND", "Agg")
    started = time.perf_counter()
    optimizer_line = None
    # Streamed through, and the trainer's "[ctal-ds] optimizer: ..." line kept: it says
    # which optimizer DeepSpeed really built.
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:  # fmt: skip
        for line in proc.stdout:
            sys.stdout.write(line)
            if "[ctal-ds] optimizer:" in line:
                optimizer_line = line.split("[ctal-ds] optimizer:", 1)[1].strip()
        rc = proc.wait()
    elapsed = time.perf_counter() - started
    print(f"\nlauncher exited {rc} after {elapsed:.1f} s", flush=True)
    metrics = args.out / "metrics.jsonl"
    windows = read_windows(metrics) if metrics.is_file() else []
    if not windows:
        print(f"no logged step metrics in {metrics}")
        write_json(args.json, {"precision": args.precision, "rc": rc, "elapsed_s": elapsed, "windows": 0})
        return rc or 1
    summary = summarize(windows, peak)
    print(f"\n{args.preset}, {args.precision}, ZeRO-2, optimizer {optimizer_line or args.optimizer}, "
          f"{summary['last_step']} steps; "
          f"medians of {summary['steady_windows']} windows of {args.log_every} steps after the first:")
    print_table(["metric", "value"], format_summary(summary, peak))
    finite = all(math.isfinite(w.get("train/loss", math.nan)) for w in windows)
    write_json(args.json, {"precision": args.precision, "device": name, "peak_flops": peak, "rc": rc,
                           "elapsed_s": elapsed, "command": cmd, "optimizer": optimizer_line, **summary})  # fmt: skip
    if not finite:
        print("FAILED: a logged loss is not finite")
    return rc or (0 if finite else 1)


if __name__ == "__main__":
    sys.exit(main())
