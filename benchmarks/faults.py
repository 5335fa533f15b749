"""Fault injection: real 2-rank pre-training jobs under the deepspeed launcher, each hit
by one fault, and what must survive it checked.

    python benchmarks/faults.py [--only kill-rank,flipped-byte] [--keep DIR] [--seed 0]

Every job is `deepspeed --num_gpus 2 launch/pretrain.py --deepspeed_config
ds_configs/cpu.json --preset tiny ...` (two CPU ranks, gloo) on small demo shards built
first in a temporary folder. Rows (docs/training.md, "Fault injection"):

    kill-rank        kill -9 of one rank at 5 seeded random steps after the first checkpoint;
                     each time the launcher must end the job and `--resume auto` continue from
                     the newest complete tag; the last attempt finishes
    kill-mid-save    kill -9 of a rank stalled inside a checkpoint write: the partial tag has
                     no complete.json, the resume takes the previous tag
    file-size-limit  RLIMIT_FSIZE lowered on both ranks between two saves (SIGXFSZ ignored,
                     so the write fails with EFBIG, as on a full disk): a clear error, exit 5,
                     the previous checkpoint intact and resumed from
    flipped-byte     one byte flipped in the newest checkpoint: named in the log, the
                     previous tag resumed from
    truncated-shard  a training shard cut in half while the job runs: named and counted,
                     the job finishes
    sigstop-rank     SIGSTOP of one rank: the other rank's watchdog ends the job
    mlflow-down      the MLflow server killed mid-run: training goes on into metrics.jsonl;
                     after a restart of the server and a resume the run is FINISHED with its
                     whole metric history

The gap column is the max abs difference of the consolidated fp32 weights of the final
checkpoint from those of one uninterrupted reference job (1e-6 allowed); "n/a" where the
fault changes what is trained (a shard lost) or the job is not meant to finish. Exits 1
if any row fails. Timings depend on the machine's load; the checks do not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ctal_ds.train.checkpoint import (  # noqa: E402
    CHECKPOINT_FAILED,
    MARKER,
    is_complete,
    latest_complete,
    tag_for,
    verify_tag,
)

PRETRAIN = REPO / "launch" / "pretrain.py"
STEPS, SAVE_EVERY = 24, 4
KILLS = 5
TOLERANCE = 1e-6
WATCHDOG_FLOOR_S = 15
FSIZE_LIMIT = 1 << 20  # below every ZeRO file of the tiny model (1.6 and 2.4 MB)
WATCHDOG_EXIT = 4
JOB_TIMEOUT_S = 420  # a job of the tiny model takes about a minute on a loaded 2-core machine
ROWS = ("kill-rank", "kill-mid-save", "file-size-limit", "flipped-byte", "truncated-shard", "sigstop-rank",
        "mlflow-down")  # fmt: skip

# Loaded as sitecustomize.py by every Python process of a job whose PYTHONPATH leads with
# its folder: the rank STALL_SAVE_RANK writes the first half of its ZeRO optimizer file of
# tag STALL_SAVE_TAG, creates STALL_SAVE_FLAG and sleeps until it is killed (a checkpoint
# write caught in the middle, made deterministic).
STALL_SITECUSTOMIZE = '''
import io, os, time
from pathlib import Path

def _install(tag, flag):
    import torch
    real_save = torch.save

    def stalling_save(obj, f, *args, **kwargs):
        path = Path(f) if isinstance(f, (str, os.PathLike)) else None
        if path is None or path.parent.name != tag or not path.name.endswith("optim_states.pt"):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(path, "wb") as out:
            out.write(data[: len(data) // 2])
        flag.write_text(f"{path}\\n")
        while True:
            time.sleep(60)

    torch.save = stalling_save

if os.environ.get("STALL_SAVE_TAG") and os.environ.get("RANK") == os.environ.get("STALL_SAVE_RANK"):
    _install(os.environ["STALL_SAVE_TAG"], Path(os.environ["STALL_SAVE_FLAG"]))
'''


class RowFailed(Exception):
    """A check of a row did not hold; the message is what was observed."""


@dataclass
class Row:
    fault: str
    expected: str
    observed: str = ""
    gap: str = "n/a"
    ok: bool = False
    seconds: float = 0.0


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher() -> list[str]:
    script = Path(sys.executable).with_name("deepspeed")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "deepspeed.launcher.runner"]


def job_env(**extra: str) -> dict[str, str]:
    drop = ("MLFLOW_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "CROSS_", "STALL_SAVE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env.update(extra)
    return env


def weights_gap(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise RowFailed(f"the weights differ in their names: {sorted(a.keys() ^ b.keys())[:5]}")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def final_weights(out: Path, steps: int = STEPS) -> dict:
    """The consolidated fp32 weights of the final checkpoint (DeepSpeed's progress output
    while it reads the ZeRO files kept out of the table's way)."""
    import contextlib
    import io
    import logging

    from ctal_ds.train.export import consolidated_state_dict

    tag = latest_complete(out / "checkpoints")
    if tag is None or tag.name != tag_for(steps):
        raise RowFailed(f"the newest complete checkpoint under {out / 'checkpoints'} is {tag}, not {tag_for(steps)}")
    ds_logger = logging.getLogger("DeepSpeed")
    level = ds_logger.level
    ds_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return consolidated_state_dict(tag)
    finally:
        ds_logger.setLevel(level)


def flip_byte(path: Path) -> int:
    data = bytearray(path.read_bytes())
    where = len(data) // 2
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))
    return where


class Job:
    """One deepspeed-launcher job of launch/pretrain.py, in its own process group."""

    def __init__(self, bench: Bench, out: Path, name: str, *extra: str, shards: Path | None = None,
                 env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None,
                 steps: int = STEPS, save_every: int = SAVE_EVERY, tracking_uri: str | None = None,
                 experiment: str | None = None) -> None:  # fmt: skip
        self.out, self.name = out, name
        self.log = bench.work / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.metrics = out / "metrics.jsonl"
        self.offset = self.metrics.stat().st_size if self.metrics.is_file() else 0
        args = [
            "--deepspeed_config", str(REPO / "ds_configs" / "cpu.json"),
            "--train-shards", str(shards or bench.shards / "train"), "--out", str(out), "--preset", "tiny",
            "--micro-batch-size", "4", "--warmup-steps", "2", "--lr", "1e-3", "--log-every", "1",
            "--flush-every", "2", "--num-workers", "1", "--steps", str(steps), "--save-every", str(save_every),
            "--no-export", "--tracking-uri", tracking_uri or bench.tracking_uri,
            "--experiment", experiment or f"faults-{out.name}", *extra,
        ]  # fmt: skip
        cmd = [*launcher(), "--num_gpus", "2", "--master_port", str(free_port()), str(PRETRAIN), *args]
        with open(self.log, "w") as sink:
            self.proc = subprocess.Popen(cmd, env=job_env(**(env or {})), cwd=REPO, stdout=sink,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=preexec_fn)  # fmt: skip
        bench.jobs.append(self)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def tail(self, n: int = 1500) -> str:
        return self.text()[-n:].strip()

    def logged_steps(self) -> list[int]:
        """Steps this job logged to metrics.jsonl (earlier jobs of the run folder left out)."""
        if not self.metrics.is_file():
            return []
        with self.metrics.open("rb") as f:
            f.seek(self.offset)
            lines = f.read().decode(errors="replace").splitlines()
        steps = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if "train/loss" in row:
                steps.append(int(row["step"]))
        return steps

    def wait_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.proc.poll() is not None:
                raise RowFailed(f"{self.name}: the job exited {self.proc.returncode} before {what}; log {self.log}:"
                                f"\n{self.tail()}")  # fmt: skip
            if time.monotonic() > deadline:
                raise RowFailed(f"{self.name}: no {what} within {timeout:.0f} s; log {self.log}:\n{self.tail()}")
            time.sleep(0.05)

    def wait_step(self, step: int, timeout: float = JOB_TIMEOUT_S) -> int:
        """Wait until this job logged a step >= `step` (at least one step of its own)."""
        self.wait_until(lambda: max(self.logged_steps(), default=-1) >= step, timeout, f"step {step} logged")
        return max(self.logged_steps())

    def rank(self, local_rank: int) -> psutil.Process:
        """The training process the launcher started for `local_rank`."""
        for proc in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmdline = proc.cmdline()
            except psutil.Error:
                continue
            if f"--local_rank={local_rank}" in cmdline and str(PRETRAIN) in " ".join(cmdline):
                return proc
        raise RowFailed(f"{self.name}: no process of local rank {local_rank} under the launcher")

    def wait(self, timeout: float = JOB_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.end()
            raise RowFailed(f"{self.name}: still running after {timeout:.0f} s; killed. Log {self.log}:\n"
                            f"{self.tail()}") from None  # fmt: skip

    def end(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def resumed_from(self) -> str:
        found = re.search(r"\[ctal-ds\] (resumed from (\S+)|fresh run)", self.text())
        if not found:
            return "?"
        return Path(found.group(2)).name if found.group(2) else "fresh"

    def finished(self, steps: int = STEPS) -> None:
        """The job exited 0 and its status.json says it finished."""
        rc = self.wait()
        if rc != 0:
            raise RowFailed(f"{self.name}: exited {rc}, expected 0; log {self.log}:\n{self.tail()}")
        status = json.loads((self.out / "status.json").read_text())
        if status != {"step": steps, "finished": True, "reason": "finished"}:
            raise RowFailed(f"{self.name}: status.json {status}")


class Bench:
    def __init__(self, work: Path, seed: int) -> None:
        self.work, self.seed = work, seed
        self.shards = work / "shards"
        self.tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
        self.jobs: list[Job] = []
        self.servers: list[subprocess.Popen] = []
        self._reference: dict | None = None

    # Set-up ---------------------------------------------------------------------------

    def build_shards(self) -> None:
        """The small demo corpus as 3-utterance shards: 12 train shards, 6 per rank."""
        if (self.shards / "train" / "manifest.json").is_file():
            return
        run = dict(check=True, capture_output=True, text=True, cwd=REPO, timeout=600, env=job_env())
        corpus = self.work / "corpus"
        subprocess.run([sys.executable, "launch/make_demo_corpus.py", "--out", str(corpus), "--small",
                        "--workers", "1", "--quiet"], **run)  # fmt: skip
        subprocess.run([sys.executable, "launch/prepare_data.py", "--corpus", str(corpus / "librispeech"),
                        "--out", str(self.shards), "--holdout-fraction", "0.2", "--samples-per-shard", "3",
                        "--quiet"], **run)  # fmt: skip

    def reference(self) -> dict:
        """Final weights of the uninterrupted job that every resumed job is compared with;
        one that finished in a kept folder (`--keep`) is reused."""
        if self._reference is None:
            out = self.work / "reference"
            status = out / "status.json"
            if not (status.is_file() and json.loads(status.read_text()) == {"step": STEPS, "finished": True,
                                                                             "reason": "finished"}):  # fmt: skip
                shutil.rmtree(out, ignore_errors=True)
                Job(self, out, "reference").finished()
            self._reference = final_weights(out)
        return self._reference

    def clear(self, name: str) -> None:
        """Remove what an earlier run of row `name` left in a kept folder."""
        for path in [*self.work.glob(f"{name}*"), *(self.work / "logs").glob(f"{name}-*.log")]:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def gap(self, out: Path) -> float:
        gap = weights_gap(self.reference(), final_weights(out))
        if gap > TOLERANCE:
            raise RowFailed(f"final weights differ from the uninterrupted job by {gap:.3g} (allowed {TOLERANCE:g})")
        return gap

    def close(self) -> None:
        for job in self.jobs:
            job.end()
        for server in self.servers:
            stop_server(server)

    # Rows -------------------------------------------------------------------------------

    def kill_rank(self, row: Row) -> None:
        # Steps after the first checkpoint, so that every attempt after the first resumes.
        rng = random.Random(self.seed)
        steps = sorted(rng.sample(range(SAVE_EVERY + 1, STEPS - 1), KILLS))
        first = rng.randrange(2)  # the ranks alternate: rank 0 (tracking, markers) and rank 1 both die
        ranks = [(first + i) % 2 for i in range(KILLS)]
        out = self.work / "kill-rank"
        attempts, newest, ended = [], "fresh", []
        for i, (step, rank) in enumerate(zip(steps, ranks)):
            job = Job(self, out, f"kill-rank-{i + 1}")
            at = job.wait_step(step)
            victim = job.rank(rank)
            t0 = time.monotonic()
            victim.kill()
            rc = job.wait(180)
            ended.append(time.monotonic() - t0)
            if rc == 0:
                raise RowFailed(f"attempt {i + 1}: the launcher exited 0 after rank {rank} was killed")
            if job.resumed_from() != newest:
                raise RowFailed(f"attempt {i + 1} started from {job.resumed_from()}, the newest complete tag was {newest}")
            attempts.append(f"{newest}->{at} (rank {rank}, rc {rc})")
            tag = latest_complete(out / "checkpoints")
            newest = tag.name if tag else "fresh"
        job = Job(self, out, f"kill-rank-{KILLS + 1}")
        job.finished()
        if job.resumed_from() != newest:
            raise RowFailed(f"the last attempt started from {job.resumed_from()}, the newest complete tag was {newest}")
        attempts.append(f"{newest}->finished")
        row.gap = f"{self.gap(out):.1e}"
        row.observed = (f"seeded kill steps {steps}; each killed job ended by the launcher within "
                        f"{max(ended):.0f} s; attempts (resumed from -> killed after step): "
                        f"{'; '.join(a.replace('global_step', 'step ') for a in attempts)}")  # fmt: skip

    def kill_mid_save(self, row: Row) -> None:
        out, stall = self.work / "kill-mid-save", self.work / "kill-mid-save-stall"
        stall.mkdir()
        (stall / "sitecustomize.py").write_text(STALL_SITECUSTOMIZE)
        flag, tag = stall / "stalled.flag", tag_for(3 * SAVE_EVERY)
        env = {"STALL_SAVE_TAG": tag, "STALL_SAVE_RANK": "1", "STALL_SAVE_FLAG": str(flag),
               "PYTHONPATH": os.pathsep.join([str(stall), job_env()["PYTHONPATH"]])}  # fmt: skip
        job = Job(self, out, "kill-mid-save-1", env=env)
        job.wait_until(flag.is_file, JOB_TIMEOUT_S, f"rank 1 stalled in its write of {tag}")
        partial = Path(flag.read_text().strip())
        victim = job.rank(1)
        victim.kill()
        rc = job.wait(180)
        partial_bytes = partial.stat().st_size  # the resumed job replaces the partial tag
        tag_dir = out / "checkpoints" / tag
        previous = latest_complete(out / "checkpoints")
        if rc == 0 or not tag_dir.is_dir() or is_complete(tag_dir):
            raise RowFailed(f"rc {rc}; {tag_dir} exists: {tag_dir.is_dir()}, has {MARKER}: {is_complete(tag_dir)}")
        if previous is None or previous.name != tag_for(2 * SAVE_EVERY) or verify_tag(previous):
            raise RowFailed(f"newest complete tag after the kill: {previous}")
        job2 = Job(self, out, "kill-mid-save-2")
        job2.finished()
        if job2.resumed_from() != previous.name:
            raise RowFailed(f"the resume started from {job2.resumed_from()}, not {previous.name}")
        row.gap = f"{self.gap(out):.1e}"
        row.observed = (f"rank 1 killed in its write of {partial.name} (half written, {partial_bytes} bytes);"
                        f" launcher rc {rc}; {tag}: no {MARKER}; resumed from "
                        f"{job2.resumed_from()} (verified), finished")  # fmt: skip

    def file_size_limit(self, row: Row) -> None:
        out = self.work / "file-size-limit"
        # Ignored here, SIGXFSZ stays ignored in the launcher and the ranks it starts, so a
        # write past the limit fails with EFBIG instead of killing the process.
        job = Job(self, out, "file-size-limit-1", preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))
        good = tag_for(2 * SAVE_EVERY)
        job.wait_until(lambda: is_complete(out / "checkpoints" / good), JOB_TIMEOUT_S, f"{good} complete")
        for rank in (0, 1):
            job.rank(rank).rlimit(psutil.RLIMIT_FSIZE, (FSIZE_LIMIT, psutil.RLIM_INFINITY))
        limited_at = max(job.logged_steps(), default=0)
        rc = job.wait(240)
        text = job.text()
        found = re.search(r"\[ctal-ds\] checkpoint error: could not save checkpoint (\S+) \(rank (\d)[^)]*\): "
                          r"([^\n]*)", text)  # fmt: skip
        if rc != CHECKPOINT_FAILED or not found:
            raise RowFailed(f"launcher rc {rc} (expected {CHECKPOINT_FAILED}); no checkpoint error in {job.log}:\n"
                            f"{job.tail()}")  # fmt: skip
        failed = Path(found.group(1))
        if "file size limit (RLIMIT_FSIZE) 1048576 bytes" not in found.group(3):
            raise RowFailed(f"the error does not name the file size limit: {found.group(0)[:400]}")
        previous = latest_complete(out / "checkpoints")
        if is_complete(failed) or previous is None or previous == failed or verify_tag(previous):
            raise RowFailed(f"after the failed save of {failed.name}: newest complete tag {previous}")
        job2 = Job(self, out, "file-size-limit-2")
        job2.finished()
        if job2.resumed_from() != previous.name:
            raise RowFailed(f"the resume started from {job2.resumed_from()}, not {previous.name}")
        error = found.group(3).split(":")[0]
        space = re.search(r"\((\S+ MiB free on its file system; file size limit \(RLIMIT_FSIZE\) \d+ bytes)\)",
                          found.group(3))
        row.gap = f"{self.gap(out):.1e}"
        row.observed = (f"limit set after step {limited_at}; rank {found.group(2)}: 'checkpoint error: could not "
                        f"save checkpoint {failed.name} (rank {found.group(2)}, writing its files): {error} ... "
                        f"({space.group(1) if space else ''})'; launcher rc {rc}; "
                        f"{previous.name} verified and resumed from; finished; traceback in log: "
                        f"{'yes' if 'Traceback' in text else 'no'}")  # fmt: skip

    def flipped_byte(self, row: Row) -> None:
        out = self.work / "flipped-byte"
        cut = 3 * SAVE_EVERY
        job = Job(self, out, "flipped-byte-1", "--exit-at-step", str(cut))
        if job.wait() != 0:
            raise RowFailed(f"the first job exited {job.proc.returncode}:\n{job.tail()}")
        model = out / "checkpoints" / tag_for(cut) / "mp_rank_00_model_states.pt"
        where = flip_byte(model)
        job2 = Job(self, out, "flipped-byte-2")
        job2.finished()
        text = job2.text()
        named = re.search(rf"checkpoint \S*{tag_for(cut)} failed verification and is skipped: ([^\n]*)", text)
        if not named or "mp_rank_00_model_states.pt: sha256" not in named.group(1):
            raise RowFailed(f"no verification failure naming {model.name} in {job2.log}")
        if job2.resumed_from() != tag_for(cut - SAVE_EVERY):
            raise RowFailed(f"the resume started from {job2.resumed_from()}, not {tag_for(cut - SAVE_EVERY)}")
        row.gap = f"{self.gap(out):.1e}"
        row.observed = (f"byte {where} of {tag_for(cut)}/{model.name} flipped; log: '{named.group(1)[:70]}'; "
                        f"resumed from {job2.resumed_from()}; finished")  # fmt: skip

    def truncated_shard(self, row: Row) -> None:
        out, shards = self.work / "truncated-shard", self.work / "truncated-shards"
        shutil.copytree(self.shards / "train", shards)
        job = Job(self, out, "truncated-shard", shards=shards)
        at = job.wait_step(2)
        victim = sorted(shards.glob("shard-*.tar"))[5]
        size = victim.stat().st_size
        os.truncate(victim, size // 2)
        job.finished()
        text = job.text()
        named = re.search(rf"skipped damaged shard \S*{victim.name}: ([^\n]*)", text)
        rows = [json.loads(x) for x in job.metrics.read_text().splitlines() if x.strip()]
        counted = [r["data/damaged_shards"] for r in rows if "data/damaged_shards" in r]
        if not named or not counted or counted[-1] < 1:
            raise RowFailed(f"damaged shard named: {bool(named)}; data/damaged_shards logged: {counted[-3:]}")
        row.observed = (f"{victim.name} cut to {size // 2} of {size} bytes after step {at}; log: 'skipped "
                        f"damaged shard {victim.name}: {named.group(1)[:90]}'; data/damaged_shards "
                        f"{counted[-1]:g} at step {STEPS}; finished")  # fmt: skip

    def sigstop_rank(self, row: Row) -> None:
        out = self.work / "sigstop-rank"
        job = Job(self, out, "sigstop-rank", "--watchdog-floor-s", str(WATCHDOG_FLOOR_S), "--watchdog-startup-s",
                  "600", "--collective-timeout-s", "900", steps=2000, save_every=1000)  # fmt: skip
        at = job.wait_step(3)
        victim = job.rank(1)
        victim.suspend()
        t0 = time.monotonic()
        try:
            rc = job.wait(300)
        finally:
            if victim.is_running():
                victim.kill()
        ended = time.monotonic() - t0
        fired = re.search(r"\[ctal-ds\] watchdog: rank (\d+) on (\S+): no optimizer step completed for (\d+) s "
                          r"\(limit (\d+) s[^)]*\); last completed step (\d+)", job.text())  # fmt: skip
        if rc != WATCHDOG_EXIT or not fired:
            raise RowFailed(f"launcher rc {rc} (expected {WATCHDOG_EXIT}) {ended:.0f} s after the stop; watchdog "
                            f"line found: {bool(fired)}; log {job.log}")  # fmt: skip
        rank, waited, limit = int(fired.group(1)), int(fired.group(3)), int(fired.group(4))
        if limit != WATCHDOG_FLOOR_S or rank != 0 or waited > limit + 10:
            raise RowFailed(f"{fired.group(0)}")
        row.observed = (f"rank 1 stopped after step {at}; 'watchdog: rank 0 on {fired.group(2)}: no optimizer step "
                        f"completed for {waited} s (limit {limit} s); last completed step {fired.group(5)}', stacks "
                        f"dumped; job ended rc {rc} {ended:.0f} s after the stop (limit {limit} s, + the "
                        "launcher's 30 s SIGTERM grace for the stopped rank)")  # fmt: skip

    def mlflow_down(self, row: Row) -> None:
        import mlflow

        out, store = self.work / "mlflow-down", self.work / "mlflow-down-server"
        store.mkdir()
        port = free_port()
        uri = f"http://127.0.0.1:{port}"
        env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
        server = start_server(self, store, port)
        job = Job(self, out, "mlflow-down-1", "--flush-every", "1", tracking_uri=uri, env=env, experiment="faults")
        job.wait_step(4)
        stop_server(server)
        down_at = max(job.logged_steps())
        job.finished()
        text = job.text()
        warned = text.count(f"WARNING: MLflow tracking at {uri} failed")
        logged = job.logged_steps()
        if warned != 1 or logged != list(range(1, STEPS + 1)):
            raise RowFailed(f"{warned} tracking warnings (expected 1); metrics.jsonl steps {logged}")
        server = start_server(self, store, port)
        job2 = Job(self, out, "mlflow-down-2", "--flush-every", "1", tracking_uri=uri, env=env,
                   experiment="faults")
        job2.finished()
        sent = re.search(r"\[ctal-ds\] sent (\d+) values of (\d+) steps \((\d+)\.\.(\d+)\)", job2.text())
        client = mlflow.MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
        history = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")) if runs else []
        stop_server(server)
        if len(runs) != 1 or runs[0].info.status != "FINISHED" or history != list(range(1, STEPS + 1)):
            status = runs[0].info.status if runs else None
            raise RowFailed(f"{len(runs)} runs, status {status}, train/loss history steps {history}")
        row.gap = f"{self.gap(out):.1e}"
        row.observed = (f"server killed after step {down_at}; 1 warning, training went on, metrics.jsonl steps "
                        f"1..{STEPS}; server restarted, resume from {job2.resumed_from()}: "
                        f"{sent.group(0)[10:] if sent else 'nothing resent'}; run FINISHED, train/loss "
                        f"history steps 1..{STEPS}")  # fmt: skip


def start_server(bench: Bench, store: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on a loopback port with a SQLite store; waits for its /health."""
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_cli) if mlflow_cli.is_file() else "mlflow", "server", "--backend-store-uri",
           f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    log = bench.work / "logs" / f"{store.name}-{len(bench.servers) + 1}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:
        server = subprocess.Popen(cmd, env=job_env(), cwd=store, stdout=sink, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    bench.servers.append(server)
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop_server(server)
            raise RowFailed(f"mlflow server on port {port} did not answer /health within 240 s (exit "
                            f"{server.returncode}); log {log}:\n{log.read_text()[-1500:]}")  # fmt: skip
        time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        try:
            os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, without warning
        except ProcessLookupError:
            pass
        server.wait()


EXPECTED = {
    "kill-rank": f"{KILLS} kills at seeded steps: launcher ends each job (rc != 0), --resume auto continues; "
    f"finishes; gap <= {TOLERANCE:g}",
    "kill-mid-save": f"partial tag has no {MARKER}; resume uses the previous tag; gap <= {TOLERANCE:g}",
    "file-size-limit": f"clear checkpoint error naming the limit, exit {CHECKPOINT_FAILED}; previous tag intact "
    f"and resumed from; gap <= {TOLERANCE:g}",
    "flipped-byte": f"the file named in the log, previous tag resumed from; gap <= {TOLERANCE:g}",
    "truncated-shard": "the shard named in a warning and counted (data/damaged_shards); the job finishes",
    "sigstop-rank": f"rank 0's watchdog (limit {WATCHDOG_FLOOR_S} s) names itself and the step, ends the job "
    f"with exit {WATCHDOG_EXIT}",
    "mlflow-down": "one warning, training goes on into metrics.jsonl; after a server restart and a resume the "
    "run is FINISHED with train/loss at every step",
}


def run_rows(bench: Bench, names: list[str]) -> list[Row]:
    rows = []
    for name in names:
        row = Row(name, EXPECTED[name])
        t0 = time.monotonic()
        try:
            bench.clear(name)
            getattr(bench, name.replace("-", "_"))(row)
            row.ok = True
        except RowFailed as err:
            row.observed = f"FAILED CHECK: {err}"
        except Exception as err:  # a broken row is reported, the others still run
            row.observed = f"ERROR: {type(err).__name__}: {err}"
        row.seconds = time.monotonic() - t0
        print(f"[faults] {name}: {'OK' if row.ok else 'FAIL'} in {row.seconds:.0f} s", flush=True)
        rows.append(row)
    return rows


def table(rows: list[Row]) -> str:
    widths = {"fault": 16, "expected": 40, "observed": 64, "gap": 8, "result": 6}
    heads = list(widths)

    def line(cells: list[str]) -> list[str]:
        wrapped = [textwrap.wrap(c, widths[h]) or [""] for c, h in zip(cells, heads)]
        return [" | ".join(w[i].ljust(widths[h]) if i < len(w) else " " * widths[h]
                           for w, h in zip(wrapped, heads)).rstrip()
                for i in range(max(map(len, wrapped)))]  # fmt: skip

    out = line(heads) + ["-+-".join("-" * widths[h] for h in heads)]
    for row in rows:
        first = row.observed.split("\n")[0]
        out += line([row.fault, row.expected, first, row.gap, "OK" if row.ok else "FAIL"])
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated rows to run (default all): {','.join(ROWS)}")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary folder); "
                        "the shards and a finished reference job found there are reused")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill steps and ranks (default 0)")
    args = parser.parse_args(argv)
    names = list(ROWS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"--only: unknown rows {unknown}; rows are {', '.join(ROWS)}")

    # Started in the background, a process inherits SIGINT ignored; a Ctrl-C or SIGTERM must
    # still end the jobs and servers it started (Bench.close, in the finally below).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f}); 2 ranks, "
          f"tiny preset, {STEPS} steps, a checkpoint every {SAVE_EVERY}", flush=True)  # fmt: skip
    t0 = time.monotonic()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep.resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="ctal-faults-"))
    bench = Bench(work, args.seed)
    try:
        bench.build_shards()
        rows = run_rows(bench, names)
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - t0
    print()
    print(table(rows))
    failed = [r for r in rows if not r.ok]
    for row in failed:
        print(f"\n{row.fault}: {row.observed}")
    print(f"\n{len(rows) - len(failed)} of {len(rows)} rows OK; wall time {wall:.0f} s ({wall / 60:.1f} min), "
          f"load average {os.getloadavg()[0]:.1f}{f'; run folders in {work}' if args.keep else ''}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
