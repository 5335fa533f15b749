"""What launch/slurm/{pretrain,finetune}.sbatch do with signals, with a stand-in trainer
(standin_trainer.py) so each job takes seconds: what they pass to the trainer, that USR1
reaches every rank on every node and requeues the job until it finishes, and that a
cancelled job, or one told to stop at a step, is not requeued."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from . import ctal_jobs as jobs
from .cluster import wait_for_text

# Above the bounded waits of any one test: 600 s at most.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def fake_repo(tmp_path):
    """A REPO whose launch/ entry points are the stand-in trainer."""
    repo = tmp_path / "repo"
    (repo / "launch").mkdir(parents=True)
    for name in ("pretrain.py", "finetune.py"):
        shutil.copyfile(Path(__file__).with_name("standin_trainer.py"), repo / "launch" / name)
    return repo


def _pretrain(repo: Path, out: Path) -> tuple[Path, dict, list[str]]:
    env = jobs.job_env(REPO=str(repo), PYTHON=sys.executable, DS_CONFIG="/configs/zero2.json",
                       TRAIN_SHARDS="/shards/train", VALID_SHARDS="/shards/valid", OUT=str(out),
                       PRETRAIN_ARGS="--preset tiny --steps 7")  # fmt: skip
    argv = ["--deepspeed_config", "/configs/zero2.json", "--train-shards", "/shards/train",
            "--valid-shards", "/shards/valid", "--out", str(out), "--resume", "auto",
            "--run-name", "ctal-pretrain-{job}", "--preset", "tiny", "--steps", "7"]  # fmt: skip
    return jobs.PRETRAIN_SBATCH, env, argv


def _finetune(repo: Path, out: Path) -> tuple[Path, dict, list[str]]:
    env = jobs.job_env(REPO=str(repo), PYTHON=sys.executable, TASK="emotion", SHARDS="/shards/iemocap",
                       INIT="/runs/base", OUT=str(out), FINETUNE_ARGS="--fold 1 --epochs 2")  # fmt: skip
    argv = ["--task", "emotion", "--shards", "/shards/iemocap", "--init", "/runs/base", "--out", str(out),
            "--resume", "auto", "--run-name", "ctal-finetune-{job}", "--fold", "1", "--epochs", "2"]  # fmt: skip
    return jobs.FINETUNE_SBATCH, env, argv


SCRIPTS = {"pretrain": _pretrain, "finetune": _finetune}


def _submit(cluster, script: Path, env: dict, tmp_path: Path) -> tuple[int, Path]:
    log = tmp_path / "job.log"
    job = cluster.sbatch(
        script, options=[*jobs.CPU_OPTIONS, f"--output={log}"], env=env, cwd=tmp_path
    )
    cluster.wait_job(job, states={"RUNNING"}, timeout=120)
    for rank in (0, 1):  # handlers are installed before this line is printed
        wait_for_text(log, f"[stand-in] rank {rank} restart 0 argv", timeout=120)
    return job, log


def _argv_of(log: str, rank: int, restart: int) -> list[str]:
    prefix = f"[stand-in] rank {rank} restart {restart} argv "
    return json.loads(
        next(line for line in log.splitlines() if line.startswith(prefix))[len(prefix) :]
    )


@pytest.mark.parametrize("name", SCRIPTS)
def test_usr1_reaches_every_rank_and_requeues_until_finished(
    slurm_cluster, fake_repo, tmp_path, name
):
    script, env, argv = SCRIPTS[name](fake_repo, tmp_path / "out")
    job, log = _submit(slurm_cluster, script, env, tmp_path)

    slurm_cluster.signal(job, "USR1", batch=True)
    info = slurm_cluster.wait_job(job, states={"COMPLETED"}, timeout=240)
    text = jobs.read_log(log)
    assert info["Restarts"] == "1", text
    for rank in (0, 1):
        assert f"[stand-in] rank {rank} restart 0 stops: SIGUSR1 received" in text
        assert f"[stand-in] rank {rank} restart 1 stops: finished" in text
        expected = [arg.format(job=job) for arg in argv]
        assert _argv_of(text, rank, 0) == _argv_of(text, rank, 1) == expected
    # Requeued once, after the first run; the finished second run is left alone.
    assert text.count("requeueing job") == 1
    assert text.index("requeueing job") < text.index("[stand-in] rank 0 restart 1")


def test_usr1_sent_to_the_ranks_only_also_requeues(slurm_cluster, fake_repo, tmp_path):
    # What `--signal=USR1@120` without `B:`, or `scancel --signal=USR1` without --batch, do.
    script, env, _ = _pretrain(fake_repo, tmp_path / "out")
    job, log = _submit(slurm_cluster, script, env, tmp_path)

    slurm_cluster.signal(job, "USR1", batch=False)
    info = slurm_cluster.wait_job(job, states={"COMPLETED"}, timeout=240)
    text = jobs.read_log(log)
    assert info["Restarts"] == "1", text
    assert "[sbatch] USR1" not in text
    assert "[stand-in] rank 1 restart 0 stops: SIGUSR1 received" in text
    assert "[stand-in] rank 0 restart 1 stops: finished" in text


def test_a_stop_asked_for_with_exit_at_step_is_not_requeued(slurm_cluster, fake_repo, tmp_path):
    script, env, _ = _pretrain(fake_repo, tmp_path / "out")
    env["PRETRAIN_ARGS"] = "--exit-at-step 3"
    log = tmp_path / "job.log"
    job = slurm_cluster.sbatch(
        script, options=[*jobs.CPU_OPTIONS, f"--output={log}"], env=env, cwd=tmp_path
    )

    info = slurm_cluster.wait_job(job, states={"COMPLETED"}, timeout=120)
    text = jobs.read_log(log)
    assert info["Restarts"] == "0", text
    assert "[stand-in] rank 0 restart 0 stops: --exit-at-step reached" in text
    assert "requeueing" not in text


@pytest.mark.parametrize("name", SCRIPTS)
def test_scancel_is_not_undone_by_a_requeue(slurm_cluster, fake_repo, tmp_path, name):
    # The ranks exit 0 unfinished on TERM, as after a USR1: only the signal tells
    # a cancellation from a time limit.
    script, env, _ = SCRIPTS[name](fake_repo, tmp_path / "out")
    job, log = _submit(slurm_cluster, script, env, tmp_path)

    assert slurm_cluster.job_pids(job), "the running job's processes are not found by their environment"
    cancelled = time.monotonic()
    slurm_cluster.cancel(job)
    jobs.wait_cancelled(slurm_cluster, job)
    assert "step exited with 0" in jobs.assert_exited_before_kill(slurm_cluster, log, cancelled)
    # The batch script is what would requeue the job: once none of the job's processes is
    # left, the state it leaves is final.
    slurm_cluster.wait_job_processes_gone(job, timeout=slurm_cluster.kill_wait + 60)
    info = slurm_cluster.job_info(job)
    text = jobs.read_log(log)
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0"), text
    assert "[stand-in] rank 1 restart 0 stops: SIGTERM received" in text
    assert "requeueing" not in text and "restart 1" not in text


def test_finetune_script_passes_only_the_options_that_are_set(slurm_cluster, fake_repo, tmp_path):
    script, env, _ = _finetune(fake_repo, tmp_path / "out")
    del env["INIT"]
    env.update(DS_CONFIG="/configs/zero3.json", FINETUNE_ARGS="--scratch --preset tiny")
    job, log = _submit(slurm_cluster, script, env, tmp_path)
    slurm_cluster.cancel(job)
    jobs.wait_cancelled(slurm_cluster, job)
    assert _argv_of(jobs.read_log(log), 0, 0) == [
        "--task", "emotion", "--shards", "/shards/iemocap", "--deepspeed_config", "/configs/zero3.json",
        "--out", str(tmp_path / "out"), "--resume", "auto", "--run-name", f"ctal-finetune-{job}",
        "--scratch", "--preset", "tiny",
    ]  # fmt: skip


def test_finetune_script_without_a_task_fails_naming_it(slurm_cluster, fake_repo, tmp_path):
    _, env, _ = _finetune(fake_repo, tmp_path / "out")
    del env["TASK"]
    log = tmp_path / "job.log"
    job = slurm_cluster.sbatch(jobs.FINETUNE_SBATCH, options=[*jobs.CPU_OPTIONS, f"--output={log}"], env=env,
                               cwd=tmp_path)  # fmt: skip
    info = slurm_cluster.wait_job(job, states={"FAILED"}, timeout=120)
    assert info["Restarts"] == "0"
    assert "TASK: set TASK to emotion, sentiment or speaker" in jobs.read_log(log)
