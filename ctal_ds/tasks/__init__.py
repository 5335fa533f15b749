"""Downstream tasks: one module per task behind one interface (:class:`TaskSpec`),
their metrics, splits, speaker trial lists and figures (paper sections 4-5).

    emotion.py       IEMOCAP 4-class, 5-fold leave-one-session-out      WA / UA
    sentiment.py     CMU-MOSEI regression, L1                           Acc2 / F1 / MAE / r
    speaker.py       LibriSpeech speaker classification fine-tune       accuracy (dev)
    trials.py        fixed speaker-verification trial lists (VoxCeleb format)
    verification.py  cosine scoring, EER / minDCF, centroid protocol
    metrics.py       the formulas
    subsets.py       nested training fractions (data-efficiency study)
    plots.py         confusion matrix, data-efficiency curves, t-SNE
"""

from __future__ import annotations

from collections.abc import Iterable

from ctal_ds.data.records import Record
from ctal_ds.tasks.base import Split, TaskSpec
from ctal_ds.tasks.emotion import EmotionTask
from ctal_ds.tasks.sentiment import SentimentTask
from ctal_ds.tasks.speaker import SpeakerTask

TASKS = {"emotion": EmotionTask, "sentiment": SentimentTask, "speaker": SpeakerTask}


def build_task(name: str, records: Iterable[Record] = (), **settings) -> TaskSpec:
    """The task called ``name``; the speaker task takes its classes from ``records``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    if name == "speaker":
        return SpeakerTask.from_records(records, **settings)
    return TASKS[name](**settings)


__all__ = [
    "TASKS",
    "EmotionTask",
    "SentimentTask",
    "SpeakerTask",
    "Split",
    "TaskSpec",
    "build_task",
]
