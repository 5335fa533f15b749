"""Fine-tune CTAL on a downstream task with DeepSpeed (paper section 4.2).

    # IEMOCAP, all 5 leave-one-session-out folds, from a pre-training run
    python launch/finetune.py --task emotion --shards shards/iemocap --init runs/base --out runs/ft/emotion

    # the w/o pre-training baseline: the same network, fresh weights
    python launch/finetune.py --task emotion --shards shards/iemocap --init runs/base --scratch --out runs/ft/emotion-scratch

    # CMU-MOSEI on 4 GPUs, ZeRO-2; LibriSpeech speaker verification with a given trial list
    deepspeed --num_gpus 4 launch/finetune.py --task sentiment --shards shards/mosei --init runs/base/export \\
        --deepspeed_config ds_configs/zero2.json --out runs/ft/mosei
    python launch/finetune.py --task speaker --shards shards/ls-speaker --init runs/base --trials trials.txt --out runs/ft/sv

The loop, checkpoints (`--resume auto`), health checks, stop signals and MLflow
tracking are pre-training's (docs/training.md); docs/finetune.md describes the rest.
Exit status: 0 finished or stopped cleanly, 2 bad configuration, 3 training diverged, 5 a
checkpoint could not be written.
"""

from __future__ import annotations

import sys

from ctal_ds.finetune.cli import build_parser, config_from_args
from ctal_ds.finetune.config import validate
from ctal_ds.finetune.run import finetune
from ctal_ds.train.checkpoint import CHECKPOINT_FAILED, CheckpointError
from ctal_ds.train.config import ConfigError
from ctal_ds.train.engine import close_process_group, init_process_group
from ctal_ds.train.health import TrainingDiverged
from ctal_ds.train.stop import StopRequest


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        validate(cfg)
    except ConfigError as err:
        print(f"[ctal-ds] configuration error: {err}", file=sys.stderr)
        return 2
    info = init_process_group()
    stop = StopRequest()
    stop.install()
    try:
        result = finetune(cfg, info, stop)
    except TrainingDiverged as err:
        print(f"[ctal-ds] training stopped: {err}", file=sys.stderr, flush=True)
        close_process_group()
        return 3
    except CheckpointError as err:  # a save that could not be written (full disk, size limit)
        print(f"[ctal-ds] checkpoint error: {err}", file=sys.stderr, flush=True)
        return CHECKPOINT_FAILED
    if info.is_main:
        state = "finished" if result.finished else "stopped (resume with the same command)"
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if not k.startswith("n_"))
        print(f"[ctal-ds] {result.task} ({result.variant}) {state}: {metrics}", flush=True)
    close_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
