"""Run a set of fine-tunes in one process: ablation variants (paper table 4) and
data-efficiency fractions (figures 2-3), then one comparison table.

    # table 4 on IEMOCAP, given the pre-training runs of the ablations
    python launch/ablate.py --task emotion --shards shards/iemocap --out runs/ablate \\
        --init runs/base --init-no-mlm runs/base-no-mlm --init-no-mcam runs/base-no-mcam \\
        --variants pretrained,scratch,no_mlm,no_mcam,no_fusion,audio_only,text_only

    # figures 2-3: pre-trained vs scratch on 10 %, 20 %, 50 % and all of the training data,
    # 3 seeds each (mean +- std), with the frozen probes beside them
    python launch/ablate.py --task emotion --task sentiment --shards-root shards --init runs/base \\
        --variants pretrained,scratch,probe,probe_random --fractions 0.1,0.2,0.5,1 --seeds 3 \\
        --out runs/efficiency

    # every task of the demo, with and without pre-training (what `make demo` runs)
    python launch/ablate.py --task all --shards-root runs/demo/shards --init runs/demo/pretrain \\
        --variants pretrained,scratch --out runs/demo/finetune --tracking-uri sqlite:///runs/demo/mlflow.db

The process group and DeepSpeed start once; every fine-tune builds its own engine and
is its own MLflow run. Rerunning the same command resumes: finished fine-tunes are
read back, an interrupted one continues from its checkpoint. Writes <out>/ablation.md,
<out>/ablation.csv and, with several fractions, <out>/plots/data_efficiency_*.png; the
table and figures are also logged to a summary run (experiment ctal-ablation). Settings
per task (`--task-option speaker:epochs=3`) override the shared flags. `--seeds 3` runs
every (variant, fraction) with seed offsets 0, 1, 2; `--seeds 0.1:3,1:2` sets the count
per fraction. A difference is called in the table only when it exceeds the spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ctal_ds.finetune.ablate import (
    STARTS,
    comparison_rows,
    parse_variants,
    run_all,
    write_csv,
)
from ctal_ds.finetune.cli import add_common_arguments, add_head_arguments, config_from_args
from ctal_ds.finetune.compare import data_efficiency_plots, summary_markdown
from ctal_ds.finetune.config import FinetuneConfig, validate
from ctal_ds.tasks import TASKS
from ctal_ds.train.checkpoint import CHECKPOINT_FAILED, CheckpointError
from ctal_ds.train.cli import parse_value
from ctal_ds.train.config import ConfigError
from ctal_ds.train.engine import close_process_group, init_process_group
from ctal_ds.train.health import TrainingDiverged
from ctal_ds.train.stop import StopRequest
from ctal_ds.train.tracking import default_uri

# Flags a --task-option may set for one task, and where they live in FinetuneConfig.
TASK_OPTIONS = {"epochs": ("epochs",), "min_steps": ("min_steps",), "lr": ("optim", "lr"), "micro_batch_size": ("optim", "micro_batch_size"),
                "grad_accum": ("optim", "grad_accum"), "warmup_steps": ("optim", "warmup_steps"),
                "eval_batch_size": ("data", "eval_batch_size"), "fold": ("data", "fold")}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", action="append", required=True, help="emotion | sentiment | speaker | all (repeatable)")
    p.add_argument("--shards", type=Path, help="the task's shard directory (one task)")
    p.add_argument("--shards-root", type=Path, help="a directory holding <task>/ shard directories")
    p.add_argument("--variants", default="pretrained,scratch", help="comma list, see ctal_ds/finetune/ablate.py")
    p.add_argument("--fractions", default="1", help="comma list of training-data fractions")
    p.add_argument("--seeds", default="1", help="seeds per (variant, fraction): N, or FRACTION:N,... per fraction")
    for start in STARTS:
        flag = "--init" if start == "pretrained" else f"--init-{start.replace('_', '-')}"
        p.add_argument(flag, dest=f"start_{start}", type=Path, help=f"the {start} pre-trained model or run")
    p.add_argument("--task-option", action="append", default=[], metavar="TASK:KEY=VALUE",
                   help=f"a setting for one task, KEY one of {', '.join(TASK_OPTIONS)} (repeatable)")
    add_head_arguments(p)
    add_common_arguments(p)
    # An ablation's fine-tunes are for comparison: their exports are kept on disk and as
    # run artifacts, but logged as MLflow models only when asked (about 7 s per split).
    p.add_argument("--log-models", dest="no_log_model", action="store_false",
                   help="log every fine-tune's export as an MLflow model, as launch/finetune.py does")
    p.set_defaults(no_log_model=True)
    return p


def task_names(values: list[str]) -> list[str]:
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    names = list(TASKS) if "all" in names else names
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown}; known: {sorted(TASKS)} or all")
    return list(dict.fromkeys(names))


def apply_task_options(cfg: FinetuneConfig, options: list[str]) -> FinetuneConfig:
    for option in options:
        task, _, assignment = option.partition(":")
        key, _, value = assignment.partition("=")
        if key not in TASK_OPTIONS or not value:
            raise ConfigError(f"--task-option {option!r}: expected TASK:KEY=VALUE with KEY in {list(TASK_OPTIONS)}")
        if task != cfg.data.task:
            continue
        *path, name = TASK_OPTIONS[key]
        node = getattr(cfg, path[0]) if path else None
        value = parse_value(value)
        if node is None:
            cfg = dataclasses.replace(cfg, **{name: value})
        else:
            cfg = dataclasses.replace(cfg, **{path[0]: dataclasses.replace(node, **{name: value})})
    return cfg


def base_configs(args: argparse.Namespace) -> dict[str, FinetuneConfig]:
    tasks = task_names(args.task)
    if args.shards is not None and len(tasks) > 1:
        raise ConfigError("--shards names one task's shards; with several tasks give --shards-root")
    if (args.shards is None) == (args.shards_root is None):
        raise ConfigError("give --shards (one task) or --shards-root (a folder of <task>/ shard sets)")
    tracking_uri = args.tracking_uri or default_uri(args.out)
    bases = {}
    for task in tasks:
        shards = args.shards or args.shards_root / task
        cfg = config_from_args(args, task=task, shards=shards, fraction=1.0, init=None, scratch=False, variant="",
                               tracking_uri=tracking_uri)  # fmt: skip
        bases[task] = apply_task_options(cfg, args.task_option)
    return bases


def parse_seeds(text: str, fractions: list[float]) -> dict[float, tuple[int, ...]]:
    """``3`` -> seed offsets (0, 1, 2) for every fraction; ``0.1:3,1:2`` per fraction
    (a fraction not named gets one seed)."""
    counts = dict.fromkeys(fractions, 1)
    try:
        if ":" not in text:
            counts = dict.fromkeys(fractions, int(text))
        else:
            for item in text.split(","):
                fraction, _, n = item.partition(":")
                if float(fraction) not in counts:
                    raise ConfigError(f"--seeds {text!r}: fraction {fraction} is not in --fractions")
                counts[float(fraction)] = int(n)
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected N or FRACTION:N,...") from None
    if min(counts.values()) < 1:
        raise ConfigError(f"--seeds {text!r}: every fraction needs at least one seed")
    return {f: tuple(range(n)) for f, n in counts.items()}


def log_summary(uri: str, out: Path, files: list[Path]) -> None:
    """The comparison table and figures as one MLflow run, beside the fine-tunes' own."""
    from ctal_ds.train.config import TrackingConfig
    from ctal_ds.train.tracking import Tracker

    tracker = Tracker(TrackingConfig(experiment="ctal-ablation", run_name=f"ablation {out.name}", uri=uri), out)
    tracker.start(None, {"ablation.out": str(out.resolve())}, {"role": "summary"})
    for path in files:
        tracker.log_artifact(path, "summary")
    tracker.finish("FINISHED")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        bases = base_configs(args)
        variants = parse_variants(args.variants)
        fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
        seeds = parse_seeds(args.seeds, fractions)
        starts = {s: getattr(args, f"start_{s}") for s in STARTS if getattr(args, f"start_{s}") is not None}
        for base in bases.values():
            for variant in variants:
                if variant.start != "scratch" and variant.start not in starts:
                    flag = "--init" if variant.start == "pretrained" else f"--init-{variant.start.replace('_', '-')}"
                    raise ConfigError(f"variant {variant.name} needs {flag}")
            validate(dataclasses.replace(base, init=dataclasses.replace(base.init, scratch=True)))
    except (ConfigError, ValueError) as err:
        print(f"[ctal-ds] configuration error: {err}", file=sys.stderr)
        return 2
    info = init_process_group()
    stop = StopRequest()
    stop.install()
    try:
        results = run_all(bases, variants, fractions, starts, args.out, info, stop, seeds)
    except TrainingDiverged as err:
        print(f"[ctal-ds] training stopped: {err}", file=sys.stderr, flush=True)
        close_process_group()
        return 3
    except CheckpointError as err:  # a save that could not be written (full disk, size limit)
        print(f"[ctal-ds] checkpoint error: {err}", file=sys.stderr, flush=True)
        return CHECKPOINT_FAILED
    if info.is_main:
        rows = comparison_rows(results)
        table = summary_markdown(rows)
        print(table, flush=True)
        (args.out / "ablation.md").write_text(table + "\n")
        csv = write_csv(rows, args.out / "ablation.csv")
        pngs = data_efficiency_plots(rows, args.out / "plots")
        for png in pngs:
            print(f"[ctal-ds] wrote {png}")
        expected = len(bases) * len(variants) * sum(len(seeds[f]) for f in fractions)
        if not all(r.finished for r in results) or len(results) < expected:
            print("[ctal-ds] stopped early; rerun the same command to continue", flush=True)
        else:
            log_summary(bases[next(iter(bases))].tracking.uri, args.out, [args.out / "ablation.md", csv, *pngs])
    close_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
