"""The configuration of one fine-tune: a tree of typed dataclasses, like pre-training's.

The engine part is pre-training's own (``ctal_ds.train.config``): the DeepSpeed JSON
owns ZeRO stage, precision and optimizer; ``OptimOverrides`` change lr, batch and
clipping from the command line; ``LoopConfig``, ``CheckpointConfig``,
``TrackingConfig`` and ``HealthConfig`` mean what they mean there. Fine-tuning adds the
task data, the starting point, the head (the ablation switches) and the test protocol.

Defaults follow the paper's fine-tuning (section 4.2.1): AdamW at lr 1e-5, batch 4,
20 epochs, cosine annealing over the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctal_ds.finetune.model import HeadSettings
from ctal_ds.finetune.reports.base import ReportSettings
from ctal_ds.train.checkpoint import resume_spec_problem
from ctal_ds.train.config import (
    CheckpointConfig,
    ConfigError,
    HealthConfig,
    LoopConfig,
    OptimOverrides,
    TrackingConfig,
    plain,
)

SCHEDULES = ("cosine", "config")


@dataclass
class TaskDataConfig:
    task: str  # emotion | sentiment | speaker
    shards: Path
    # "all", or one split name / number: 3 and fold3 both name IEMOCAP's third fold.
    fold: str = "all"
    fraction: float = 1.0  # of each training split (nested subsets, data-efficiency curves)
    subset_seed: int = 0
    eval_batch_size: int = 16
    # TaskSpec settings, e.g. {"dev_fraction": 0.1} (see ctal_ds/tasks).
    task_settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class InitConfig:
    # A save_pretrained directory, a ZeRO checkpoint or a pre-training run directory.
    init: Path | None = None
    # Fresh weights: the architecture of `init` when given, else `preset` sized to the shards.
    scratch: bool = False
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """What the run started from, for tracking: a path or ``scratch``."""
        return "scratch" if self.scratch else str(self.init)


@dataclass
class FinetuneConfig:
    out: Path
    deepspeed_config: Path
    data: TaskDataConfig
    init: InitConfig = field(default_factory=InitConfig)
    head: HeadSettings = field(default_factory=HeadSettings)
    # A name grouping runs for comparison (launch/compare.py); derived when empty.
    variant: str = ""
    epochs: int = 20
    # At least this many optimizer steps: a small training set (a low --fraction) gets
    # more epochs instead of a handful of updates. 0: exactly `epochs`.
    min_steps: int = 0
    # cosine: DeepSpeed's WarmupCosineLR spanning the whole run, stepped per optimizer
    # step; config: the JSON's own scheduler section.
    schedule: str = "cosine"
    warmup_min_ratio: float = 0.0
    cos_min_ratio: float = 0.0001
    optim: OptimOverrides = field(default_factory=lambda: OptimOverrides(lr=1e-5))
    # The pre-trained backbone's top layers train at lr * backbone_lr_scale, each layer
    # below at layer_lr_decay times the one above (ctal_ds.finetune.lr_groups); the
    # head at lr. Fresh weights (scratch) train at lr throughout.
    backbone_lr_scale: float = 1.0
    layer_lr_decay: float = 1.0
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(log_every=10, export_final=False))
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(save_every=0, keep_last=1))
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    report: ReportSettings = field(default_factory=ReportSettings)
    seed: int = 1234
    peak_flops: float | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def epochs_for(self, steps_per_epoch: int) -> int:
        """Epochs of the run: ``epochs``, or more to reach ``min_steps``."""
        return max(self.epochs, -(-self.min_steps // steps_per_epoch))

    def default_variant(self) -> str:
        """``pretrained`` or ``scratch``, plus the head switches that differ from CTAL's."""
        parts = ["scratch" if self.init.scratch else "pretrained"]
        if not self.head.fusion:
            parts.append("no_fusion")
        if self.head.orthogonal_weight == 0 and self.head.modality == "both":
            parts.append("no_orth")
        if self.head.modality != "both":
            parts.append(f"{self.head.modality}_only")
        if self.head.probe:
            parts.append("probe")
        return "+".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


def validate(cfg: FinetuneConfig) -> None:
    """Checks that need no compute: fail before DeepSpeed starts anything."""
    from ctal_ds.tasks import TASKS

    if cfg.data.task not in TASKS:
        raise ConfigError(f"--task must be one of {sorted(TASKS)}, got {cfg.data.task!r}")
    if not (cfg.data.shards / "manifest.json").is_file():
        raise ConfigError(f"--shards {cfg.data.shards}: no manifest.json there; build the task shards first")
    if not cfg.deepspeed_config.is_file():
        raise ConfigError(f"--deepspeed_config {cfg.deepspeed_config}: no such file")
    if cfg.init.init is None and not cfg.init.scratch:
        raise ConfigError("give --init (a pre-trained model or checkpoint) or --scratch")
    if cfg.init.init is not None and not cfg.init.init.exists():
        raise ConfigError(f"--init {cfg.init.init}: no such file or directory")
    if not 0.0 < cfg.data.fraction <= 1.0:
        raise ConfigError(f"--fraction must be in (0, 1], got {cfg.data.fraction}")
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.min_steps < 0:
        raise ConfigError(f"--min-steps must be >= 0, got {cfg.min_steps}")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if cfg.backbone_lr_scale <= 0 or cfg.layer_lr_decay <= 0:
        raise ConfigError("--backbone-lr-scale and --layer-lr-decay must be > 0")
    if cfg.head.orthogonal_weight < 0:
        raise ConfigError("--orthogonal-weight must be >= 0")
    if cfg.head.modality not in ("both", "audio", "text"):
        raise ConfigError(f"--modality must be both, audio or text, got {cfg.head.modality!r}")
    if cfg.checkpoint.keep_last < 1:
        raise ConfigError("--keep-last must be at least 1")
    problem = resume_spec_problem(cfg.checkpoint.resume)
    if problem:
        raise ConfigError(problem)
    if cfg.report.trials is not None and not cfg.report.trials.is_file():
        raise ConfigError(f"--trials {cfg.report.trials}: no such file")
    check_splits(cfg)


def check_splits(cfg: FinetuneConfig) -> None:
    """The task's train / dev / test splits of the shards, built as the run builds them: a
    shard set too small for them fails here, naming the setting to change, instead of
    after the process group and the engine have started."""
    from ctal_ds.finetune.data import load_task_samples
    from ctal_ds.tasks import build_task

    task, settings = cfg.data.task, cfg.data.task_settings
    # Cached: the run reads the same samples again without touching the shards.
    records = load_task_samples(cfg.data.shards).records()
    try:
        spec = build_task(task, records, **settings)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--task {task} with --task-setting {settings}: {err}") from None
    try:
        splits = spec.splits(records)
    except ValueError as err:
        fix = _larger_dev_fraction(task, records, settings, spec)
        advice = (
            f"; set --task-setting dev_fraction={fix:g} (the smallest dev share these shards allow), "
            "or build the shards from more data"
            if fix is not None
            else ""
        )
        raise ConfigError(f"--shards {cfg.data.shards}: the {task} task cannot split them: {err}{advice}") from None
    from ctal_ds.finetune.run import choose_splits

    try:
        chosen = choose_splits(splits, cfg.data.fold)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if len(chosen) > 1 and cfg.checkpoint.resume not in ("auto", "none"):
        raise ConfigError(
            f"--resume {cfg.checkpoint.resume}: a checkpoint path belongs to one split; the {task} task "
            f"has {len(chosen)} ({', '.join(s.name for s in chosen)}): add --fold N, or use --resume auto"
        )


def _larger_dev_fraction(task: str, records: list, settings: dict[str, Any], spec: Any) -> float | None:
    """The smallest dev_fraction above the task's own with which its splits can be built,
    if it has one (its dev split is one part in round(1 / dev_fraction), at most 0.5)."""
    from ctal_ds.tasks import build_task

    current = getattr(spec, "dev_fraction", None)
    if current is None:
        return None
    for parts in range(round(1 / current) - 1, 1, -1):
        fraction = float(f"{1 / parts:.3g}")
        try:
            build_task(task, records, **{**settings, "dev_fraction": fraction}).splits(records)
        except ValueError:
            continue
        return fraction
    return None
