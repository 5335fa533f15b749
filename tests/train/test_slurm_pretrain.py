"""launch/slurm/pretrain.sbatch on a real two-node SLURM cluster (loopback, tests/slurm/cluster.py):
pre-emption signal -> checkpoint on every rank -> requeue -> resume into the same run."""

from __future__ import annotations

import importlib.util
import json
import sys
import time

import pytest
import train_helpers as h

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _cluster_module():
    path = h.REPO / "tests" / "slurm" / "cluster.py"
    if not path.is_file():
        pytest.skip(f"{path} (the loopback SLURM harness) is not in this tree")
    spec = importlib.util.spec_from_file_location("ctal_loopback_slurm", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cluster(tmp_path):
    slurm = _cluster_module()
    cluster = slurm.LoopbackSlurmCluster(tmp_path / "slurm")
    try:
        cluster.install_packages()
    except slurm.ClusterUnavailable as exc:
        pytest.skip(f"cannot run a loopback SLURM cluster here: {exc.reason}")
    cluster.start()
    yield cluster
    cluster.stop()


def test_usr1_checkpoints_requeues_and_the_requeued_job_resumes_the_same_run(cluster, demo_shards, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.log"
    env = h.job_env(
        REPO=str(h.REPO), PYTHON=sys.executable, DS_CONFIG=str(h.REPO / "ds_configs" / "cpu.json"),
        TRAIN_SHARDS=str(demo_shards / "train"), VALID_SHARDS=str(demo_shards / "valid"), OUT=str(out),
        PRETRAIN_ARGS="--preset tiny --steps 200 --warmup-steps 5 --save-every 1000 --num-workers 1 "
                      "--log-every 5 --micro-batch-size 4",
    )  # fmt: skip
    # The script asks for 8 GPUs per node; this cluster has CPUs only.
    options = ["-N2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=10",
               f"--output={log}"]  # fmt: skip
    job = cluster.sbatch(h.REPO / "launch" / "slurm" / "pretrain.sbatch", options=options, env=env, cwd=h.REPO)
    cluster.wait_job(job, states={"RUNNING"}, timeout=60)
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").is_file() or len((out / "metrics.jsonl").read_text().splitlines()) < 2:
        assert time.monotonic() < deadline and cluster.job_state(job) == "RUNNING", log.read_text()[-4000:]
        time.sleep(0.3)

    cluster.signal(job, "USR1", batch=True)  # what --signal=B:USR1@120 sends before the time limit
    info = cluster.wait_job(job, states={"COMPLETED"}, timeout=600)
    text = log.read_text()
    assert info["Restarts"] == "1", text[-4000:]
    assert "world size 2 from SLURM_STEP_NUM_TASKS (slurm (srun))" in text
    assert "SIGUSR1 received at step" in text and "requeueing job" in text
    stopped_at = int(text.split("SIGUSR1 received at step ")[1].split()[0])
    assert f"resumed from {out / 'checkpoints' / f'global_step{stopped_at}'}" in text
    assert json.loads((out / "status.json").read_text())["finished"] is True

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ctal-pretrain").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["slurm.restart_count"] == "1"
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert steps == set(range(5, 201, 5)) | {stopped_at}
