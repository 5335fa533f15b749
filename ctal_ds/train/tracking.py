"""Experiment tracking: one MLflow run per job, opened by rank 0, plus a local JSONL.

- The store defaults to an embedded `sqlite:///<out>/mlflow.db` (nothing to start;
  MLflow's file store is deprecated); `MLFLOW_TRACKING_URI` or `--tracking-uri`
  point elsewhere.
- Metrics are buffered and sent with `log_batch` every `flush_every` steps: one
  request per flush, not one per metric per step.
- A resumed job reattaches to the run id kept in the checkpoint, so its step history
  continues in the same run.
- Tracking never stops training: if the server cannot be reached (at start or
  later), one warning is printed and metrics keep going to `<out>/metrics.jsonl`,
  which is written on every log step either way. A resumed job that reattaches sends
  the values of `metrics.jsonl` up to its resume step that the run does not hold, so
  the steps logged while the server was away are not missing from its history.
- Artifacts are small files (configs, tokenizer, plots, exported weights). ZeRO
  shards are never uploaded; their paths and hashes go in as tags.
- An export is also logged as an MLflow pyfunc model (`log_model`), registered under
  `register_model` when that is set.
- MLflow's system metrics (`system/...`) are sampled by a background thread while the
  run is open, where psutil is installed and `system_metrics` is on.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ctal_ds.train.config import TrackingConfig

# MLflow's limits per log_batch call and per param value.
_MAX_METRICS, _MAX_PARAMS, _MAX_PARAM_LEN = 1000, 100, 6000


def default_uri(out: Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


class NullTracker:
    """What ranks other than 0 hold: every call is a no-op."""

    run_id: str | None = None
    active = False

    def start(
        self, run_id: str | None, params: dict[str, Any], tags: dict[str, str], resumed_step: int | None = None
    ) -> str | None:
        return run_id

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def flush(self) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def log_model(self, export_dir: Path) -> Any: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class Tracker(NullTracker):
    def __init__(self, cfg: TrackingConfig, out: Path) -> None:
        self.cfg = cfg
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out / "metrics.jsonl"
        self.uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(self.out)
        self.client: Any = None
        self.run_id: str | None = None
        self._buffer: list[Any] = []
        self._last_flush_step = 0
        self._warned = False
        self._monitor: Any = None

    @property
    def active(self) -> bool:
        return self.client is not None

    def _disable(self, what: str, err: BaseException) -> None:
        if not self._warned:
            self._warned = True
            print(
                f"[ctal-ds] WARNING: MLflow tracking at {self.uri} failed while {what} "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); "
                f"training continues and metrics are logged only to {self.jsonl}",
                file=sys.stderr,
                flush=True,
            )
        self.client = None
        self._buffer.clear()

    def start(
        self, run_id: str | None, params: dict[str, Any], tags: dict[str, str], resumed_step: int | None = None
    ) -> str | None:
        """Open a run, or reattach to `run_id`; then (`resumed_step` given) send what
        `metrics.jsonl` holds up to that step and the run does not (`send_missed`)."""
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Param

            client = MlflowClient(tracking_uri=self.uri)
            reattached = run_id is not None
            if reattached:
                run = client.get_run(run_id)
                client.update_run(run_id, status="RUNNING")
                known = run.data.params
                changed = sorted(k for k, v in params.items() if k in known and known[k] != _param_str(v))
                params = {k: v for k, v in params.items() if k not in known}
                if changed:
                    tags = {**tags, "changed_on_resume": ",".join(changed)[:5000]}
            else:
                run = client.create_run(
                    self._experiment_id(client), run_name=self.cfg.run_name, tags=tags
                )
                run_id = run.info.run_id
            items = [Param(k[:250], _param_str(v)) for k, v in sorted(params.items())]
            for i in range(0, len(items), _MAX_PARAMS):
                client.log_batch(run_id, params=items[i : i + _MAX_PARAMS])
            self.client, self.run_id = client, run_id
            self.set_tags(tags)
            if reattached and resumed_step is not None:
                self.send_missed(resumed_step)
        except Exception as err:  # any failure of the tracking service must not stop training
            self.run_id = run_id
            self._disable("starting the run", err)
            return self.run_id
        self._start_system_metrics(reattached)
        return self.run_id

    def _start_system_metrics(self, resumed: bool) -> None:
        import importlib.util

        if self.client is None or not self.cfg.system_metrics or importlib.util.find_spec("psutil") is None:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=resumed, tracking_uri=self.uri)
            self._monitor.start()
        except Exception as err:  # system metrics are a convenience: never a reason to stop
            self._monitor = None
            print(f"[ctal-ds] WARNING: MLflow system metrics are off: {type(err).__name__}: {err}",
                  file=sys.stderr, flush=True)  # fmt: skip

    def _stop_system_metrics(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                monitor.finish()
            except Exception as err:
                print(f"[ctal-ds] WARNING: stopping MLflow system metrics: {type(err).__name__}: {err}",
                      file=sys.stderr, flush=True)  # fmt: skip

    def send_missed(self, upto_step: int) -> int:
        """Send the values of `metrics.jsonl` of steps up to `upto_step` that the run's
        history lacks (logged while the server could not be reached); returns how many.

        Later steps are left out: the resumed job logs them again. Of a step logged twice
        (a job that went past its last checkpoint, then a resume) the last value counts.
        """
        from mlflow.entities import Metric

        if not self.jsonl.is_file():
            return 0
        values: dict[tuple[str, int], tuple[float, int]] = {}
        for line in self.jsonl.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            step = row.get("step")
            if not isinstance(step, int) or step > upto_step:
                continue
            when = int(float(row.get("time", time.time())) * 1000)
            for key, value in row.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    values[(key, step)] = (float(value), when)
        held = {
            key: {m.step for m in self.client.get_metric_history(self.run_id, key)} for key in {k for k, _ in values}
        }
        missed = [Metric(key, value, when, step) for (key, step), (value, when) in sorted(values.items())
                  if step not in held[key]]  # fmt: skip
        for i in range(0, len(missed), _MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=missed[i : i + _MAX_METRICS])
        if missed:
            steps = sorted({m.step for m in missed})
            print(f"[ctal-ds] sent {len(missed)} values of {len(steps)} steps ({steps[0]}..{steps[-1]}) from "
                  f"{self.jsonl} that run {self.run_id} did not hold", flush=True)  # fmt: skip
        return len(missed)

    def _experiment_id(self, client: Any) -> str:
        experiment = client.get_experiment_by_name(self.cfg.experiment)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            # Beside the database, not in the current directory (MLflow's default), and
            # not in this run's folder either: runs of other folders (fine-tune folds,
            # ablation variants) share the store and its experiments.
            database = Path(self.uri[len("sqlite:///") :])
            location = (database.parent / "mlartifacts").resolve().as_uri()
        return client.create_experiment(self.cfg.experiment, artifact_location=location)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        with self.jsonl.open("a") as f:
            f.write(json.dumps({"step": step, "time": now_ms / 1000, **metrics}) + "\n")
        if self.client is None:
            return
        from mlflow.entities import Metric

        self._buffer.extend(Metric(k, float(v), now_ms, step) for k, v in metrics.items())
        if step - self._last_flush_step >= self.cfg.flush_every:
            self.flush()
            self._last_flush_step = step

    def flush(self) -> None:
        if self.client is None or not self._buffer:
            return
        try:
            for i in range(0, len(self._buffer), _MAX_METRICS):
                self.client.log_batch(self.run_id, metrics=self._buffer[i : i + _MAX_METRICS])
            self._buffer.clear()
        except Exception as err:
            self._disable("logging metrics", err)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.client is None or not tags:
            return
        from mlflow.entities import RunTag

        try:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
        except Exception as err:
            self._disable("setting tags", err)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.client is None:
            return
        try:
            if Path(path).is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as err:
            self._disable(f"uploading {path}", err)

    def log_model(self, export_dir: Path) -> Any:
        """Log ``export_dir`` into the run as a pyfunc model (registered under
        ``register_model`` when set); its ModelInfo, or None where it could not be logged
        (a warning says why; the run goes on)."""
        if self.client is None or not (self.cfg.log_model or self.cfg.register_model):
            return None
        from ctal_ds.model.mlflow_model import log_export

        try:
            info = log_export(export_dir, self.run_id, self.uri, self.cfg.register_model)
        except Exception as err:
            print(f"[ctal-ds] WARNING: logging {export_dir} as an MLflow model into run {self.run_id} at "
                  f"{self.uri} failed: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}",
                  file=sys.stderr, flush=True)  # fmt: skip
            return None
        version = f", registered as {self.cfg.register_model} version {info.registered_model_version}" if (
            self.cfg.register_model) else ""
        print(f"[ctal-ds] logged {export_dir} as MLflow model {info.model_uri}{version}", flush=True)
        return info

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self._stop_system_metrics()
        if self.client is None:
            return
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as err:
            self._disable("closing the run", err)


def _param_str(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:_MAX_PARAM_LEN]


def plot_metrics(jsonl: Path, png: Path, keys: tuple[str, ...]) -> Path | None:
    """Curves of the given metric keys from the JSONL log, one panel each."""
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    keys = tuple(k for k in keys if any(k in r for r in rows))
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.4 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        # A resumed run replays steps after its last checkpoint: keep the newest value.
        points = {r["step"]: r[key] for r in rows if key in r}
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps])
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimizer step")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
