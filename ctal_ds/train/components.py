"""Builders of the pre-training components from a `RunConfig`.

Each returns one piece `launch/pretrain.py` wires together: the model sized to the
shards, the per-rank data streams, the FLOP counter, and what a checkpoint and the
tracking run carry besides the engine.
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ctal_ds.model import CTALConfig, CTALForPretraining
from ctal_ds.model.flops import text_layer_flops, training_flops
from ctal_ds.train.checkpoint import Checkpointer
from ctal_ds.train.config import RunConfig, flatten
from ctal_ds.train.engine import build_engine
from ctal_ds.train.health import HealthMonitor, min_loss_scale
from ctal_ds.train.stop import StopRequest
from ctal_ds.train.task import PretrainTask
from ctal_ds.train.tracking import NullTracker, Tracker
from ctal_ds.train.trainer import Trainer

IGNORE_INDEX = -100


def read_manifest(shards: Path) -> dict[str, Any]:
    return json.loads((Path(shards) / "manifest.json").read_text())


def longest_frames(manifest: dict[str, Any]) -> int:
    """Frames of the longest utterance the shard builder admits (its max_duration_s)."""
    from ctal_ds.data.features import FeatureConfig

    features = FeatureConfig.from_dict(manifest["features"])
    return features.n_frames(int(features.max_duration_s * features.sample_rate))


def model_config(cfg: RunConfig, manifest: dict[str, Any]) -> CTALConfig:
    """The preset, widened where the shards need it, then the explicit overrides.

    The vocabulary comes from the shards' tokenizer; the position tables must cover
    the longest utterance the shard builder admits (max_duration_s) and its token
    limit, or a long utterance would stop the run hours in.
    """
    preset = CTALConfig.preset(cfg.model.preset)
    longest = longest_frames(manifest)
    fitted = {
        "vocab_size": manifest["tokenizer"]["vocab_size"],
        "max_frames": max(preset.max_frames, longest),
        "max_tokens": max(preset.max_tokens, manifest.get("shard_config", {}).get("max_tokens", 0)),
    }
    return CTALConfig.preset(cfg.model.preset, **{**fitted, **cfg.model.overrides})


def build_model(cfg: RunConfig, manifest: dict[str, Any]) -> CTALForPretraining:
    if cfg.model.init_from is not None:
        # Weights (and sizes) of an exported model, e.g. another run's export, on any
        # world size (cli.validate checked they fit the shards); the heads switched on
        # are this run's.
        model = CTALForPretraining.from_pretrained(cfg.model.init_from)
        if (model.use_mlm, model.use_mcam) != (cfg.model.use_mlm, cfg.model.use_mcam):
            fresh = CTALForPretraining(model.config, cfg.model.use_mlm, cfg.model.use_mcam)
            fresh.load_state_dict(model.state_dict(), strict=False)
            model = fresh
        return model
    return CTALForPretraining(model_config(cfg, manifest), cfg.model.use_mlm, cfg.model.use_mcam)


def batch_flops_fn(config: CTALConfig, use_mlm: bool, use_mcam: bool) -> Callable[[dict[str, Any]], float]:
    """Training FLOPs of a batch (ctal_ds.model.flops), counting only the streams that run."""

    def flops(batch: dict[str, Any]) -> float:
        text = batch["text_mask"].sum(1).tolist()
        mlm = int((batch["mlm_labels"] != IGNORE_INDEX).sum()) if use_mlm else 0
        if not use_mcam:
            # Without MCAM the audio stream is not run at all.
            d, v = config.hidden_size, config.vocab_size
            forward = sum(config.num_text_layers * text_layer_flops(config, n) for n in text)
            return 3.0 * (forward + mlm * (2 * d * d + 2 * d * v))
        audio = batch["audio_mask"].sum(1).tolist()
        return float(training_flops(config, text, audio, mlm, int(batch["mcam_mask"].sum())))

    return flops


def _collator(cfg: RunConfig, vocab_size: int):
    from ctal_ds.data.collate import PretrainCollator
    from ctal_ds.data.masking import MASK_ID, PAD_ID

    return PretrainCollator(
        pad_id=PAD_ID, mask_id=MASK_ID, vocab_size=vocab_size, seed=cfg.seed,
        mlm=cfg.model.use_mlm, mcam=cfg.model.use_mcam,
    )  # fmt: skip


def _loader_config(cfg: RunConfig, micro: int, vocab_size: int, num_workers: int):
    from ctal_ds.data.loader import BatchConfig, LoaderConfig, SampleSpec

    return LoaderConfig(
        batch=BatchConfig(max_frames_per_batch=cfg.data.max_frames_per_batch, max_batch_size=micro),
        sample=SampleSpec(feat_dim=160, vocab_size=vocab_size),
        num_workers=num_workers,
        seed=cfg.seed,
    )


def build_train_stream(cfg: RunConfig, micro: int, vocab_size: int, rank: int, world: int):
    """This rank's endless, resumable stream; the micro batch size caps utterances per batch."""
    from ctal_ds.data.loader import build_pretrain_loader

    config = _loader_config(cfg, micro, vocab_size, cfg.data.num_workers)
    return build_pretrain_loader(cfg.data.train_shards, config, _collator(cfg, vocab_size), rank, world)


def build_valid_stream(
    cfg: RunConfig, micro: int, vocab_size: int, rank: int, world: int
) -> Callable[[], Iterator] | None:
    """A factory of validation passes: the same batches (and masks) every time."""
    from ctal_ds.data.loader import build_eval_loader

    if cfg.data.valid_shards is None:
        return None
    n_shards = len(read_manifest(cfg.data.valid_shards)["shards"])
    config = _loader_config(cfg, micro, vocab_size, min(cfg.data.num_workers, n_shards))
    loader = build_eval_loader(cfg.data.valid_shards, config, _collator(cfg, vocab_size), rank, world)
    return lambda: iter(loader)


def model_meta(model: Any) -> dict[str, Any]:
    """What export needs to rebuild the model: the `save_pretrained` config fields."""
    return {"architecture": type(model).__name__, "model": model.config.to_dict(), "head": model.head_config()}


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version_or_absent(package: str) -> str:
    # Without MLflow, Tracker.start warns and the run logs to metrics.jsonl only.
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def tracking_params(cfg: RunConfig, ds_config: dict[str, Any], model: Any, plan: Any) -> dict[str, Any]:
    import deepspeed
    import numpy

    from ctal_ds.model import count_parameters

    params = {f"run.{k}": v for k, v in flatten(cfg.to_dict()).items()}
    params.update({f"ds.{k}": v for k, v in flatten(ds_config).items()})
    params.update({f"model.{k}": v for k, v in model.config.to_dict().items()})
    params.update(
        {
            "model.parameters": count_parameters(model),
            "batch.micro": plan.micro,
            "batch.accum": plan.accum,
            "batch.world": plan.world,
            "batch.global": plan.global_batch,
            "batch.world_source": plan.world_source,
            "version.git_commit": git_commit(),
            "version.python": platform.python_version(),
            "version.torch": torch.__version__,
            "version.deepspeed": deepspeed.__version__,
            "version.mlflow": _version_or_absent("mlflow"),
            "version.numpy": numpy.__version__,
        }
    )
    return params


def run_tags(info: Any, resume_dir: Path | None, step: int) -> dict[str, str]:
    import os
    import socket

    tags = {"world_size": str(info.world_size), "launcher": info.source, "host": socket.gethostname()}
    if "SLURM_JOB_ID" in os.environ:
        tags["slurm.job_id"] = os.environ["SLURM_JOB_ID"]
        tags["slurm.restart_count"] = os.environ.get("SLURM_RESTART_COUNT", "0")
    if resume_dir is not None:
        tags["resumed_from"] = str(resume_dir)
        tags["resumed_at_step"] = str(step)
    return tags


def log_start_artifacts(tracker: Any, checkpointer: Any) -> None:
    """The run's configs and tokenizer, uploaded at start so a crashed run has them too."""
    config_dir = Path(tracker.out) / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, value in checkpointer.side_json.items():
        (config_dir / name).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    tracker.log_artifact(config_dir, "config")
    for src in checkpointer.side_files.values():
        tracker.log_artifact(src, "tokenizer")


def finish_run(cfg: RunConfig, tracker: Any, outcome: Any, checkpointer: Any) -> None:
    """Rank 0, after the last checkpoint: export, plots, close the tracking run."""
    from ctal_ds.train.checkpoint import latest_complete
    from ctal_ds.train.export import export_checkpoint
    from ctal_ds.train.tracking import plot_metrics

    if outcome.finished and cfg.loop.export_final:
        export_dir = export_checkpoint(
            latest_complete(checkpointer.root), cfg.out / "export", cfg.checkpoint.verify_hash
        )
        print(f"[ctal-ds] exported weights to {export_dir}", flush=True)
        tracker.log_artifact(export_dir, "model")
        tracker.log_model(export_dir)
    if tracker.jsonl.is_file():
        keys = ("train/loss", "train/mlm_loss", "train/mcam_loss", "valid/loss", "train/lr", "perf/samples_per_s")
        png = plot_metrics(tracker.jsonl, cfg.out / "plots" / "training.png", keys)
        if png is not None:
            tracker.log_artifact(png, "plots")
    tracker.finish("FINISHED" if outcome.finished else "KILLED")


def build_trainer(cfg: RunConfig, info: Any, ds: dict[str, Any], plan: Any, watchdog: Any = None) -> Trainer:
    """Model, engine, data, checkpointing, tracking and stopping rules, wired together;
    `watchdog` (ctal_ds/train/watchdog.py) is told of the trainer's progress."""
    manifest = read_manifest(cfg.data.train_shards)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, manifest)
    engine = build_engine(model, ds, cfg.seed, info.rank, cfg.loop.steps)
    vocab = manifest["tokenizer"]["vocab_size"]
    stop = StopRequest(cfg.loop.exit_at_step, cfg.loop.time_limit_min)
    stop.install()
    checkpointer = Checkpointer(
        cfg.checkpoint_dir, info.rank, info.world_size, cfg.checkpoint.keep_last, torch.distributed.barrier,
        side_files={"tokenizer.json": cfg.data.train_shards / "tokenizer.json"},
        side_json={"model_config.json": model_meta(model), "feature_config.json": manifest["features"],
                   "run_config.json": cfg.to_dict(), "ds_config.json": ds},
    )  # fmt: skip
    task = PretrainTask(
        batch_flops_fn(model.config, cfg.model.use_mlm, cfg.model.use_mcam),
        build_valid_stream(cfg, plan.micro, vocab, info.rank, info.world_size),
        cfg.loop.eval_batches,
    )
    return Trainer(
        cfg, engine, build_train_stream(cfg, plan.micro, vocab, info.rank, info.world_size), checkpointer,
        Tracker(cfg.tracking, cfg.out) if info.is_main else NullTracker(),
        HealthMonitor(min_loss_scale(ds), cfg.health.max_skips_at_min_scale), stop, info.rank, info.world_size,
        task=task, watchdog=watchdog,
    )  # fmt: skip
