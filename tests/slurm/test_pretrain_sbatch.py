"""launch/slurm/pretrain.sbatch, unmodified, on a real two-node SLURM cluster (loopback).

Three runs of the same tiny pre-training (same arguments, two nodes x one rank):
an uninterrupted reference; one pre-empted by USR1, which checkpoints, requeues itself
and resumes; and one cancelled while a checkpoint is being written, then submitted
again. Both interrupted runs must end with the reference's weights.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from . import ctal_jobs as jobs
from .conftest import made_once, slurm_turn

# Above the bounded waits of any one test: three job waits of JOB_TIMEOUT and a cancellation.
pytestmark = pytest.mark.timeout(1500)

STEPS, SAVE_EVERY = 200, 25
ARGS = (
    f"--preset tiny --steps {STEPS} --save-every {SAVE_EVERY} --warmup-steps 2 --lr 1e-3 "
    "--micro-batch-size 4 --num-workers 1 --log-every 1 --flush-every 10"
)
# Same world size, same data order and RNG streams after a resume: the weights come out
# identical in practice; the bound leaves room only for float summation order.
WEIGHT_TOLERANCE = 1e-6
JOB_TIMEOUT = 420


def _run_reference(cluster, shards: Path, directory: Path) -> dict:
    """The whole script as a user submits it, from a directory of their own."""
    out = directory / "run"
    job = cluster.sbatch(jobs.PRETRAIN_SBATCH, options=jobs.CPU_OPTIONS,
                         env=jobs.pretrain_env(shards, out, ARGS), cwd=directory)  # fmt: skip
    info = cluster.wait_job(job, timeout=JOB_TIMEOUT)
    log = jobs.default_log(directory, "ctal-pretrain", job)
    return {"job": job, "out": str(out), "log": str(log), "info": info}


def _run_preempted(cluster, shards: Path, directory: Path) -> dict:
    """USR1 to the batch shell mid-run, as ``--signal=B:USR1@120`` sends it before the
    time limit; the job is left to requeue and finish by itself."""
    out, log = directory / "run", directory / "job.log"
    job = cluster.sbatch(jobs.PRETRAIN_SBATCH, options=[*jobs.CPU_OPTIONS, f"--output={log}"],
                         env=jobs.pretrain_env(shards, out, ARGS), cwd=directory)  # fmt: skip
    jobs.wait_for_step(cluster, job, out, 5, log)
    cluster.signal(job, "USR1", batch=True)
    info = cluster.wait_job(job, states={"COMPLETED"}, timeout=JOB_TIMEOUT)
    return {"job": job, "out": str(out), "log": str(log), "info": info}


# Session fixtures are set up before the per-test turn is taken, so they take it themselves.
@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, slurm_cluster, demo_shards):
    with slurm_turn(tmp_path_factory):
        return made_once(
            tmp_path_factory,
            "pretrain-reference",
            lambda directory: _run_reference(slurm_cluster, demo_shards, directory),
        )


@pytest.fixture(scope="session")
def preempted_run(tmp_path_factory, slurm_cluster, demo_shards):
    with slurm_turn(tmp_path_factory):
        return made_once(
            tmp_path_factory,
            "pretrain-preempted",
            lambda directory: _run_preempted(slurm_cluster, demo_shards, directory),
        )


def test_unmodified_script_trains_two_nodes_with_one_rank_each(reference_run):
    log = jobs.read_log(reference_run["log"])
    assert reference_run["info"]["JobState"] == "COMPLETED", log[-6000:]
    assert reference_run["info"]["Restarts"] == "0"
    assert "world size 2 from SLURM_STEP_NUM_TASKS (slurm (srun))" in log
    # Rank 0 of node 0 hosts the rendezvous at the node's NodeAddr, on a port from the job id.
    assert f"rendezvous 127.0.0.1:{15000 + reference_run['job'] % 15000}" in log
    ranks = [(rank, local, node) for rank, local, node, _ in jobs.rank_map(log)]
    assert ranks == [(0, 0, 0), (1, 0, 1)], log[-6000:]

    out = Path(reference_run["out"])
    assert json.loads((out / "status.json").read_text()) == {
        "step": STEPS,
        "finished": True,
        "reason": "finished",
    }
    losses = [row["train/loss"] for row in jobs.metric_rows(out)]
    assert len(losses) == STEPS
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (
        f"loss did not fall: first ten {losses[:10]}, last ten {losses[-10:]}"
    )


def test_usr1_preemption_resumes_into_one_continuous_mlflow_run(preempted_run):
    out, log = Path(preempted_run["out"]), jobs.read_log(preempted_run["log"])
    assert preempted_run["info"]["Restarts"] == "1", log[-6000:]
    assert "[sbatch] job" in log and "restart 1 on" in log
    assert "SIGUSR1 received at step" in log and "requeueing job" in log
    stopped_at = int(log.split("SIGUSR1 received at step ")[1].split()[0])
    assert 5 <= stopped_at < STEPS, (
        "USR1 must land mid-run; raise STEPS if the run outpaces the signal"
    )
    assert f"resumed from {out / 'checkpoints' / f'global_step{stopped_at}'}" in log
    assert json.loads((out / "status.json").read_text())["finished"] is True

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ctal-pretrain").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["slurm.restart_count"] == "1"
    assert run.data.tags["resumed_at_step"] == str(stopped_at)
    # Each step logged once: the pre-empted job up to its checkpoint, the requeued one after it.
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(1, STEPS + 1))


def test_usr1_preemption_ends_with_the_uninterrupted_weights(reference_run, preempted_run):
    reference = jobs.final_weights(Path(reference_run["out"]) / "checkpoints", STEPS)
    resumed = jobs.final_weights(Path(preempted_run["out"]) / "checkpoints", STEPS)
    gap = jobs.max_abs_gap(reference, resumed)
    print(f"max |resumed - uninterrupted| over {len(reference)} tensors: {gap:.3g}")
    assert gap <= WEIGHT_TOLERANCE


def test_scancel_mid_checkpoint_leaves_the_previous_checkpoint_to_resume_from(
    slurm_cluster, demo_shards, reference_run, tmp_path
):
    stalled_tag, previous_tag = f"global_step{2 * SAVE_EVERY}", f"global_step{SAVE_EVERY}"
    hook, flag = tmp_path / "hook", tmp_path / "stalled"
    hook.mkdir()
    shutil.copyfile(Path(__file__).with_name("stall_save.py"), hook / "sitecustomize.py")
    out, log = tmp_path / "run", tmp_path / "job.log"
    options = [*jobs.CPU_OPTIONS, f"--output={log}"]

    stalling = jobs.pretrain_env(demo_shards, out, ARGS, PYTHONPATH=str(hook), STALL_SAVE_TAG=stalled_tag,
                                 STALL_SAVE_RANK="1", STALL_SAVE_FLAG=str(flag))  # fmt: skip
    job = slurm_cluster.sbatch(jobs.PRETRAIN_SBATCH, options=options, env=stalling, cwd=tmp_path)
    slurm_cluster.wait_job(job, states={"RUNNING"}, timeout=JOB_TIMEOUT)
    deadline = time.monotonic() + JOB_TIMEOUT
    while not flag.exists():
        assert slurm_cluster.job_state(job) == "RUNNING", jobs.tail(log)
        assert time.monotonic() < deadline, f"rank 1 never reached {stalled_tag}:\n{jobs.tail(log)}"
        time.sleep(0.2)
    checkpoints = out / "checkpoints"
    assert (checkpoints / previous_tag / "complete.json").is_file()
    assert (checkpoints / stalled_tag).is_dir() and not (
        checkpoints / stalled_tag / "complete.json"
    ).exists()

    # TERM first (the trainer only notes it), SIGKILL after KillWait: that is what cuts
    # a write short, and a cancelled job must stay cancelled.
    slurm_cluster.cancel(job)
    info = jobs.wait_cancelled(slurm_cluster, job)
    assert info["Restarts"] == "0", jobs.tail(log)
    assert not (checkpoints / stalled_tag / "complete.json").exists()
    truncated = Path(flag.read_text().strip())
    assert truncated.is_file(), "the half-written file the resume must ignore"

    log = tmp_path / "again.log"
    again = slurm_cluster.sbatch(jobs.PRETRAIN_SBATCH, options=[*jobs.CPU_OPTIONS, f"--output={log}"],
                                 env=jobs.pretrain_env(demo_shards, out, ARGS), cwd=tmp_path)  # fmt: skip
    info = slurm_cluster.wait_job(again, timeout=JOB_TIMEOUT)
    text = jobs.read_log(log)
    assert info["JobState"] == "COMPLETED", text[-6000:]
    assert f"resumed from {checkpoints / previous_tag}" in text
    assert json.loads((out / "status.json").read_text())["finished"] is True

    gap = jobs.max_abs_gap(
        jobs.final_weights(Path(reference_run["out"]) / "checkpoints", STEPS),
        jobs.final_weights(checkpoints, STEPS),
    )
    print(f"max |resumed after scancel - uninterrupted|: {gap:.3g}")
    assert gap <= WEIGHT_TOLERANCE


def test_cancelled_jobs_get_the_production_kill_wait(slurm_cluster):
    """The scancel tests measure the ranks against the grace period a real cluster gives
    them (KillWait, 30 s by default), not a shorter one."""
    config = slurm_cluster.run(["scontrol", "show", "config"]).stdout
    lines = [line for line in config.splitlines() if line.startswith("KillWait")]
    assert re.fullmatch(r"KillWait\s*=\s*30 sec", lines[0].strip() if lines else ""), lines


def test_plain_scancel_checkpoints_at_the_next_step_boundary(slurm_cluster, demo_shards, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.log"
    args = ARGS.replace(f"--steps {STEPS}", "--steps 5000")
    job = slurm_cluster.sbatch(jobs.PRETRAIN_SBATCH, options=[*jobs.CPU_OPTIONS, f"--output={log}"],
                               env=jobs.pretrain_env(demo_shards, out, args), cwd=tmp_path)  # fmt: skip
    jobs.wait_for_step(slurm_cluster, job, out, 5, log)
    cancelled = time.monotonic()
    slurm_cluster.cancel(job)
    info = jobs.wait_cancelled(slurm_cluster, job)
    text = jobs.assert_exited_before_kill(slurm_cluster, log, cancelled)
    assert info["Restarts"] == "0"
    assert "SIGTERM received at step" in text, text[-3000:]
    stopped_at = int(text.split("SIGTERM received at step ")[1].split()[0])
    assert (out / "checkpoints" / f"global_step{stopped_at}" / "complete.json").is_file()
    assert "requeueing" not in text
