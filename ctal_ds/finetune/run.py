"""Fine-tune runs: one engine run per split (IEMOCAP fold), through pre-training's engine path.

Per split, the DeepSpeed config is resolved by pre-training's resolver, the engine
built by ``ctal_ds.train.engine.build_engine``, and the loop, checkpoints (complete
markers, ``--resume auto``), health checks, stop requests and MLflow tracking are
pre-training's ``Trainer`` with a ``FinetuneTask`` plugged in. Afterwards the weights
selected on dev are evaluated on test, once.

On disk, ``<out>/`` holds ``mlflow.db`` (unless another store is named), ``results.json``
and per split ``<out>/<split>/``: ``checkpoints/``, ``selection/step<N>/`` (the best
weights while training), ``export/`` (the selected model, loadable without DeepSpeed),
``results.json``, ``metrics.jsonl`` and the test report's files. A split whose
``results.json`` is there is done: ``--resume auto`` skips it.

Several fine-tunes can share one process (``launch/ablate.py``): the process group
is started once, every run builds its own engine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ctal_ds.finetune import ds as finetune_ds
from ctal_ds.finetune.batches import EpochPlan
from ctal_ds.finetune.config import FinetuneConfig
from ctal_ds.finetune.data import TaskSamples, load_task_samples, select_split
from ctal_ds.finetune.lr_groups import param_groups
from ctal_ds.finetune.model import build_task_model, check_vocabulary, resolve_init
from ctal_ds.finetune.reports import Report, emotion_summary
from ctal_ds.finetune.task import FinetuneTask
from ctal_ds.tasks import build_task
from ctal_ds.tasks.base import Split, TaskSpec
from ctal_ds.train import ds_config
from ctal_ds.train.checkpoint import Checkpointer, agree_on_resume, is_universal
from ctal_ds.train.components import model_meta
from ctal_ds.train.config import ConfigError
from ctal_ds.train.engine import build_engine, start_run
from ctal_ds.train.health import HealthMonitor, TrainingDiverged, min_loss_scale
from ctal_ds.train.stop import StopRequest
from ctal_ds.train.tracking import NullTracker, Tracker, default_uri, plot_metrics
from ctal_ds.train.trainer import Trainer

RESULTS = "results.json"


@dataclasses.dataclass
class SplitResult:
    split: str
    out: Path
    finished: bool
    metrics: dict[str, float]  # test metrics of the selected weights
    selection: dict[str, Any]  # metric, best step, best dev value
    details: dict[str, Any]
    run_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "out": str(self.out)}


@dataclasses.dataclass
class FinetuneResult:
    task: str
    variant: str
    init: str
    fraction: float
    out: Path
    splits: list[SplitResult]
    metrics: dict[str, float]  # the reported numbers: one split's, or the mean over folds
    run_id: str | None  # the run holding `metrics`

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.splits)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(out=str(self.out), splits=[s.to_dict() for s in self.splits])
        return d


def choose_splits(splits: list[Split], fold: str) -> list[Split]:
    if fold == "all":
        return splits
    wanted = {fold, f"fold{fold}"}
    chosen = [s for s in splits if s.name in wanted]
    if not chosen:
        raise ValueError(f"--fold {fold}: no such split; the task has {[s.name for s in splits]}")
    return chosen


def run_name(cfg: FinetuneConfig, variant: str, split: str) -> str:
    """A name that tells the runs of one experiment apart in the MLflow UI:
    ``emotion-pretrained-fold1-f0.1-seed1235``; ``--run-name`` replaces the task-variant
    part. ``split`` is ``all`` for the run holding the folds' aggregate."""
    parts = [cfg.tracking.run_name or f"{cfg.data.task}-{variant}", split]
    if cfg.data.fraction != 1.0:
        parts.append(f"f{cfg.data.fraction:g}")
    parts.append(f"seed{cfg.seed}")
    return "-".join(parts)


def run_identity(cfg: FinetuneConfig, variant: str, split: str, role: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Tags for grouping in the tracking store (launch/compare.py) and the matching params."""
    tags = {
        "task": cfg.data.task, "variant": variant, "init": cfg.init.label, "fold": split,
        "fraction": f"{cfg.data.fraction:g}", "seed": str(cfg.seed), "role": role,
    }  # fmt: skip
    return tags, {f"finetune.{k}": v for k, v in tags.items() if k != "role"}


def finetune(cfg: FinetuneConfig, info: Any, stop: StopRequest | None = None) -> FinetuneResult:
    """Fine-tune and test every chosen split of ``cfg``; the process group must be up."""
    cfg = _with_defaults(cfg)
    variant = cfg.variant or cfg.default_variant()
    summary_file = cfg.out / RESULTS
    if cfg.checkpoint.resume == "auto" and summary_file.is_file():
        return _read_result(summary_file)
    data = load_task_samples(cfg.data.shards)
    records = data.records()
    spec = build_task(cfg.data.task, records, **cfg.data.task_settings)
    splits = choose_splits(spec.splits(records), cfg.data.fold)
    if len(splits) > 1 and cfg.checkpoint.resume not in ("auto", "none"):
        raise ValueError("--resume with a checkpoint path needs one split (--fold N)")
    init_dir = _prepare_init(cfg, data, info)
    stop = stop or StopRequest()
    role = "fold" if len(splits) > 1 else "result"
    results = []
    for split in splits:
        if stop.signal_name is not None:
            break  # asked to stop while the previous split was being tested
        result = finetune_split(cfg, spec, data, split, init_dir, info, stop, variant, role)
        results.append(result)
        if not result.finished:
            break
    finished = len(results) == len(splits) and all(r.finished for r in results)
    metrics, run_id = (results[0].metrics, results[0].run_id) if role == "result" and results else ({}, None)
    if finished and role == "fold" and info.is_main:
        metrics, run_id = _summarize_folds(cfg, spec, variant, results, info)
    outcome = FinetuneResult(cfg.data.task, variant, cfg.init.label, cfg.data.fraction, cfg.out, results, metrics, run_id)
    if finished and info.is_main:
        summary_file.write_text(json.dumps(outcome.to_dict(), indent=2) + "\n")
    return outcome


def _with_defaults(cfg: FinetuneConfig) -> FinetuneConfig:
    """One tracking store per fine-tune (all its splits), one experiment per task."""
    tracking = dataclasses.replace(
        cfg.tracking,
        experiment=cfg.tracking.experiment or f"ctal-{cfg.data.task}",
        uri=cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(cfg.out),
    )
    return dataclasses.replace(cfg, tracking=tracking)


def _prepare_init(cfg: FinetuneConfig, data: TaskSamples, info: Any) -> Path | None:
    """The model directory to start from; rank 0 consolidates a checkpoint, others wait."""
    if cfg.init.init is None:
        return None
    if info.is_main:
        resolve_init(cfg.init.init, cfg.out)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    init_dir = resolve_init(cfg.init.init, cfg.out)
    # Every rank checks, so that a mismatch stops them all alike.
    check_vocabulary(init_dir, data.tokenizer, data.vocab_size)
    return init_dir


def finetune_split(
    cfg: FinetuneConfig,
    spec: TaskSpec,
    data: TaskSamples,
    split: Split,
    init_dir: Path | None,
    info: Any,
    stop: StopRequest,
    variant: str,
    role: str,
) -> SplitResult:
    out = cfg.out / split.name
    done = out / RESULTS
    if cfg.checkpoint.resume == "auto" and done.is_file():
        saved = json.loads(done.read_text())
        return SplitResult(**{**saved, "out": Path(saved["out"])})
    from deepspeed.accelerator import get_accelerator

    samples = select_split(data, spec, split, cfg.data.fraction, cfg.data.subset_seed)
    longest = max(s.n_frames for s in data.samples.values())
    model = build_task_model(
        spec, cfg.head, init_dir, cfg.init.scratch, cfg.seed, cfg.init.preset,
        {"vocab_size": data.vocab_size, "longest_frames": longest,
         "longest_tokens": max(len(s.tokens) for s in data.samples.values())}, cfg.init.overrides,
    )  # fmt: skip
    raw = ds_config.load(cfg.deepspeed_config)
    plan = finetune_ds.batch_plan(raw, cfg, info.world_size, info.world_size_var)
    task = FinetuneTask(
        spec, samples, model, EpochPlan(plan.micro, plan.accum, plan.world, cfg.seed), out, info.rank,
        info.world_size, cfg.data.eval_batch_size, cfg.report, data.tokenizer, data.manifest.get("features"),
    )  # fmt: skip
    epochs = cfg.epochs_for(task.steps_per_epoch)
    steps = epochs * task.steps_per_epoch
    accel = get_accelerator()
    ds, plan, notes = finetune_ds.resolve(
        raw, cfg, steps, info.world_size, info.world_size_var, accel.device_name(), accel.is_fp16_supported()
    )
    split_cfg = dataclasses.replace(
        cfg, out=out, tracking=dataclasses.replace(cfg.tracking, run_name=run_name(cfg, variant, split.name)),
        loop=dataclasses.replace(cfg.loop, steps=steps, eval_every=task.steps_per_epoch),
        checkpoint=dataclasses.replace(cfg.checkpoint, save_every=cfg.checkpoint.save_every or _save_interval(task.steps_per_epoch)),
    )  # fmt: skip
    if info.is_main:
        print(f"[ctal-ds] {spec.name} {split.name} ({variant}): {len(samples.train)} train / {len(samples.dev)} dev / "
              f"{len(samples.test)} test utterances, {epochs} epochs x {task.steps_per_epoch} steps", flush=True)  # fmt: skip
        print("\n".join(f"[ctal-ds] {note}" for note in notes), flush=True)
    resume = agree_on_resume(cfg.checkpoint.resume, split_cfg.checkpoint_dir, cfg.checkpoint.verify_hash)
    resume_dir = resume.tag_dir
    if resume_dir is not None and is_universal(resume_dir):
        ds.setdefault("checkpoint", {})["load_universal"] = True
    groups = _param_groups(cfg, model, ds)
    if info.is_main and not isinstance(groups[0], torch.nn.Parameter):
        rates = ", ".join(f"{g['lr']:.3g} ({len(g['params'])})" for g in groups)
        print(f"[ctal-ds] learning rates (parameter tensors): {rates}", flush=True)
    engine = build_engine(model, ds, cfg.seed, info.rank, steps, groups)
    checkpointer = Checkpointer(
        split_cfg.checkpoint_dir, info.rank, info.world_size, cfg.checkpoint.keep_last, torch.distributed.barrier,
        side_files={"tokenizer.json": data.tokenizer},
        side_json={"model_config.json": model_meta(model), "feature_config.json": data.manifest["features"],
                   "run_config.json": split_cfg.to_dict(), "ds_config.json": ds},
    )  # fmt: skip
    tracker = Tracker(split_cfg.tracking, out) if info.is_main else NullTracker()
    trainer = Trainer(
        split_cfg, engine, task.train_stream(), checkpointer, tracker,
        HealthMonitor(min_loss_scale(ds), cfg.health.max_skips_at_min_scale), stop, info.rank, info.world_size,
        task=task,
    )  # fmt: skip
    tags, params = run_identity(cfg, variant, split.name, role)
    params.update({"finetune.steps_per_epoch": task.steps_per_epoch, "finetune.train_utterances": len(samples.train)})
    run_id = start_run(trainer, split_cfg, info, ds, plan, resume_dir, params, {**tags, **resume.tracking_tags()})
    try:
        outcome = trainer.train()
    except TrainingDiverged as err:  # raised on every rank alike; the caller reports it
        tracker.set_tags({"failure": str(err)[:5000]})
        tracker.finish("FAILED")
        raise
    if not outcome.finished:
        tracker.finish("KILLED")
        return SplitResult(split.name, out, False, {}, task.selection.summary(), {"reason": outcome.reason}, run_id)
    report, _ = task.test(engine, title=f"{spec.name} {split.name} ({variant})")
    result = SplitResult(split.name, out, True, report.metrics, task.selection.summary(), report.details, run_id)
    if info.is_main:
        _finish_split(task, tracker, result, report, trainer.step)
    torch.distributed.barrier()
    return result


def _param_groups(cfg: FinetuneConfig, model: torch.nn.Module, ds: dict[str, Any]) -> list:
    """Lower rates for a pre-trained backbone; fresh weights train at one rate."""
    if cfg.init.scratch or (cfg.backbone_lr_scale == 1.0 and cfg.layer_lr_decay == 1.0):
        return param_groups(model, 0.0)
    lr = (ds.get("optimizer") or {}).get("params", {}).get("lr")
    if lr is None:
        raise ConfigError(f"{cfg.deepspeed_config}: --backbone-lr-scale / --layer-lr-decay need an optimizer lr")
    return param_groups(model, float(lr), cfg.backbone_lr_scale, cfg.layer_lr_decay)


# Checkpoints of a fine-tune come at epoch ends, but not more often than this many
# steps: a small training set (a low fraction) has epochs of a few steps, and a
# checkpoint per epoch would cost more than the training.
MIN_SAVE_STEPS = 100


def _save_interval(steps_per_epoch: int) -> int:
    return steps_per_epoch * -(-MIN_SAVE_STEPS // steps_per_epoch)


def _finish_split(task: FinetuneTask, tracker: Any, result: SplitResult, report: Report, step: int) -> None:
    export = result.out / "export"
    if export.exists():
        shutil.rmtree(export)
    shutil.copytree(task.selection.best_dir(), export)
    tracker.log_metrics(step, {f"test/{k}": float(v) for k, v in report.metrics.items()})
    tracker.set_tags({"selected_step": str(result.selection["best_step"]), "export": str(export.resolve())})
    (result.out / RESULTS).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    metric = result.selection["metric"]
    curves = ("train/loss", "train/task_loss", "train/orth_loss", f"dev/{metric}", "train/lr")
    png = plot_metrics(tracker.jsonl, result.out / "training.png", curves)
    for path in [*report.artifacts, result.out / RESULTS, *([png] if png else [])]:
        tracker.log_artifact(path, "results")
    tracker.log_artifact(export, "model")
    tracker.log_model(export)
    tracker.finish("FINISHED")


def _summarize_folds(
    cfg: FinetuneConfig, spec: TaskSpec, variant: str, results: list[SplitResult], info: Any
) -> tuple[dict[str, float], str | None]:
    """The paper's numbers for a cross-validated task: means over folds, in a run of their own."""
    fold_reports = [Report(r.metrics, details=r.details) for r in results]
    if spec.name == "emotion":
        summary = emotion_summary(fold_reports, cfg.out, title=f"emotion, all folds ({variant})")
    else:
        from ctal_ds.tasks.emotion import aggregate_folds

        summary = Report(aggregate_folds([r.metrics for r in fold_reports]))
    # `<metric>` is the mean over folds, as reported; `<metric>_std` its spread.
    metrics = {k[: -len("_mean")] if k.endswith("_mean") else k: v for k, v in summary.metrics.items()}
    tags, params = run_identity(cfg, variant, "all", "result")
    tracker = Tracker(dataclasses.replace(cfg.tracking, run_name=run_name(cfg, variant, "all")), cfg.out)
    run_id = tracker.start(None, {**params, "finetune.folds": len(results)}, {**tags, "folds": str(len(results))})
    tracker.log_metrics(0, {f"test/{k}": float(v) for k, v in metrics.items()})
    for r in results:
        tracker.log_metrics(0, {f"test/{r.split}/{k}": float(v) for k, v in r.metrics.items()})
    for path in summary.artifacts:
        tracker.log_artifact(path, "results")
    tracker.finish("FINISHED")
    return metrics, run_id


def _read_result(path: Path) -> FinetuneResult:
    saved = json.loads(path.read_text())
    splits = [SplitResult(**{**s, "out": Path(s["out"])}) for s in saved.pop("splits")]
    return FinetuneResult(**{**saved, "out": Path(saved["out"]), "splits": splits})
