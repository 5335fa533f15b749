"""The hang watchdog in a real job: one rank of a 2-rank deepspeed-launcher run stops."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import train_helpers as h

from ctal_ds.train.watchdog import EXIT_CODE

# Above the test's two bounded waits: 600 s for three steps, 600 s for the watchdog to end the job.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def logged_steps(out) -> int:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum("train/loss" in json.loads(line) for line in path.read_text().splitlines() if line.strip())


def rank_process(launcher: subprocess.Popen, local_rank: int) -> psutil.Process:
    """The training process the deepspeed launcher started for `local_rank`."""
    for proc in psutil.Process(launcher.pid).children(recursive=True):
        cmdline = proc.cmdline()
        if f"--local_rank={local_rank}" in cmdline and str(h.PRETRAIN) in cmdline:
            return proc
    raise AssertionError(f"no process of local rank {local_rank} under the launcher")


def test_a_stopped_rank_makes_the_other_ranks_watchdog_end_the_job_with_its_code(demo_shards, tmp_path):
    # SIGSTOP is a stall without end: rank 1 cannot run, not even its own watchdog, and
    # rank 0 waits in the step's all-reduce. Rank 0's watchdog (limit max(20 s, 10 x
    # median step)) must end the job long before the 900 s collective timeout.
    out, log = tmp_path / "run", tmp_path / "launcher.log"
    args = h.pretrain_args(demo_shards, out, "--steps", "1000", "--warmup-steps", "10", "--save-every", "1000",
                           "--num-workers", "0", "--watchdog-floor-s", "20", "--watchdog-startup-s", "600",
                           "--collective-timeout-s", "900")  # fmt: skip
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(h.free_port()),
           str(h.PRETRAIN), *args]  # fmt: skip
    with open(log, "w") as sink:
        launcher = subprocess.Popen(cmd, env=h.job_env(), cwd=h.REPO, stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
    stopped = None
    try:
        deadline = time.monotonic() + 600
        while logged_steps(out) < 3:  # past start-up: step times are known
            assert launcher.poll() is None, f"the job exited {launcher.returncode} before step 3:\n{log.read_text()[-6000:]}"
            assert time.monotonic() < deadline, f"the job logged no step 3 within 600 s:\n{log.read_text()[-6000:]}"
            time.sleep(0.2)
        stopped = rank_process(launcher, 1)
        stopped.suspend()
        try:
            # Rank 0's watchdog fires max(20 s, 10 x the median step) after its last step.
            code = launcher.wait(timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job was still running 600 s after rank 1 was stopped:\n{log.read_text()[-6000:]}")
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        if stopped is not None and stopped.is_running():
            stopped.kill()
    text = log.read_text()

    assert code == EXIT_CODE, text[-6000:]
    fired = re.search(r"\[ctal-ds\] watchdog: rank (\d+) on (\S+): no optimizer step completed for (\d+) s "
                      r"\(limit (\d+) s: [^)]*\); last completed step (\d+)", text)  # fmt: skip
    assert fired, text[-6000:]
    rank, waited, limit, last = int(fired[1]), int(fired[3]), int(fired[4]), int(fired[5])
    assert rank == 0 and "watchdog: rank 1 on" not in text
    assert 20 <= limit < 900 and limit <= waited < limit + 30
    assert last >= 3
    # The main thread's stack: where in the training loop rank 0 waits for rank 1 (the
    # step's all-reduce, or the metrics all-reduce of a logging step) depends on timing.
    assert "Stacks of all threads follow" in text
    assert re.search(r'trainer\.py", line \d+ in (train_step|train|log|all_reduce)', text), text[-6000:]
    assert f"watchdog: rank exits with code {EXIT_CODE}" in text
    assert f"exits with return code = {EXIT_CODE}" in text  # the launcher saw it and ended the job
    assert "[ctal-ds] timeouts: process-group start-up 600 s, collectives 900 s" in text
    assert "[ctal-ds] watchdog: an optimizer step may take max(20 s, 10 x the median" in text
