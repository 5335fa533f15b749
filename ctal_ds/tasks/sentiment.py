"""CMU-MOSEI sentiment regression (paper section 4.2.2).

Scores in [-3, 3] regressed from h_fuse with an L1 loss. The split is the standard one
the MulT protocol uses, carried by each record's ``split`` (``train``/``valid``/``test``);
``valid`` is the dev set. The checkpoint is selected on dev MAE, the quantity the loss
minimises; Acc2, F1 and Pearson r are reported beside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import ClassVar

import numpy as np

from ctal_ds.data.records import Record
from ctal_ds.tasks.base import Sample, Split, TaskSpec, sample_label
from ctal_ds.tasks.metrics import sentiment_metrics

MOSEI_SPLITS = {"train": "train", "dev": "valid", "test": "test"}


@dataclasses.dataclass(frozen=True)
class SentimentTask(TaskSpec):
    name: ClassVar[str] = "sentiment"
    kind: ClassVar[str] = "regression"
    loss: ClassVar[str] = "l1"
    num_labels: ClassVar[int] = 1
    selection_metric: ClassVar[str] = "mae"
    higher_is_better: ClassVar[bool] = False

    def label_of(self, sample: Sample) -> float:
        return float(sample_label(sample, "sentiment"))

    def splits(self, records: Iterable[Record]) -> list[Split]:
        """The one MOSEI split; a record in any other split, or an empty part, is an error."""
        by_split: dict[str, list[str]] = {name: [] for name in MOSEI_SPLITS.values()}
        for r in sorted(records, key=lambda r: r.id):
            if r.split not in by_split:
                raise ValueError(
                    f"record {r.id!r}: split {r.split!r} is not one of {sorted(by_split)}"
                )
            by_split[r.split].append(r.id)
        empty = [name for name, ids in by_split.items() if not ids]
        if empty:
            raise ValueError(f"MOSEI split(s) {empty} have no records")
        return [
            Split("mosei", *(tuple(by_split[MOSEI_SPLITS[p]]) for p in ("train", "dev", "test")))
        ]

    def metrics(self, preds, labels) -> dict[str, float]:
        """``acc2``, ``f1``, ``mae``, ``pearson_r``; ``preds`` are scores [N] or [N, 1]."""
        return sentiment_metrics(np.asarray(preds, dtype=np.float64).ravel(), labels)
