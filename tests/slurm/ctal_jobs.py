"""Submitting ctal-ds's batch scripts (launch/slurm/) to the loopback cluster, and
reading back what their jobs leave: the job log, metrics.jsonl, checkpoints."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRETRAIN_SBATCH = REPO / "launch" / "slurm" / "pretrain.sbatch"
FINETUNE_SBATCH = REPO / "launch" / "slurm" / "finetune.sbatch"

# The CPU-only switch of launch/slurm/README.md (no GPUs, DS_CONFIG=ds_configs/cpu.json)
# and the loopback cluster's size: two nodes, one single-CPU task each.
CPU_OPTIONS = (
    "--nodes=2",
    "--ntasks-per-node=1",
    "--cpus-per-task=1",
    "--gpus-per-node=0",
    "--time=10",
)


def job_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would steer a job's rank discovery or
    tracking elsewhere, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))
    }
    env.update(PYTHONUNBUFFERED="1", **extra)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    return env


def pretrain_env(shards: Path, out: Path, args: str, **extra: str) -> dict[str, str]:
    return job_env(
        REPO=str(REPO), PYTHON=sys.executable, DS_CONFIG=str(REPO / "ds_configs" / "cpu.json"),
        TRAIN_SHARDS=str(shards / "train"), VALID_SHARDS=str(shards / "valid"), OUT=str(out),
        PRETRAIN_ARGS=args, **extra,
    )  # fmt: skip


def default_log(submit_dir: Path, job_name: str, job_id: int) -> Path:
    """Where the scripts' ``#SBATCH --output=%x-%j.out`` puts a job's log."""
    return Path(submit_dir) / f"{job_name}-{job_id}.out"


def read_log(path: Path) -> str:
    """A job log as text. SLURM forwards each task's output in byte chunks, so the
    ranks' lines can interleave in the middle of a multi-byte character (tqdm's bars)."""
    return Path(path).read_text(errors="replace")


def tail(path: Path, chars: int = 6000) -> str:
    return read_log(path)[-chars:] if path.is_file() else f"<no {path}>"


def rank_map(log: str) -> list[tuple[int, int, int, str]]:
    """Rows ``(rank, local_rank, node, host)`` of the rank map rank 0 prints at start."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if "rank map: rank local_rank node host" in line)
    rows = []
    for line in lines[start + 1 :]:
        match = re.fullmatch(r"\[ctal-ds\]\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)", line.strip())
        if not match:
            break
        rank, local, node, host = match.groups()
        rows.append((int(rank), int(local), int(node), host))
    return rows


def metric_rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_step(cluster, job: int, out: Path, step: int, log: Path, timeout: float = 300) -> None:
    """Until the job has logged ``step`` (so its ranks are past start-up, signal handlers
    installed); fails early if the job stops running."""
    deadline = time.monotonic() + timeout
    cluster.wait_job(job, states={"RUNNING"}, timeout=timeout)
    while not any(row["step"] >= step for row in metric_rows(out)):
        state = cluster.job_state(job)
        assert state == "RUNNING", f"job {job} is {state} before logging step {step}:\n{tail(log)}"
        assert time.monotonic() < deadline, (
            f"job {job} did not log step {step} in {timeout:.0f}s:\n{tail(log)}"
        )
        time.sleep(0.2)


def wait_cancelled(cluster, job: int) -> dict[str, str]:
    """Until a cancelled job has ended (CANCELLED once all its processes are gone): SLURM
    sends SIGKILL KillWait seconds after TERM, and a loaded machine needs a while more."""
    return cluster.wait_job(job, states={"CANCELLED"}, timeout=cluster.kill_wait + 60)


def assert_exited_before_kill(cluster, log: Path, since: float) -> str:
    """The job log once the batch shell has seen its srun step end by itself after TERM,
    i.e. before SIGKILL; ``since`` is when the job was cancelled (time.monotonic())."""
    text = read_log(log)
    took = time.monotonic() - since
    assert "step exited with" in text, (
        f"the ranks did not exit within KillWait ({cluster.kill_wait} s) of TERM, so SLURM "
        f"killed the job ({took:.0f} s after scancel):\n{text[-3000:]}"
    )
    print(f"scancel to the end of the job: {took:.1f} s (KillWait {cluster.kill_wait} s)")
    return text


def final_weights(checkpoints: Path, step: int):
    """The fp32 master weights of checkpoint ``global_step<step>``, gathered from every
    rank's ZeRO partition (what launch/export.py writes out)."""
    from ctal_ds.train.checkpoint import is_complete
    from ctal_ds.train.export import consolidated_state_dict

    tag = checkpoints / f"global_step{step}"
    assert is_complete(tag), f"{tag} is not a complete checkpoint"
    return consolidated_state_dict(tag)


def max_abs_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
