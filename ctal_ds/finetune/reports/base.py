"""The shape of a test report and the generic one (the task's own metrics)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctal_ds.finetune.predict import Predictions
from ctal_ds.tasks.base import TaskSpec


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    """Settings of the test protocols (only the speaker task has any)."""

    trials: Path | None = None  # VoxCeleb-format trial list; None: generate a fixed one
    n_target_trials: int = 10_000  # generated list: at most this many of each kind
    trial_seed: int = 0
    centroid_enrol: int = 5  # utterances averaged into a speaker model (centroid protocol)
    tsne_speakers: int = 10  # paper figure 4 shows a handful of speakers
    tsne_utterances: int = 30  # per speaker


@dataclasses.dataclass
class Report:
    metrics: dict[str, float]
    artifacts: list[Path] = dataclasses.field(default_factory=list)  # files written
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # JSON-able extras


def metrics_report(
    spec: TaskSpec, preds: Predictions, metas: Mapping[str, dict], out: Path, settings: ReportSettings, title: str = ""
) -> Report:
    return Report(spec.metrics(preds.scores, preds.labels))
