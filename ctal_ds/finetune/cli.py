"""Command line of `launch/finetune.py` (and the shared flags of `launch/ablate.py`): flags -> `FinetuneConfig`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctal_ds.finetune.config import FinetuneConfig, InitConfig, TaskDataConfig
from ctal_ds.finetune.model import ORTHOGONAL_WEIGHT, HeadSettings
from ctal_ds.finetune.reports.base import ReportSettings
from ctal_ds.train.cli import parse_assignments
from ctal_ds.train.config import (
    CheckpointConfig,
    HealthConfig,
    LoopConfig,
    OptimOverrides,
    TrackingConfig,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DS_CONFIG = REPO / "ds_configs" / "finetune.json"


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Everything but the task, the starting point and the head switches."""
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    p.add_argument("--deepspeed_config", type=Path, default=DEFAULT_DS_CONFIG,
                   help="ZeRO stage, precision, optimizer (default: ds_configs/finetune.json)")
    data = p.add_argument_group("data")
    data.add_argument("--fold", default="all", help="all, or one split: N / foldN (IEMOCAP session N tested)")
    data.add_argument("--subset-seed", type=int, default=0, help="seed of the --fraction subsets")
    data.add_argument("--eval-batch-size", type=int, default=16)
    data.add_argument("--task-setting", action="append", default=[], metavar="KEY=VALUE",
                      help="TaskSpec setting, e.g. dev_fraction=0.1 (repeatable)")
    model = p.add_argument_group("model")
    model.add_argument("--preset", default="tiny", help="--scratch without --init: CTALConfig preset")
    model.add_argument("--model-override", action="append", default=[], metavar="FIELD=VALUE",
                       help="CTALConfig field (dropout, attn_impl; sizes only with --scratch)")
    model.add_argument("--classifier-dropout", type=float, default=0.1)
    optim = p.add_argument_group("optimisation (paper 4.2.1: AdamW 1e-5, batch 4, 20 epochs, cosine)")
    optim.add_argument("--epochs", type=int, default=20)
    optim.add_argument("--min-steps", type=int, default=0,
                       help="at least this many optimizer steps: more epochs for a small training set")
    optim.add_argument("--lr", type=float, default=1e-5)
    optim.add_argument("--backbone-lr-scale", type=float, default=1.0,
                       help="pre-trained backbone's top layers at lr x this (head at lr; scratch: ignored)")
    optim.add_argument("--layer-lr-decay", type=float, default=1.0,
                       help="each backbone layer below the top at this x the lr of the one above")
    optim.add_argument("--warmup-steps", type=int, default=0, help="linear warmup in optimizer steps")
    optim.add_argument("--schedule", choices=["cosine", "config"], default="cosine",
                       help="cosine over the run, or the DeepSpeed JSON's scheduler")
    optim.add_argument("--micro-batch-size", type=int, help="utterances per micro batch (JSON's by default)")
    optim.add_argument("--grad-accum", type=int)
    optim.add_argument("--precision", choices=["fp32", "fp16", "bf16"])
    optim.add_argument("--grad-clip", type=float)
    optim.add_argument("--ds", action="append", default=[], metavar="DOTTED.KEY=VALUE",
                       help="any DeepSpeed config key, e.g. zero_optimization.stage=2")
    optim.add_argument("--seed", type=int, default=1234)
    test = p.add_argument_group("speaker verification")
    test.add_argument("--trials", type=Path, help="VoxCeleb-format trial list (default: a fixed one is generated)")
    test.add_argument("--n-trials", type=int, default=10_000, help="generated list: target (and non-target) trials")
    test.add_argument("--centroid-enrol", type=int, default=5, help="enrolment utterances per speaker (centroid EER)")
    run = p.add_argument_group("run")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--resume", default="auto", help="auto | none | checkpoint tag directory (one fold)")
    run.add_argument("--keep-last", type=int, default=1, help="checkpoints kept per split")
    run.add_argument("--log-every", type=int, default=10)
    run.add_argument("--experiment", default="", help="MLflow experiment (default: ctal-<task>)")
    run.add_argument("--run-name")
    run.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite in --out")
    run.add_argument("--flush-every", type=int, default=50)
    run.add_argument("--register-model", metavar="NAME",
                     help="register each split's export (logged into its run as an MLflow pyfunc model) "
                          "as a new version of this registered model")
    run.add_argument("--no-log-model", action="store_true",
                     help="do not log the exports as MLflow models (about 7 s and a copy of the weights "
                          "per split); --register-model logs anyway")
    run.add_argument("--no-system-metrics", action="store_true",
                     help="do not sample MLflow system metrics (CPU, memory, disk, network, GPU) every 10 s")


def add_head_arguments(p: argparse.ArgumentParser) -> None:
    head = p.add_argument_group("head and ablations (paper table 4)")
    head.add_argument("--orthogonal-weight", type=float, default=ORTHOGONAL_WEIGHT,
                      help=f"weight of L_orth (default {ORTHOGONAL_WEIGHT}); 0 switches it off")
    head.add_argument("--no-fusion", action="store_true", help="concatenate the four pooled vectors (no h_fuse)")
    head.add_argument("--probe", action="store_true",
                      help="frozen backbone: train only a weighted sum of its layers, the pooling and the head")
    head.add_argument("--modality", choices=["both", "audio", "text"], default="both",
                      help="audio / text: use only that stream's outputs")


def build_parser() -> argparse.ArgumentParser:
    from ctal_ds.tasks import TASKS

    p = argparse.ArgumentParser(description="Fine-tune CTAL on a downstream task with DeepSpeed.")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--shards", type=Path, required=True, help="task shard directory (launch/prepare_data.py)")
    p.add_argument("--init", type=Path, help="pre-trained model dir, ZeRO checkpoint or pre-training run dir")
    p.add_argument("--scratch", action="store_true",
                       help="fresh weights (w/o pre-training): --init's architecture, else --preset")
    p.add_argument("--variant", default="", help="name for comparisons (default: derived from the flags)")
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of each training split")
    add_head_arguments(p)
    add_common_arguments(p)
    return p


def config_from_args(args: argparse.Namespace, **changes) -> FinetuneConfig:
    """The config of the flags; ``changes`` replace flag values (task, init, head, ...)."""
    values = {**vars(args), **changes}
    return FinetuneConfig(
        out=values["out"],
        deepspeed_config=Path(values["deepspeed_config"]),
        data=TaskDataConfig(
            task=values["task"], shards=values["shards"], fold=str(values["fold"]), fraction=values["fraction"],
            subset_seed=values["subset_seed"], eval_batch_size=values["eval_batch_size"],
            task_settings=parse_assignments(values["task_setting"], "--task-setting"),
        ),  # fmt: skip
        init=InitConfig(
            init=values["init"], scratch=values["scratch"], preset=values["preset"],
            overrides=parse_assignments(values["model_override"], "--model-override"),
        ),  # fmt: skip
        head=HeadSettings(
            fusion=not values["no_fusion"], orthogonal_weight=values["orthogonal_weight"],
            modality=values["modality"], classifier_dropout=values["classifier_dropout"], probe=values["probe"],
        ),  # fmt: skip
        variant=values["variant"],
        epochs=values["epochs"],
        min_steps=values["min_steps"],
        schedule=values["schedule"],
        backbone_lr_scale=values["backbone_lr_scale"],
        layer_lr_decay=values["layer_lr_decay"],
        optim=OptimOverrides(
            precision=values["precision"], micro_batch_size=values["micro_batch_size"],
            grad_accum=values["grad_accum"], lr=values["lr"], warmup_steps=values["warmup_steps"],
            grad_clip=values["grad_clip"], extra=list(values["ds"]),
        ),  # fmt: skip
        loop=LoopConfig(log_every=values["log_every"], export_final=False),
        checkpoint=CheckpointConfig(save_every=0, keep_last=values["keep_last"], resume=values["resume"]),
        tracking=TrackingConfig(
            experiment=values["experiment"], run_name=values["run_name"], uri=values["tracking_uri"],
            flush_every=values["flush_every"], register_model=values["register_model"],
            log_model=not values["no_log_model"], system_metrics=not values["no_system_metrics"],
        ),  # fmt: skip
        health=HealthConfig(),
        report=ReportSettings(
            trials=values["trials"], n_target_trials=values["n_trials"], centroid_enrol=values["centroid_enrol"]
        ),
        seed=values["seed"],
    )
