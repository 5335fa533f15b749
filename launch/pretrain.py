"""Pre-train CTAL (MLM + MCAM) with DeepSpeed.

    deepspeed --num_gpus 8 launch/pretrain.py --deepspeed_config ds_configs/zero2.json \\
        --preset base --train-shards shards/ls960 --valid-shards shards/ls-dev-clean \\
        --eval-every 5000 --save-every 2000 --out runs/base

Also runs under torchrun, plain `srun` (launch/slurm/pretrain.sbatch) and as a single
process. Exit status: 0 finished or stopped cleanly (signal, --exit-at-step,
--time-limit-min; <out>/status.json says which), 2 bad configuration, 3 training
diverged, 4 a rank's hang watchdog ended it (no step within its limit), 5 a rank
could not write a checkpoint (the previous one is kept). See docs/training.md.
"""

from __future__ import annotations

import os
import sys

from ctal_ds import dist
from ctal_ds.train import components, ds_config, watchdog
from ctal_ds.train.checkpoint import (
    CHECKPOINT_FAILED,
    CheckpointError,
    agree_on_resume,
    is_universal,
)
from ctal_ds.train.cli import build_parser, run_config_from_args, validate
from ctal_ds.train.config import ConfigError
from ctal_ds.train.engine import close_process_group, init_process_group, start_run
from ctal_ds.train.health import TrainingDiverged


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    where = dist.discover(os.environ)
    try:  # everything that can be checked without compute, before any process group
        cfg = run_config_from_args(args)
        validate(cfg)
        ds, plan, cfg.loop.steps, notes = ds_config.resolve(
            ds_config.load(cfg.deepspeed_config), cfg.optim, cfg.loop.steps, where.world_size,
            where.world_size_var, accel.device_name(), accel.is_fp16_supported(), str(cfg.deepspeed_config),
        )  # fmt: skip
    except ConfigError as err:
        # Usually every rank fails the same way and rank 0 says it; a rank whose own
        # arguments or environment fail says so too, since the others then wait for it.
        who = "" if where.is_main else f"rank {where.rank}: "
        print(f"[ctal-ds] {who}configuration error: {err}", file=sys.stderr)
        return 2

    info = init_process_group(cfg.timeouts)
    # From here on every rank's watchdog runs: the start-up allowance covers the engine
    # build and the resume, until the first step time is known.
    dog = watchdog.Watchdog(cfg.watchdog, info.rank).start()
    if info.is_main:
        print("\n".join(f"[ctal-ds] {note}" for note in [*notes, watchdog.describe(cfg.watchdog)]), flush=True)
    resume = agree_on_resume(cfg.checkpoint.resume, cfg.checkpoint_dir, cfg.checkpoint.verify_hash)
    resume_dir = resume.tag_dir
    if resume_dir is not None and is_universal(resume_dir):
        ds.setdefault("checkpoint", {})["load_universal"] = True
    trainer = components.build_trainer(cfg, info, ds, plan, dog)
    start_run(trainer, cfg, info, ds, plan, resume_dir, tags=resume.tracking_tags())

    try:
        outcome = trainer.train()
    except TrainingDiverged as err:  # raised on every rank alike
        if info.is_main:
            print(f"[ctal-ds] training stopped: {err}", file=sys.stderr, flush=True)
        trainer.tracker.set_tags({"failure": str(err)[:5000]})
        trainer.tracker.finish("FAILED")
        close_process_group()
        return 3
    except CheckpointError as err:  # raised by the ranks whose write failed; the others wait
        print(f"[ctal-ds] checkpoint error: {err}", file=sys.stderr, flush=True)
        trainer.tracker.set_tags({"failure": str(err)[:5000]})
        trainer.tracker.finish("FAILED")
        return CHECKPOINT_FAILED
    finally:
        dog.stop()  # the export and the final barrier are not steps
    if info.is_main:
        print(f"[ctal-ds] {outcome.reason} at step {outcome.step}", flush=True)
        components.finish_run(cfg, trainer.tracker, outcome, trainer.checkpointer)
    close_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
