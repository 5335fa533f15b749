"""What a fine-tuned model is judged on, one module per downstream task.

Every task reports ``TaskSpec.metrics`` on dev (model selection) and on test; the test
report adds what the paper shows for that task: the confusion matrix of IEMOCAP, the
verification protocol (trial list, EER, minDCF, centroid EER, t-SNE) of LibriSpeech.
A new task is a new module here plus an entry in ``REPORTS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ctal_ds.finetune.predict import Predictions
from ctal_ds.finetune.reports.base import Report, ReportSettings, metrics_report
from ctal_ds.finetune.reports.emotion import emotion_report, emotion_summary
from ctal_ds.finetune.reports.speaker import speaker_report
from ctal_ds.tasks.base import TaskSpec

REPORTS = {"emotion": emotion_report, "sentiment": metrics_report, "speaker": speaker_report}


def write_test_report(
    spec: TaskSpec, preds: Predictions, metas: Mapping[str, dict], out: Path, settings: ReportSettings, title: str = ""
) -> Report:
    """The test report of ``spec``'s task for predictions over its test split
    (``metas``: the sample JSONs by utterance id); its files go to ``out``."""
    return REPORTS[spec.name](spec, preds, metas, Path(out), settings, title)


__all__ = ["REPORTS", "Report", "ReportSettings", "emotion_summary", "write_test_report"]
