"""IEMOCAP test report: WA / UA and the confusion matrix, per fold and over folds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ctal_ds.finetune.predict import Predictions
from ctal_ds.finetune.reports.base import Report, ReportSettings
from ctal_ds.tasks.base import TaskSpec
from ctal_ds.tasks.emotion import EMOTIONS, aggregate_folds
from ctal_ds.tasks.plots import plot_confusion


def emotion_report(
    spec: TaskSpec, preds: Predictions, metas: Mapping[str, dict], out: Path, settings: ReportSettings, title: str = ""
) -> Report:
    cm = spec.confusion(preds.scores, preds.labels)
    png = plot_confusion(cm, EMOTIONS, Path(out) / "confusion.png", title=title)
    return Report(spec.metrics(preds.scores, preds.labels), [png], {"confusion": cm.tolist()})


def emotion_summary(fold_reports: Sequence[Report], out: Path, title: str = "") -> Report:
    """Metrics averaged over folds (``wa_mean``, ``ua_std``, ...) and the summed confusion."""
    metrics = aggregate_folds([r.metrics for r in fold_reports])
    cm = np.sum([np.asarray(r.details["confusion"]) for r in fold_reports], axis=0)
    png = plot_confusion(cm, EMOTIONS, Path(out) / "confusion_all_folds.png", title=title)
    return Report(metrics, [png], {"confusion": cm.tolist(), "folds": len(fold_reports)})
