"""Ablations (paper table 4) and data-efficiency curves (figures 2-3) as sets of fine-tunes.

A variant is a starting point plus head switches; the pre-training ablations are
pre-training runs of their own (``launch/pretrain.py --no-mlm`` / ``--no-mcam``) whose
exports are given as starting points:

    variant      starts from                      head                      table 4
    pretrained   the CTAL pre-training run        h_fuse + L_orth           CTAL
    scratch      fresh weights, same network      h_fuse + L_orth           w/o pre-training
    no_mlm       the --no-mlm pre-training run    h_fuse + L_orth           (b)
    no_mcam      the --no-mcam pre-training run   h_fuse + L_orth           (c)
    no_fusion    pretrained                       concatenation, no L_orth  (d)
    no_orth      pretrained                       h_fuse, L_orth weight 0   (d), h_fuse kept
    audio_only   pretrained                       audio outputs only        (e)
    text_only    pretrained                       text outputs only         (f)

Every (task, variant, fraction) is one ``finetune`` call in this process, in its own
directory ``<out>/<task>/<variant>[-f<fraction>]``; all of them log to one tracking
store, so ``launch/compare.py`` sees them together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctal_ds.finetune.compare import KEY_METRICS
from ctal_ds.finetune.config import FinetuneConfig
from ctal_ds.finetune.model import HeadSettings
from ctal_ds.finetune.run import FinetuneResult, finetune
from ctal_ds.tasks.plots import plot_data_efficiency


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    start: str  # pretrained | no_mlm | no_mcam: which pre-trained model; scratch: fresh weights
    paper: str  # its row of table 4
    fusion: bool = True
    orthogonal_weight: float | None = None  # None: the base config's weight
    modality: str = "both"


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("pretrained", "pretrained", "CTAL"),
        Variant("scratch", "scratch", "w/o pre-training"),
        Variant("no_mlm", "no_mlm", "(b) w/o MLM"),
        Variant("no_mcam", "no_mcam", "(c) w/o MCAM"),
        Variant("no_fusion", "pretrained", "(d) w/o orthogonal fusion", fusion=False, orthogonal_weight=0.0),
        Variant("no_orth", "pretrained", "(d) h_fuse without L_orth", orthogonal_weight=0.0),
        Variant("audio_only", "pretrained", "(e) audio outputs only", modality="audio"),
        Variant("text_only", "pretrained", "(f) text outputs only", modality="text"),
    )
}
STARTS = ("pretrained", "no_mlm", "no_mcam")


def parse_variants(text: str) -> list[Variant]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    return [VARIANTS[n] for n in names]


def run_dir(out: Path, task: str, variant: str, fraction: float) -> Path:
    return Path(out) / task / (variant if fraction == 1.0 else f"{variant}-f{fraction:g}")


def variant_config(base: FinetuneConfig, variant: Variant, starts: Mapping[str, Path], fraction: float, out: Path) -> FinetuneConfig:
    """``base`` (one task's settings) changed into ``variant`` on ``fraction`` of the data.

    ``starts`` maps pretrained / no_mlm / no_mcam to pre-trained models; scratch takes
    the pretrained model's architecture (or ``base``'s preset when there is none).
    """
    if variant.start == "scratch":
        init = dataclasses.replace(base.init, init=starts.get("pretrained"), scratch=True)
    else:
        if variant.start not in starts:
            raise ValueError(f"variant {variant.name} needs the {variant.start} pre-trained model (--{variant.start.replace('_', '-')})")
        init = dataclasses.replace(base.init, init=Path(starts[variant.start]), scratch=False)
    weight = base.head.orthogonal_weight if variant.orthogonal_weight is None else variant.orthogonal_weight
    head = HeadSettings(variant.fusion, weight, variant.modality, base.head.classifier_dropout)
    data = dataclasses.replace(base.data, fraction=fraction)
    return dataclasses.replace(
        base, out=run_dir(out, base.data.task, variant.name, fraction), init=init, head=head, data=data,
        variant=variant.name,
    )  # fmt: skip


def run_all(
    bases: Mapping[str, FinetuneConfig],
    variants: Sequence[Variant],
    fractions: Sequence[float],
    starts: Mapping[str, Path],
    out: Path,
    info: Any,
    stop: Any,
) -> list[FinetuneResult]:
    """Every (task, variant, fraction), in one process; stops early on a stop request."""
    results = []
    for base in bases.values():
        for variant in variants:
            for fraction in fractions:
                if stop.signal_name is not None:
                    return results  # asked to stop between two fine-tunes
                result = finetune(variant_config(base, variant, starts, fraction, out), info, stop)
                results.append(result)
                if not result.finished:
                    return results
    return results


def comparison_rows(results: Sequence[FinetuneResult]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        paper = VARIANTS[r.variant].paper if r.variant in VARIANTS else ""
        row = {"task": r.task, "variant": r.variant, "table4": paper, "fraction": r.fraction, "finished": r.finished}
        for m in KEY_METRICS.get(r.task, ()):
            row[m] = r.metrics.get(m)
            if f"{m}_std" in r.metrics:
                row[f"{m}_std"] = r.metrics[f"{m}_std"]
        rows.append(row)
    return rows


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        metrics = KEY_METRICS.get(task, ())
        lines += [f"### {task}", "", "| variant | table 4 | fraction | " + " | ".join(metrics) + " |",
                  "| --- | --- | --- |" + " --- |" * len(metrics)]  # fmt: skip
        for r in (r for r in rows if r["task"] == task):
            cells = [_cell(r.get(m), r.get(f"{m}_std")) for m in metrics]
            lines.append(f"| {r['variant']} | {r['table4']} | {r['fraction']:g} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(value: float | None, std: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if std is None or std != std else f"{value:.4f} ± {std:.4f}"


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    import csv

    keys = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def data_efficiency_plots(results: Sequence[FinetuneResult], out_dir: Path) -> list[Path]:
    """Figures 2-3: per task and key metric, one line per variant over the fractions."""
    written = []
    for task in dict.fromkeys(r.task for r in results):
        task_results = [r for r in results if r.task == task and r.finished]
        if len({r.fraction for r in task_results}) < 2:
            continue
        for metric in KEY_METRICS.get(task, ()):
            curves: dict[str, list[tuple[float, float]]] = {}
            for r in task_results:
                if metric in r.metrics:
                    curves.setdefault(r.variant, []).append((r.fraction, r.metrics[metric]))
            if curves:
                written.append(plot_data_efficiency(curves, metric, Path(out_dir) / f"data_efficiency_{task}_{metric}.png"))
    return written
