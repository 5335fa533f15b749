"""Ablations (paper table 4) and data-efficiency curves (figures 2-3) as sets of fine-tunes.

A variant is a starting point plus head switches; the pre-training ablations are
pre-training runs of their own (``launch/pretrain.py --no-mlm`` / ``--no-mcam`` /
``--model-override cross_attention=false``) whose exports are given as starting points:

    variant       starts from                        head                          table 4
    pretrained    the CTAL pre-training run          h_fuse + L_orth               CTAL
    scratch       fresh weights, same network        h_fuse + L_orth               w/o pre-training
    probe         pretrained, frozen                 layer mix + h_fuse + L_orth   (frozen probe)
    probe_random  fresh weights, frozen              layer mix + h_fuse + L_orth   (its random baseline)
    no_mlm        the --no-mlm pre-training run      h_fuse + L_orth               (b) w/o MLM
    no_mcam       the --no-mcam pre-training run     h_fuse + L_orth               (c) w/o MCAM
    no_fusion     pretrained                         concatenation, no L_orth      (d) (head input 4d, not 2d)
    no_orth       pretrained                         h_fuse, L_orth weight 0       (d), h_fuse kept
    text_only     pretrained                         text outputs only             (e) w/o audio outputs
    audio_only    pretrained                         audio outputs only            (f) w/o language outputs
    unimodal      the unimodal pre-training run      h_fuse + L_orth               (g) w/o cross-modal pre-training

The probes are the frozen-representation evaluation of SUPERB: whether pre-training
learned anything, independent of how fine-tuning treats the weights. They train at
PROBE_LR_SCALE times the base learning rate.

Every (task, variant, fraction, seed) is one ``finetune`` call in this process, in its
own directory ``<out>/<task>/<variant>[-f<fraction>][-s<k>]``; all of them log to one
tracking store, so ``launch/compare.py`` sees them together. Seed k adds k to the
fine-tune seed (head initialisation, batch order, dropout) and to the subset seed
(which utterances a fraction keeps), so the spread over seeds covers both; variants
with the same k train on the same subset, a paired comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctal_ds.finetune.compare import Outcome, summary_rows
from ctal_ds.finetune.config import FinetuneConfig
from ctal_ds.finetune.model import HeadSettings
from ctal_ds.finetune.run import FinetuneResult, finetune


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    # pretrained | no_mlm | no_mcam | unimodal: which pre-trained model; scratch: fresh weights
    start: str
    paper: str  # its row of table 4
    fusion: bool = True
    orthogonal_weight: float | None = None  # None: the base config's weight
    modality: str = "both"
    probe: bool = False


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("pretrained", "pretrained", "CTAL"),
        Variant("scratch", "scratch", "w/o pre-training"),
        Variant("probe", "pretrained", "frozen probe", probe=True),
        Variant("probe_random", "scratch", "frozen probe, random weights", probe=True),
        Variant("no_mlm", "no_mlm", "(b) w/o MLM"),
        Variant("no_mcam", "no_mcam", "(c) w/o MCAM"),
        Variant("no_fusion", "pretrained", "(d) w/o orthogonal fusion", fusion=False, orthogonal_weight=0.0),
        Variant("no_orth", "pretrained", "(d) h_fuse without L_orth", orthogonal_weight=0.0),
        Variant("text_only", "pretrained", "(e) w/o audio outputs", modality="text"),
        Variant("audio_only", "pretrained", "(f) w/o language outputs", modality="audio"),
        Variant("unimodal", "unimodal", "(g) w/o cross-modal pre-training"),
    )
}
STARTS = ("pretrained", "no_mlm", "no_mcam", "unimodal")
# A probe trains only a small head on fixed features: like linear probes elsewhere it
# takes a larger learning rate than fine-tuning the whole network (10x the base lr).
PROBE_LR_SCALE = 10.0


def parse_variants(text: str) -> list[Variant]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    return [VARIANTS[n] for n in names]


def run_dir(out: Path, task: str, variant: str, fraction: float, seed: int = 0) -> Path:
    name = variant if fraction == 1.0 else f"{variant}-f{fraction:g}"
    return Path(out) / task / (name if seed == 0 else f"{name}-s{seed}")


def variant_config(
    base: FinetuneConfig, variant: Variant, starts: Mapping[str, Path], fraction: float, out: Path, seed: int = 0
) -> FinetuneConfig:
    """``base`` (one task's settings) changed into ``variant`` on ``fraction`` of the data,
    with seed offset ``seed``.

    ``starts`` maps pretrained / no_mlm / no_mcam / unimodal to pre-trained models;
    scratch takes the pretrained model's architecture (or ``base``'s preset when there
    is none).
    """
    if variant.start == "scratch":
        init = dataclasses.replace(base.init, init=starts.get("pretrained"), scratch=True)
    else:
        if variant.start not in starts:
            raise ValueError(f"variant {variant.name} needs the {variant.start} pre-trained model (--init-{variant.start.replace('_', '-')})")
        init = dataclasses.replace(base.init, init=Path(starts[variant.start]), scratch=False)
    weight = base.head.orthogonal_weight if variant.orthogonal_weight is None else variant.orthogonal_weight
    head = HeadSettings(variant.fusion, weight, variant.modality, base.head.classifier_dropout, variant.probe)
    data = dataclasses.replace(base.data, fraction=fraction, subset_seed=base.data.subset_seed + seed)
    optim = base.optim
    if variant.probe and optim.lr is not None:
        optim = dataclasses.replace(optim, lr=optim.lr * PROBE_LR_SCALE)
    return dataclasses.replace(
        base, out=run_dir(out, base.data.task, variant.name, fraction, seed), init=init, head=head, data=data,
        variant=variant.name, seed=base.seed + seed, optim=optim,
    )  # fmt: skip


def run_all(
    bases: Mapping[str, FinetuneConfig],
    variants: Sequence[Variant],
    fractions: Sequence[float],
    starts: Mapping[str, Path],
    out: Path,
    info: Any,
    stop: Any,
    seeds: Sequence[int] | Mapping[float, Sequence[int]] = (0,),
) -> list[FinetuneResult]:
    """Every (task, variant, fraction, seed), in one process; stops early on a stop request.

    ``seeds``: the seed offsets of every fraction, or per fraction.
    """
    results = []
    for base in bases.values():
        for fraction in fractions:
            fraction_seeds = seeds.get(fraction, (0,)) if isinstance(seeds, Mapping) else seeds
            for seed in fraction_seeds:
                for variant in variants:
                    if stop.signal_name is not None:
                        return results  # asked to stop between two fine-tunes
                    result = finetune(variant_config(base, variant, starts, fraction, out, seed), info, stop)
                    results.append(result)
                    if not result.finished:
                        return results
    return results


def comparison_rows(results: Sequence[FinetuneResult]) -> list[dict[str, Any]]:
    """One row per (task, variant, fraction) over its seeds (``compare.summary_rows``)."""
    outcomes = [Outcome(r.task, r.variant, r.fraction, r.finished, r.metrics) for r in results]
    return summary_rows(outcomes, {name: v.paper for name, v in VARIANTS.items()})


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    import csv

    keys = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
    return path
