"""Evaluation only: a fine-tuned model on a task's dev or test split.

The model is a ``save_pretrained`` directory of a fine-tuned model (a run's
``<split>/export``), a ZeRO checkpoint of a fine-tune run (consolidated by the export
code first), or a fine-tune split directory (its ``export/``). It runs either as a
plain module in this process (no DeepSpeed) or inside a DeepSpeed engine built from a
JSON (e.g. ZeRO-3 for a model that does not fit one device), on the same batches and
with the same reports as the test step of fine-tuning.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from ctal_ds.finetune.data import load_task_samples, select_split
from ctal_ds.finetune.model import resolve_init
from ctal_ds.finetune.predict import Predictions, predict
from ctal_ds.finetune.reports import Report, ReportSettings, write_test_report
from ctal_ds.finetune.run import choose_splits
from ctal_ds.finetune.task import collator_for
from ctal_ds.model import CTALForSequenceTask
from ctal_ds.model.pretrained import read_pretrained_config
from ctal_ds.tasks import build_task
from ctal_ds.tasks.base import TaskSpec


@dataclasses.dataclass
class EvalConfig:
    task: str
    shards: Path
    model: Path
    out: Path
    fold: str = "all"  # the split whose test part is scored; must name one for IEMOCAP
    part: str = "test"  # test | dev
    eval_batch_size: int = 16
    task_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    report: ReportSettings = dataclasses.field(default_factory=ReportSettings)
    deepspeed_config: Path | None = None  # None: a plain module, no DeepSpeed


def load_task_model(model_dir: Path, spec: TaskSpec) -> CTALForSequenceTask:
    """A fine-tuned model whose head fits ``spec``; a pre-training export is refused
    (its head would be random)."""
    meta = read_pretrained_config(model_dir)
    head = meta.get("head", {})
    if meta["architecture"] != CTALForSequenceTask.__name__:
        raise ValueError(f"{model_dir} holds a {meta['architecture']}, not a fine-tuned CTALForSequenceTask")
    if head.get("task") != spec.kind or head.get("num_labels") != spec.num_labels:
        raise ValueError(
            f"{model_dir} was fine-tuned for {head.get('task')} with {head.get('num_labels')} outputs; "
            f"the {spec.name} task needs {spec.kind} with {spec.num_labels}"
        )
    return CTALForSequenceTask.from_pretrained(model_dir)


def evaluation_engine(model: torch.nn.Module, ds_path: Path, world: int, world_var: str) -> Any:
    """An engine without optimizer: ZeRO and precision as the JSON says."""
    import deepspeed

    from ctal_ds.train import ds_config
    from ctal_ds.train.config import OptimOverrides

    raw = {k: v for k, v in ds_config.load(ds_path).items() if k not in ("optimizer", "scheduler")}
    zero = raw.setdefault("zero_optimization", {})
    if zero.get("stage", 0) in (1, 2):
        # Stages 1-2 partition optimizer state and gradients, which evaluation has none
        # of (DeepSpeed refuses them without an optimizer); stage 3 partitions weights.
        zero["stage"] = 0
    ds_config.resolve_batch(raw, OptimOverrides(), world, world_var, str(ds_path))
    engine, *_ = deepspeed.initialize(model=model, config=raw)
    return engine


def evaluate(cfg: EvalConfig, info: Any) -> tuple[Report, Predictions]:
    data = load_task_samples(cfg.shards)
    records = data.records()
    spec = build_task(cfg.task, records, **cfg.task_settings)
    splits = choose_splits(spec.splits(records), cfg.fold)
    if len(splits) != 1:
        raise ValueError(f"the {spec.name} task has {len(splits)} splits: name the model's with --fold")
    model_dir = cfg.model / "export" if (cfg.model / "export" / "config.json").is_file() else cfg.model
    if info.is_main:
        model_dir = resolve_init(model_dir, cfg.out)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    model_dir = resolve_init(model_dir, cfg.out)
    model = load_task_model(model_dir, spec)
    samples = select_split(data, spec, splits[0]).part(cfg.part)
    labelled = not (cfg.part == "test" and spec.kind == "speaker")
    if cfg.deepspeed_config is not None:
        runner = evaluation_engine(model, cfg.deepspeed_config, info.world_size, info.world_size_var)
        device = runner.device
    else:
        runner, device = model, torch.device("cpu")
    preds = predict(runner, samples, collator_for(spec, labelled), device, cfg.eval_batch_size, info.rank, info.world_size)
    if not info.is_main:
        return Report({}), preds
    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.part == "test":
        metas = {s.meta["id"]: s.meta for s in samples}
        report = write_test_report(spec, preds, metas, cfg.out, cfg.report, f"{spec.name} {splits[0].name}")
    else:
        report = Report(spec.metrics(preds.scores, preds.labels))
    summary = {"model": str(model_dir), "task": spec.name, "split": splits[0].name, "part": cfg.part,
               "metrics": report.metrics, "details": report.details}  # fmt: skip
    (cfg.out / "eval_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return report, preds
