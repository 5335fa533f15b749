"""Command line of `launch/pretrain.py`: flags -> `RunConfig`.

DeepSpeed's own flags (`--deepspeed_config`, `--local_rank`, ...) come from
`deepspeed.add_config_arguments`, so every DeepSpeed launcher works unchanged.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ctal_ds.train.checkpoint import resume_spec_problem
from ctal_ds.train.config import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    HealthConfig,
    LoopConfig,
    ModelConfig,
    OptimOverrides,
    RunConfig,
    TimeoutConfig,
    TrackingConfig,
    WatchdogConfig,
)


def parse_value(text: str) -> Any:
    """`3` -> 3, `1e-4` -> 1e-4, `true` -> True, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignments(items: list[str], flag: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        values[key.strip()] = parse_value(value)
    return values


def build_parser() -> argparse.ArgumentParser:
    import deepspeed

    p = argparse.ArgumentParser(description="Pre-train CTAL (MLM + MCAM) with DeepSpeed.")
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    data = p.add_argument_group("data")
    data.add_argument("--train-shards", type=Path, required=True)
    data.add_argument("--valid-shards", type=Path)
    data.add_argument("--num-workers", type=int, default=2)
    data.add_argument("--max-frames-per-batch", type=int, default=16000)
    model = p.add_argument_group("model")
    model.add_argument("--preset", default="base",
                       help="CTALConfig preset: base (default: the paper's BASE, N=3) | large (N=6) | tiny (tests)")
    model.add_argument("--model-override", action="append", default=[], metavar="FIELD=VALUE",
                       help="CTALConfig field, e.g. hidden_size=256 (repeatable)")
    model.add_argument("--no-mlm", action="store_true", help="ablation: no MLM loss")
    model.add_argument("--no-mcam", action="store_true", help="ablation: no MCAM loss")
    model.add_argument("--init-from", type=Path, help="save_pretrained directory to start from")
    optim = p.add_argument_group("engine overrides (None keeps the DeepSpeed JSON's value)")
    optim.add_argument("--precision", choices=["fp32", "fp16", "bf16"])
    optim.add_argument("--micro-batch-size", type=int, help="max utterances per micro batch")
    optim.add_argument("--grad-accum", type=int)
    optim.add_argument("--lr", type=float)
    optim.add_argument("--warmup-steps", type=int)
    optim.add_argument("--grad-clip", type=float)
    optim.add_argument("--ds", action="append", default=[], metavar="DOTTED.KEY=VALUE",
                       help="any DeepSpeed config key, e.g. zero_optimization.stage=3")
    loop = p.add_argument_group("loop")
    loop.add_argument("--steps", type=int, help="optimizer steps (default: the schedule's total_num_steps)")
    loop.add_argument("--log-every", type=int, default=10)
    loop.add_argument("--eval-every", type=int, default=0)
    loop.add_argument("--eval-batches", type=int, default=0, help="per rank; 0: whole set")
    loop.add_argument("--exit-at-step", type=int, help="checkpoint and exit 0 at this step")
    loop.add_argument("--time-limit-min", type=float, help="checkpoint and exit 0 after this long")
    loop.add_argument("--no-export", action="store_true", help="skip the final consolidated export")
    loop.add_argument("--seed", type=int, default=1234)
    loop.add_argument("--peak-flops", type=float, help="peak FLOP/s of one device, for MFU")
    loop.add_argument("--max-skips-at-min-scale", type=int, default=3)
    ckpt = p.add_argument_group("checkpoints")
    ckpt.add_argument("--out", type=Path, required=True)
    ckpt.add_argument("--save-every", type=int, default=1000)
    ckpt.add_argument("--keep-last", type=int, default=3)
    ckpt.add_argument("--resume", default="auto",
                      help="auto | none | checkpoint tag directory (global_stepN) | checkpoints root")
    ckpt.add_argument("--no-verify-hash", action="store_true",
                      help="check only the file sizes of the checkpoint resumed from or exported, not their sha256")
    track = p.add_argument_group("tracking")
    track.add_argument("--experiment", default="ctal-pretrain")
    track.add_argument("--run-name")
    track.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite in --out")
    track.add_argument("--flush-every", type=int, default=50)
    track.add_argument("--register-model", metavar="NAME",
                       help="register the final export (logged into the run as an MLflow pyfunc model) "
                            "as a new version of this registered model")
    track.add_argument("--no-log-model", action="store_true",
                       help="do not log the export as an MLflow model; --register-model logs anyway")
    track.add_argument("--no-system-metrics", action="store_true",
                       help="do not sample MLflow system metrics (CPU, memory, disk, network, GPU) every 10 s")
    hang = p.add_argument_group("timeouts and hang watchdog (seconds)")
    hang.add_argument("--dist-init-timeout-s", type=float, default=TimeoutConfig.startup_s,
                      help="process-group rendezvous and rank map (default %(default)g)")
    hang.add_argument("--collective-timeout-s", type=float, default=TimeoutConfig.collective_s,
                      help="every later collective; past it the waiting ranks raise (default %(default)g)")
    hang.add_argument("--watchdog-factor", type=float, default=WatchdogConfig.factor,
                      help="a step may take this many times the median recent step time; 0: no watchdog "
                           "(default %(default)g)")
    hang.add_argument("--watchdog-floor-s", type=float, default=WatchdogConfig.floor_s,
                      help="the step limit is never below this (default %(default)g)")
    hang.add_argument("--watchdog-startup-s", type=float, default=WatchdogConfig.startup_s,
                      help="limit before the first step time is known and for each evaluation and checkpoint "
                           "(default %(default)g)")
    return deepspeed.add_config_arguments(p)


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    if not args.deepspeed_config:
        raise ConfigError("--deepspeed_config is required (see ds_configs/)")
    return RunConfig(
        out=args.out,
        deepspeed_config=Path(args.deepspeed_config),
        data=DataConfig(
            train_shards=args.train_shards,
            valid_shards=args.valid_shards,
            num_workers=args.num_workers,
            max_frames_per_batch=args.max_frames_per_batch,
        ),
        model=ModelConfig(
            preset=args.preset,
            overrides=parse_assignments(args.model_override, "--model-override"),
            use_mlm=not args.no_mlm,
            use_mcam=not args.no_mcam,
            init_from=args.init_from,
        ),
        optim=OptimOverrides(
            precision=args.precision,
            micro_batch_size=args.micro_batch_size,
            grad_accum=args.grad_accum,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            grad_clip=args.grad_clip,
            extra=list(args.ds),
        ),
        loop=LoopConfig(
            steps=args.steps,
            log_every=args.log_every,
            eval_every=args.eval_every,
            eval_batches=args.eval_batches,
            exit_at_step=args.exit_at_step,
            time_limit_min=args.time_limit_min,
            export_final=not args.no_export,
        ),
        checkpoint=CheckpointConfig(
            save_every=args.save_every, keep_last=args.keep_last, resume=args.resume,
            verify_hash=not args.no_verify_hash,
        ),
        tracking=TrackingConfig(
            experiment=args.experiment,
            run_name=args.run_name,
            uri=args.tracking_uri,
            flush_every=args.flush_every,
            register_model=args.register_model,
            log_model=not args.no_log_model,
            system_metrics=not args.no_system_metrics,
        ),
        health=HealthConfig(max_skips_at_min_scale=args.max_skips_at_min_scale),
        timeouts=TimeoutConfig(startup_s=args.dist_init_timeout_s, collective_s=args.collective_timeout_s),
        watchdog=WatchdogConfig(
            factor=args.watchdog_factor, floor_s=args.watchdog_floor_s, startup_s=args.watchdog_startup_s
        ),
        seed=args.seed,
        peak_flops=args.peak_flops,
    )


def validate(cfg: RunConfig) -> None:
    """Checks that need no process group: fail before DeepSpeed starts anything."""
    for name, path in (("--train-shards", cfg.data.train_shards), ("--valid-shards", cfg.data.valid_shards)):
        if path is not None and not (path / "manifest.json").is_file():
            raise ConfigError(f"{name} {path}: no manifest.json there; build shards first")
    if not cfg.deepspeed_config.is_file():
        raise ConfigError(f"--deepspeed_config {cfg.deepspeed_config}: no such file")
    if cfg.loop.eval_every and cfg.data.valid_shards is None:
        raise ConfigError("--eval-every needs --valid-shards")
    if not (cfg.model.use_mlm or cfg.model.use_mcam):
        raise ConfigError("--no-mlm and --no-mcam together leave no loss to train")
    if cfg.loop.steps is not None and cfg.loop.steps <= 0:
        raise ConfigError(f"--steps must be positive, got {cfg.loop.steps}")
    if cfg.checkpoint.keep_last < 1:
        raise ConfigError("--keep-last must be at least 1")
    if cfg.loop.exit_at_step is not None and cfg.loop.exit_at_step <= 0:
        raise ConfigError(f"--exit-at-step must be positive, got {cfg.loop.exit_at_step}")
    # 0 stops at the first step boundary (a checkpoint of step 1).
    if cfg.loop.time_limit_min is not None and not cfg.loop.time_limit_min >= 0:
        raise ConfigError(f"--time-limit-min must be >= 0, got {cfg.loop.time_limit_min:g}")
    problem = resume_spec_problem(cfg.checkpoint.resume)
    if problem:
        raise ConfigError(problem)
    for name, value in (("--dist-init-timeout-s", cfg.timeouts.startup_s),
                        ("--collective-timeout-s", cfg.timeouts.collective_s)):  # fmt: skip
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value:g}")
    if cfg.watchdog.factor < 0:
        raise ConfigError(f"--watchdog-factor must be positive (or 0: no watchdog), got {cfg.watchdog.factor:g}")
    if cfg.watchdog.enabled:
        for name, value in (("--watchdog-floor-s", cfg.watchdog.floor_s),
                            ("--watchdog-startup-s", cfg.watchdog.startup_s)):  # fmt: skip
            if value <= 0:
                raise ConfigError(f"{name} must be positive (--watchdog-factor 0 switches the watchdog off)")
    if cfg.model.init_from is not None:
        _validate_init_from(cfg)


def _validate_init_from(cfg: RunConfig) -> None:
    """An exported model must cover the shards' vocabulary and longest utterance."""
    from ctal_ds.train.components import longest_frames, read_manifest

    init = cfg.model.init_from
    if not (init / "config.json").is_file():
        raise ConfigError(f"--init-from {init}: not a save_pretrained directory")
    if cfg.model.overrides:
        raise ConfigError("--model-override cannot change the size of an --init-from model")
    model = json.loads((init / "config.json").read_text())["model"]
    manifest = read_manifest(cfg.data.train_shards)
    vocab, frames = manifest["tokenizer"]["vocab_size"], longest_frames(manifest)
    if model["vocab_size"] < vocab:
        raise ConfigError(
            f"--init-from {init} has vocab_size {model['vocab_size']}, the shards' tokenizer {vocab}: "
            "use shards built with that model's tokenizer (prepare_data.py --tokenizer)"
        )
    if model["max_frames"] < frames:
        raise ConfigError(
            f"--init-from {init} takes at most {model['max_frames']} frames, the shards admit "
            f"utterances of {frames}: rebuild them with a lower --max-duration"
        )
