"""MLflow tracking against a real embedded sqlite store, and an unreachable server."""

from __future__ import annotations

import json
import socket

from prerequisites import require_module

from ctal_ds.train.config import TrackingConfig
from ctal_ds.train.tracking import Tracker, default_uri, plot_metrics

mlflow = require_module("mlflow", "a requirement of ctal-ds")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


def test_run_gets_params_batched_metrics_artifacts_and_resumes_into_the_same_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrackingConfig(experiment="exp", run_name="r1", flush_every=2)
    tracker = Tracker(cfg, tmp_path)
    assert tracker.uri == default_uri(tmp_path)
    run_id = tracker.start(None, {"run.lr": 0.1, "ds.zero_optimization.stage": 2, "run.tags": [1, 2]}, {"host": "h"})
    for step in (1, 2, 3):
        tracker.log_metrics(step, {"train/loss": 1.0 / step})
    artifact = tmp_path / "cfg.json"
    artifact.write_text("{}")
    tracker.log_artifact(artifact, "config")
    tracker.finish("KILLED")  # pre-empted

    resumed = Tracker(cfg, tmp_path)
    assert resumed.start(run_id, {"run.lr": 0.1, "run.new": "x", "run.resume": "auto"}, {}) == run_id
    for step in (4, 5):
        resumed.log_metrics(step, {"train/loss": 1.0 / step})
    resumed.finish("FINISHED")

    client = mlflow.MlflowClient(default_uri(tmp_path))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.params["run.lr"] == "0.1" and run.data.params["ds.zero_optimization.stage"] == "2"
    assert run.data.params["run.tags"] == "[1, 2]" and run.data.params["run.new"] == "x"
    assert run.data.tags["host"] == "h"
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert [a.path for a in client.list_artifacts(run_id, "config")] == ["config/cfg.json"]
    # Artifacts sit beside the database, not in the working directory.
    assert (tmp_path / "mlartifacts").is_dir()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]


def test_unreachable_server_warns_once_and_keeps_logging_locally(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = TrackingConfig(uri=f"http://127.0.0.1:{closed_port()}", flush_every=1)
    tracker = Tracker(cfg, tmp_path)
    assert tracker.start(None, {"a": 1}, {}) is None
    assert not tracker.active
    for step in range(1, 4):
        tracker.log_metrics(step, {"train/loss": float(step)})
    tracker.log_artifact(tmp_path / "metrics.jsonl")
    tracker.finish()
    err = capsys.readouterr().err
    assert err.count("WARNING: MLflow tracking at http://127.0.0.1") == 1
    assert "metrics.jsonl" in err
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_plot_keeps_the_newest_value_of_a_replayed_step(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    jsonl = tmp_path / "m.jsonl"
    rows = [{"step": 1, "train/loss": 3.0}, {"step": 2, "train/loss": 2.0}, {"step": 3, "train/loss": 1.0},
            {"step": 2, "train/loss": 2.5}, {"step": 3, "train/loss": 1.5}, {"step": 3, "train/lr": 0.1}]  # fmt: skip
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # What each saved figure shows: per panel, its y label and the (step, value) points of each line.
    saved = []
    real_savefig = Figure.savefig

    def savefig_spy(fig, *args, **kwargs):
        saved.append([(ax.get_ylabel(), [line.get_xydata().tolist() for line in ax.get_lines()]) for ax in fig.axes])
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig_spy)
    png = plot_metrics(jsonl, tmp_path / "p.png", ("train/loss", "absent", "train/lr"))
    assert png == tmp_path / "p.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved == [[("train/loss", [[[1, 3.0], [2, 2.5], [3, 1.5]]]), ("train/lr", [[[3, 0.1]]])]]
    assert plot_metrics(jsonl, tmp_path / "q.png", ("absent",)) is None
    assert len(saved) == 1 and not (tmp_path / "q.png").exists()


def test_without_mlflow_installed_the_run_warns_and_logs_locally(tmp_path, monkeypatch, capsys):
    import sys

    from ctal_ds.train.components import _version_or_absent

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    tracker = Tracker(TrackingConfig(flush_every=1), tmp_path)
    tracker.start(None, {"run.lr": 0.1}, {})
    tracker.log_metrics(1, {"train/loss": 2.0})
    tracker.set_tags({"a": "b"})
    tracker.finish()
    assert not tracker.active
    assert "training continues" in capsys.readouterr().err
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["train/loss"] == 2.0
    assert _version_or_absent("no-such-distribution-ctal-ds") == "not installed"


def test_a_reattached_run_gets_the_metrics_logged_while_the_server_was_away(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    store = TrackingConfig(experiment="exp", uri=default_uri(tmp_path / "store"), flush_every=1)
    first = Tracker(store, tmp_path)
    run_id = first.start(None, {"a": 1}, {})
    for step in (1, 2):
        first.log_metrics(step, {"train/loss": 1.0 / step, "train/lr": 0.1})
    # The server goes away: the next job reattaches to an unreachable server and logs
    # steps 3..5 to metrics.jsonl only; it saved its last checkpoint at step 4.
    away = Tracker(TrackingConfig(experiment="exp", uri=f"http://127.0.0.1:{closed_port()}"), tmp_path)
    assert away.start(run_id, {"a": 1}, {}, resumed_step=2) == run_id and not away.active
    for step in (3, 4, 5):
        away.log_metrics(step, {"train/loss": 1.0 / step, "train/lr": 0.1})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "train/lo')  # cut short by a crash
    capsys.readouterr()

    resumed = Tracker(store, tmp_path)
    assert resumed.start(run_id, {"a": 1}, {}, resumed_step=4) == run_id
    assert f"sent 4 values of 2 steps (3..4) from {tmp_path / 'metrics.jsonl'}" in capsys.readouterr().out
    for step in (5, 6):  # the resumed job replays step 5 after its checkpoint
        resumed.log_metrics(step, {"train/loss": 1.0 / step, "train/lr": 0.1})
    resumed.finish()

    client = mlflow.MlflowClient(store.uri)
    for key, value in (("train/loss", lambda s: 1.0 / s), ("train/lr", lambda s: 0.1)):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(s, value(s)) for s in range(1, 7)], key
    assert client.get_run(run_id).info.status == "FINISHED"
    # Reattaching again sends nothing twice.
    again = Tracker(store, tmp_path)
    again.start(run_id, {"a": 1}, {}, resumed_step=6)
    assert again.send_missed(6) == 0
    assert "sent " not in capsys.readouterr().out
