"""Evaluate a fine-tuned CTAL model on a task's test (or dev) split.

    # an exported model (a fine-tune split's export/), without DeepSpeed
    python launch/evaluate.py --task emotion --model runs/ft/emotion/fold3/export --fold 3 \\
        --shards shards/iemocap --out runs/eval/emotion-fold3

    # a fine-tune checkpoint, inside a ZeRO-3 engine on 4 GPUs
    deepspeed --num_gpus 4 launch/evaluate.py --task speaker --model runs/ft/sv/librispeech/checkpoints \\
        --shards shards/ls-speaker --deepspeed_config ds_configs/zero3.json --out runs/eval/sv

The batches, metrics and reports (confusion matrix; trial list, EER, minDCF, centroid
EER, t-SNE) are those of fine-tuning's test step, so an exported model scores here what
it scored at the end of its run. Each evaluation is an MLflow run (role `eval`) in the
task's experiment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctal_ds.finetune.evaluate import EvalConfig, evaluate
from ctal_ds.finetune.reports import ReportSettings
from ctal_ds.tasks import TASKS
from ctal_ds.train.cli import parse_assignments
from ctal_ds.train.config import TrackingConfig
from ctal_ds.train.engine import close_process_group, init_process_group
from ctal_ds.train.tracking import NullTracker, Tracker


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--model", type=Path, required=True,
                   help="fine-tuned model dir, fine-tune split dir or ZeRO checkpoint of a fine-tune")
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--fold", default="all", help="the split the model was trained on (IEMOCAP: 1..5)")
    p.add_argument("--part", choices=["test", "dev"], default="test")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--deepspeed_config", type=Path, help="run inside a DeepSpeed engine (default: plain torch)")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--task-setting", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--trials", type=Path, help="VoxCeleb-format trial list (speaker)")
    p.add_argument("--n-trials", type=int, default=10_000)
    p.add_argument("--centroid-enrol", type=int, default=5)
    p.add_argument("--variant", default="", help="name for comparisons")
    p.add_argument("--experiment", default="", help="MLflow experiment (default: ctal-<task>)")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite in --out")
    p.add_argument("--no-tracking", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = EvalConfig(
        task=args.task, shards=args.shards, model=args.model, out=args.out, fold=str(args.fold), part=args.part,
        eval_batch_size=args.eval_batch_size, task_settings=parse_assignments(args.task_setting, "--task-setting"),
        report=ReportSettings(trials=args.trials, n_target_trials=args.n_trials, centroid_enrol=args.centroid_enrol),
        deepspeed_config=args.deepspeed_config,
    )  # fmt: skip
    info = init_process_group()
    report, _ = evaluate(cfg, info)
    if info.is_main:
        tracking = TrackingConfig(experiment=args.experiment or f"ctal-{args.task}", uri=args.tracking_uri)
        tracker = NullTracker() if args.no_tracking else Tracker(tracking, args.out)
        tags = {"task": args.task, "variant": args.variant or "eval", "init": str(args.model), "fold": cfg.fold,
                "fraction": "1", "role": "eval", "part": args.part}  # fmt: skip
        tracker.start(None, {f"eval.{k}": v for k, v in tags.items()}, tags)
        tracker.log_metrics(0, {f"{args.part}/{k}": float(v) for k, v in report.metrics.items()})
        for path in [*report.artifacts, args.out / "eval_results.json"]:
            tracker.log_artifact(path, "results")
        tracker.finish()
        print("\n".join(f"{k:>16} {v:.4f}" for k, v in report.metrics.items()), flush=True)
    close_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
