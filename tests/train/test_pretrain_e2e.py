"""launch/pretrain.py end to end on demo shards: launchers, MLflow, resume, signals, export."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import train_helpers as h

from ctal_ds.train.checkpoint import MARKER, latest_complete, verify_tag
from ctal_ds.train.export import consolidated_state_dict

# Above the sum of the bounded waits of any one test (four 300 s runs at most).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def mlflow_run(out):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ctal-pretrain").experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def artifact_paths(client, run_id, path=None):
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return found


@pytest.fixture(scope="module")
def launcher_run(demo_shards, tmp_path_factory):
    """Six steps on two CPU ranks under the deepspeed launcher, as `make demo` runs it."""
    out = tmp_path_factory.mktemp("launcher") / "run"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(h.free_port()),
           str(h.PRETRAIN), *h.pretrain_args(demo_shards, out, "--steps", "6", "--eval-every", "3",
                                            "--save-every", "3", "--run-name", "launcher-test",
                                            "--register-model", "ctal-demo")]  # fmt: skip
    result = subprocess.run(cmd, env=h.job_env(), cwd=h.REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, result.stdout + result.stderr


def test_deepspeed_launcher_trains_two_cpu_ranks_tracks_and_exports(launcher_run):
    out, text = launcher_run
    assert "world size 2 from WORLD_SIZE (deepspeed launcher)" in text
    assert "train_batch_size 8 = micro batch 4 (max utterances) x gradient accumulation 1 x world size 2" in text
    assert json.loads((out / "status.json").read_text()) == {"step": 6, "finished": True, "reason": "finished"}
    assert sorted(p.name for p in (out / "checkpoints").glob("global_step*")) == ["global_step3", "global_step6"]
    assert all((p / MARKER).is_file() for p in (out / "checkpoints").glob("global_step*"))

    client, run = mlflow_run(out)
    assert run.info.status == "FINISHED" and run.info.run_name == "launcher-test"
    params = run.data.params
    assert params["ds.zero_optimization.stage"] == "2" and params["batch.world"] == "2"
    assert params["batch.global"] == "8" and params["run.loop.steps"] == "6"
    assert params["version.deepspeed"] and params["version.git_commit"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid/loss")] == [3, 6]
    for key in ("perf/samples_per_s", "perf/frames_per_s", "perf/tokens_per_s", "perf/flops_per_s",
                "perf/data_wait_share", "train/grad_norm", "train/lr", "sys/memory_gb_max_rank"):  # fmt: skip
        assert key in run.data.metrics, key
    assert run.data.metrics["train/lr"] > 0
    artifacts = artifact_paths(client, run.info.run_id)
    assert {"config/ds_config.json", "config/run_config.json", "tokenizer/tokenizer.json",
            "model/model.safetensors", "model/config.json", "model/tokenizer.json",
            "plots/training.png"} <= set(artifacts)  # fmt: skip
    assert not [a for a in artifacts if a.endswith(".pt")]  # ZeRO shards never uploaded
    assert run.data.tags["checkpoint.latest"].endswith("global_step6")
    assert len(run.data.tags["checkpoint.latest_manifest_sha256"]) == 64
    assert not [t for t in run.data.tags if t.startswith("checkpoint.global_step")]
    assert "checkpoints/history.jsonl" in artifacts
    # The export is also an MLflow pyfunc model of the run, registered as version 1.
    (version,) = client.search_model_versions("name='ctal-demo'")
    assert (int(version.version), version.run_id) == (1, run.info.run_id)
    (logged,) = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert logged.source_run_id == run.info.run_id and logged.name == "pyfunc"
    assert version.source == f"models:/{logged.model_id}"
    assert "registered as ctal-demo version 1" in text
    history = [json.loads(line) for line in (out / "checkpoints" / "history.jsonl").read_text().splitlines()]
    assert [h["tag"] for h in history][-1] == "global_step6"
    assert history[-1]["manifest_sha256"] == run.data.tags["checkpoint.latest_manifest_sha256"]

    # The export holds exactly the final fp32 master weights, tie included.
    from ctal_ds.model import load_pretrained

    exported = load_pretrained(out / "export").state_dict()
    master = consolidated_state_dict(out / "checkpoints" / "global_step6")
    assert set(master) <= set(exported)
    assert max((exported[k] - master[k]).abs().max().item() for k in master) == 0.0


def test_two_rank_run_continues_on_one_rank_via_universal_checkpoint_or_export(demo_shards, launcher_run, tmp_path):
    out, _ = launcher_run
    subprocess.run([sys.executable, "launch/export.py", str(out / "checkpoints"), "--universal", str(tmp_path / "univ")],
                   cwd=h.REPO, env=h.job_env(), check=True, capture_output=True, timeout=300)  # fmt: skip
    assert json.loads((tmp_path / "univ" / "global_step6" / MARKER).read_text())["universal"] is True

    # The run itself, on another world size: same MLflow run, step count and weights go on.
    cont = tmp_path / "continued"
    args = h.pretrain_args(demo_shards, cont, "--steps", "8", "--num-workers", "0", "--resume", str(tmp_path / "univ"),
                           "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}")  # fmt: skip
    result = subprocess.run([sys.executable, str(h.PRETRAIN), *args], env=h.job_env(), cwd=h.REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resumed from {tmp_path / 'univ' / 'global_step6'}" in result.stdout
    rows = [json.loads(x) for x in (cont / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [7, 8]
    client, run = mlflow_run(out)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 9))

    # Weights only, a new run: starts from the exported model, not from scratch.
    fresh = tmp_path / "init"
    args = h.pretrain_args(demo_shards, fresh, "--steps", "2", "--num-workers", "0", "--init-from", str(out / "export"),
                           "--lr", "1e-9", "--seed", "7")  # fmt: skip
    result = subprocess.run([sys.executable, str(h.PRETRAIN), *args], env=h.job_env(), cwd=h.REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    start = consolidated_state_dict(latest_complete(fresh / "checkpoints"))
    exported = consolidated_state_dict(out / "checkpoints" / "global_step6")
    assert max((start[k] - exported[k]).abs().max().item() for k in exported) < 1e-6


def test_exit_then_resume_continues_the_same_run_stream_and_weights(demo_shards, tmp_path):
    logs = tmp_path / "logs"
    full = h.start_ranks(h.pretrain_args(demo_shards, tmp_path / "full", "--steps", "6", "--no-export"), 2, logs / "a")
    assert h.wait_ranks(full, logs / "a") == [0, 0], h.logs(logs / "a")

    cut = tmp_path / "cut"
    args = h.pretrain_args(demo_shards, cut, "--steps", "6", "--no-export", "--save-every", "100")
    first = h.start_ranks([*args, "--exit-at-step", "3"], 2, logs / "b")
    assert h.wait_ranks(first, logs / "b") == [0, 0], h.logs(logs / "b")
    status = json.loads((cut / "status.json").read_text())
    assert status == {"step": 3, "finished": False, "reason": "--exit-at-step reached"}
    second = h.start_ranks(args, 2, logs / "c")
    assert h.wait_ranks(second, logs / "c") == [0, 0], h.logs(logs / "c")
    assert "resumed from" in (logs / "c" / "rank0.log").read_text()

    a = consolidated_state_dict(latest_complete(tmp_path / "full" / "checkpoints"))
    b = consolidated_state_dict(latest_complete(cut / "checkpoints"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6

    rows_full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rows_cut = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    loss = lambda rows: {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}  # noqa: E731
    assert loss(rows_cut) == pytest.approx(loss(rows_full), abs=1e-5)
    samples = lambda rows: {r["step"]: r["progress/samples_seen"] for r in rows if "train/loss" in r}  # noqa: E731
    assert samples(rows_cut) == samples(rows_full)

    client, run = mlflow_run(cut)  # one run across both jobs
    assert run.data.tags["resumed_at_step"] == "3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]


def test_a_flipped_byte_in_the_newest_checkpoint_is_refused_and_the_run_resumes_before_it(demo_shards, tmp_path):
    out = tmp_path / "run"
    run = dict(env=h.job_env(), cwd=h.REPO, capture_output=True, text=True, timeout=300)
    args = h.pretrain_args(demo_shards, out, "--num-workers", "0", "--save-every", "2", "--no-export")
    first = subprocess.run([sys.executable, str(h.PRETRAIN), *args, "--steps", "4"], **run)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    model = out / "checkpoints" / "global_step4" / "mp_rank_00_model_states.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))

    export = subprocess.run([sys.executable, "launch/export.py", str(model.parent), "--out", str(tmp_path / "x")], **run)
    assert export.returncode == 1 and "mp_rank_00_model_states.pt: sha256" in export.stderr, export.stderr[-3000:]

    second = subprocess.run([sys.executable, str(h.PRETRAIN), *args, "--steps", "6"], **run)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'global_step2'}" in second.stdout
    assert f"checkpoint {model.parent} failed verification" in second.stderr
    assert "mp_rank_00_model_states.pt: sha256" in second.stderr
    _, mlrun = mlflow_run(out)
    assert mlrun.data.tags["resume_fallback"] == "global_step4"
    assert mlrun.data.tags["resumed_at_step"] == "2"
    assert json.loads((out / "status.json").read_text())["step"] == 6


def test_sigterm_to_one_rank_checkpoints_every_rank_and_exits_0(demo_shards, tmp_path):
    out, logs = tmp_path / "run", tmp_path / "logs"
    args = h.pretrain_args(demo_shards, out, "--steps", "1000", "--warmup-steps", "10", "--save-every", "1000")
    procs = h.start_ranks(args, 2, logs)
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").is_file() or len((out / "metrics.jsonl").read_text().splitlines()) < 2:
        exited = [r for r, p in enumerate(procs) if p.poll() is not None]
        if exited or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            why = f"ranks {exited} exited" if exited else "300 s passed"
            pytest.fail(f"{why} before {out / 'metrics.jsonl'} held 2 steps:\n{h.logs(logs)}")
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # SLURM pre-emption reaches ranks at different times
    assert h.wait_ranks(procs, logs, timeout=120) == [0, 0], h.logs(logs)
    status = json.loads((out / "status.json").read_text())
    assert not status["finished"] and 2 <= status["step"] < 1000
    tag = latest_complete(out / "checkpoints")
    assert tag is not None and tag.name == f"global_step{status['step']}"
    assert {p.name for p in tag.glob("rank_state_*.pt")} == {"rank_state_0.pt", "rank_state_1.pt"}
    _, run = mlflow_run(out)
    assert run.info.status == "KILLED"


def test_single_process_with_unreachable_tracking_server_keeps_training(demo_shards, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    env = h.job_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="2")
    cmd = [sys.executable, str(h.PRETRAIN), *h.pretrain_args(demo_shards, out, "--steps", "3", "--num-workers", "0",
                                                            "--tracking-uri", f"http://127.0.0.1:{port}")]  # fmt: skip
    result = subprocess.run(cmd, env=env, cwd=h.REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "single process (no launcher)" in result.stdout
    assert result.stderr.count("WARNING: MLflow tracking at http://127.0.0.1") == 1
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
    assert not (out / "mlflow.db").exists()
    assert (out / "export" / "model.safetensors").is_file()
    assert torch.isfinite(torch.tensor([r["train/loss"] for r in rows if "train/loss" in r])).all()


def metric_rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_diverging_run_exits_3_before_the_bad_update_and_saves_nothing_after_it(demo_shards, tmp_path):
    import re

    out = tmp_path / "run"
    # lr 1e30: the first update throws the weights to ~1e30, and the next forward pass overflows fp32.
    args = h.pretrain_args(demo_shards, out, "--steps", "6", "--num-workers", "0", "--lr", "1e30",
                           "--save-every", "1", "--keep-last", "100", "--no-export")  # fmt: skip
    result = subprocess.run([sys.executable, str(h.PRETRAIN), *args], env=h.job_env(), cwd=h.REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    found = re.search(r"\[ctal-ds\] training stopped: non-finite .* at step (\d+) \(lr ", result.stderr)
    assert found, result.stderr[-3000:]
    assert "the step was not applied and nothing was saved" in result.stderr
    bad_step = int(found.group(1))
    # Every step before it was saved (--save-every 1); the diverged step was not.
    tags = sorted(int(p.name.removeprefix("global_step")) for p in (out / "checkpoints").glob("global_step*"))
    assert bad_step >= 2 and tags == list(range(1, bad_step)), (bad_step, tags)
    assert latest_complete(out / "checkpoints").name == f"global_step{bad_step - 1}"
    assert max(r["step"] for r in metric_rows(out) if "train/loss" in r) == bad_step - 1
    _, run = mlflow_run(out)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"].startswith("non-finite ") and f"at step {bad_step}" in run.data.tags["failure"]


def test_a_time_limit_on_one_rank_stops_both_at_one_step_boundary_with_a_checkpoint_and_exit_0(demo_shards, tmp_path):
    out, logs = tmp_path / "run", tmp_path / "logs"
    args = h.pretrain_args(demo_shards, out, "--steps", "6", "--save-every", "100", "--no-export")
    # Ranks reach their deadlines at different moments; here rank 1's has passed at its
    # first step boundary (a limit of 0 minutes) and rank 0 has none.
    procs = h.start_ranks(args, 2, logs, rank_args={1: ["--time-limit-min", "0"]})
    assert h.wait_ranks(procs, logs) == [0, 0], h.logs(logs)
    status = json.loads((out / "status.json").read_text())
    assert status == {"step": 1, "finished": False, "reason": "--time-limit-min reached"}
    assert "[ctal-ds] --time-limit-min reached at step 1" in (logs / "rank0.log").read_text()
    tag = latest_complete(out / "checkpoints")
    assert tag is not None and tag.name == "global_step1"
    assert sorted(p.name for p in (out / "checkpoints").glob("global_step*")) == ["global_step1"]
    assert {p.name for p in tag.glob("rank_state_*.pt")} == {"rank_state_0.pt", "rank_state_1.pt"}
    assert verify_tag(tag) == []
    assert [r["step"] for r in metric_rows(out) if "train/loss" in r] == [1]
    _, run = mlflow_run(out)
    assert run.info.status == "KILLED"


def test_exit_and_resume_with_evaluation_on_equals_an_uninterrupted_run(demo_shards, tmp_path):
    run = dict(env=h.job_env(), cwd=h.REPO, capture_output=True, text=True, timeout=300)
    settings = ("--steps", "6", "--eval-every", "2", "--save-every", "100", "--no-export")
    full = tmp_path / "full"
    done = subprocess.run([sys.executable, str(h.PRETRAIN), *h.pretrain_args(demo_shards, full, *settings)], **run)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # Stopped after step 3 (between evaluations) and after step 4 (evaluated, then saved).
    cut = tmp_path / "cut"
    for stop_at in ("3", "4", None):
        extra = ("--exit-at-step", stop_at) if stop_at else ()
        done = subprocess.run([sys.executable, str(h.PRETRAIN), *h.pretrain_args(demo_shards, cut, *settings, *extra)],
                              **run)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((cut / "status.json").read_text())["finished"]

    a = consolidated_state_dict(latest_complete(full / "checkpoints"))
    b = consolidated_state_dict(latest_complete(cut / "checkpoints"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    valid = lambda rows: [(r["step"], r["valid/loss"]) for r in rows if "valid/loss" in r]  # noqa: E731
    assert [s for s, _ in valid(metric_rows(cut))] == [2, 4, 6]  # each evaluation once, none repeated on resume
    assert dict(valid(metric_rows(cut))) == pytest.approx(dict(valid(metric_rows(full))), abs=1e-6)
    loss = lambda rows: {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}  # noqa: E731
    assert loss(metric_rows(cut)) == pytest.approx(loss(metric_rows(full)), abs=1e-5)
