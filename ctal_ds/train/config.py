"""The run configuration of pre-training: a tree of typed dataclasses.

The DeepSpeed JSON file owns the engine (ZeRO stage, precision, optimizer, schedule);
this tree owns everything around it (data, model size, loop length, checkpoints,
tracking). `OptimOverrides` are the few engine settings a run may change without
editing the JSON; `ds_config.resolve` applies them to the loaded dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctal_ds.dist import COLLECTIVE_TIMEOUT_S, STARTUP_TIMEOUT_S


class ConfigError(ValueError):
    """A setting that cannot work; raised before any compute, saying what to change."""


@dataclass
class DataConfig:
    train_shards: Path
    valid_shards: Path | None = None
    num_workers: int = 2
    # Batches are bucketed by a frame budget, so the DeepSpeed micro batch size is only
    # the largest number of utterances a batch may hold.
    max_frames_per_batch: int = 16000


@dataclass
class ModelConfig:
    preset: str = "tiny"
    # CTALConfig fields to change, e.g. {"hidden_size": 256}.
    overrides: dict[str, Any] = field(default_factory=dict)
    # Ablations of paper table 4.
    use_mlm: bool = True
    use_mcam: bool = True
    # A `save_pretrained` directory to start from (e.g. an export of another run, on
    # any world size); the optimizer starts fresh.
    init_from: Path | None = None


@dataclass
class OptimOverrides:
    """Engine settings that override the DeepSpeed JSON when not None."""

    precision: str | None = None  # fp32 | fp16 | bf16
    micro_batch_size: int | None = None
    grad_accum: int | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    grad_clip: float | None = None
    # Dotted DeepSpeed keys, e.g. ["zero_optimization.stage=3"].
    extra: list[str] = field(default_factory=list)


@dataclass
class LoopConfig:
    # Optimizer steps, the unit of every schedule here; None: the DeepSpeed config's
    # scheduler total_num_steps.
    steps: int | None = None
    log_every: int = 10
    eval_every: int = 0  # 0: no periodic validation
    eval_batches: int = 0  # per rank (every rank yields the same count); 0: the whole set
    # Stop cleanly (checkpoint, exit 0) at this step or after this many minutes, so a
    # schedule can be split across allocations shorter than the run.
    exit_at_step: int | None = None
    time_limit_min: float | None = None
    export_final: bool = True


@dataclass
class CheckpointConfig:
    save_every: int = 1000
    keep_last: int = 3
    resume: str = "auto"  # auto | none | path of a checkpoint tag directory
    # Check the sha256 of every file of the checkpoint resumed from or exported, not only
    # its size; off saves reading a very large checkpoint once more.
    verify_hash: bool = True


@dataclass
class TrackingConfig:
    experiment: str = "ctal-pretrain"
    run_name: str | None = None
    # None: MLFLOW_TRACKING_URI if set, else sqlite:///<out>/mlflow.db.
    uri: str | None = None
    flush_every: int = 50  # optimizer steps between batched metric uploads
    # The export is logged into the run as an MLflow pyfunc model (ctal_ds.model.mlflow_model);
    # with a name, it is also registered as a new version of that registered model.
    register_model: str | None = None
    # False: the export is not logged as a model (unless register_model names one).
    log_model: bool = True
    # MLflow's system metrics (CPU, memory, disk, network; GPU with pynvml) every 10 s,
    # where psutil is installed: one background thread in the process that tracks.
    system_metrics: bool = True


@dataclass
class HealthConfig:
    # fp16: stop when this many consecutive steps were skipped at min_loss_scale.
    max_skips_at_min_scale: int = 3


@dataclass
class TimeoutConfig:
    """Limits of the process group (ctal_ds/dist.py), in seconds."""

    # Rendezvous and the first collective (the rank map): ranks may start minutes apart.
    startup_s: float = STARTUP_TIMEOUT_S
    # Every later collective, in every group (DeepSpeed's own groups included).
    collective_s: float = COLLECTIVE_TIMEOUT_S


@dataclass
class WatchdogConfig:
    """Limits of the per-rank hang watchdog (ctal_ds/train/watchdog.py), in seconds."""

    factor: float = 10.0  # limit = factor x median step time; 0: no watchdog
    floor_s: float = 120.0  # the step limit is never below this
    # Until a step time is known (engine build, resume, loader start, the first two
    # steps) and for each evaluation and checkpoint.
    startup_s: float = 1800.0
    window: int = 50  # recent step times the median is taken over

    @property
    def enabled(self) -> bool:
        return self.factor > 0


@dataclass
class RunConfig:
    out: Path
    deepspeed_config: Path
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimOverrides = field(default_factory=OptimOverrides)
    loop: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    seed: int = 1234
    # Peak FLOP/s of one device for utilisation (MFU); None: not reported.
    peak_flops: float | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


def plain(value: Any) -> Any:
    """A config tree as JSON-ready values (paths as strings, tuples as lists)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
