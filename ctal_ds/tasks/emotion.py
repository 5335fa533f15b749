"""IEMOCAP 4-class emotion classification (paper section 4.2.1).

Protocol: 5-fold leave-one-session-out; fold k tests on session k and trains on the
other four. WA and UA are computed per fold and averaged over the folds.

Dev split (the public release selected models on the test session; we do not): from
the training sessions only, about ``dev_fraction`` of their utterances, held out whole
dialogues at a time and stratified by emotion (sklearn ``StratifiedGroupKFold``, seeded):
- whole dialogues, because the turns of one dialogue share speakers, topic and
  recording; splitting a dialogue would put near-copies of dev utterances in training
  and make dev scores reward memorisation;
- stratified, so that dev UA sees all four emotions in roughly the training mix;
- a fraction rather than a whole held-out session, so each fold still trains on
  (90 % of) four sessions, as in the paper, instead of three.
Dev is not speaker-disjoint from training: each of the 8 training speakers is ~12 % of
the data, so a speaker-disjoint dev set would take a whole speaker.
The dialogue is the utterance id minus its last ``_`` field (``Ses01F_impro01_F000`` ->
``Ses01F_impro01``); an id without ``_`` is its own group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ctal_ds.data.records import Record
from ctal_ds.tasks.base import Sample, Split, TaskSpec, class_indices, sample_field, sample_label
from ctal_ds.tasks.metrics import confusion_matrix, unweighted_accuracy, weighted_accuracy

EMOTIONS: tuple[str, ...] = ("ang", "hap", "neu", "sad")


def session_of(sample: Sample) -> int:
    """Session 1..5 from the ``session`` label, else from the ``SessionN`` split."""
    labels = sample_field(sample, "labels") or {}
    if "session" in labels:
        return int(labels["session"])
    split = sample_field(sample, "split")
    if split.startswith("Session") and split[7:].isdigit():
        return int(split[7:])
    raise ValueError(f"sample {sample_field(sample, 'id')!r}: no session label and split {split!r}")


def dialogue_of(utt_id: str) -> str:
    return utt_id.rsplit("_", 1)[0]


def aggregate_folds(fold_metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """``<metric>_mean`` and ``<metric>_std`` over folds (the paper reports the mean).

    The std is the sample standard deviation (ddof=1), NaN for a single fold.
    """
    if not fold_metrics:
        raise ValueError("no folds to aggregate")
    out: dict[str, float] = {}
    for key in fold_metrics[0]:
        values = np.array([m[key] for m in fold_metrics], dtype=np.float64)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return out


@dataclasses.dataclass(frozen=True)
class EmotionTask(TaskSpec):
    name: ClassVar[str] = "emotion"
    kind: ClassVar[str] = "classification"
    loss: ClassVar[str] = "cross_entropy"
    classes: ClassVar[tuple[str, ...]] = EMOTIONS
    num_labels: ClassVar[int] = len(EMOTIONS)
    # UA, not WA: neutral is the largest class, and selecting on WA favours it.
    selection_metric: ClassVar[str] = "ua"
    higher_is_better: ClassVar[bool] = True

    dev_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.dev_fraction <= 0.5:
            raise ValueError(f"dev_fraction must be in (0, 0.5], got {self.dev_fraction}")

    @property
    def label_names(self) -> tuple[str, ...]:
        return EMOTIONS

    def label_of(self, sample: Sample) -> int:
        emotion = sample_label(sample, "emotion")
        if emotion not in EMOTIONS:
            raise ValueError(
                f"sample {sample_field(sample, 'id')!r}: emotion {emotion!r} not in {EMOTIONS}"
            )
        return EMOTIONS.index(emotion)

    def splits(self, records: Iterable[Record]) -> list[Split]:
        """One fold per session present (5 on IEMOCAP): test = that session, dev and
        train = the other sessions, divided as described in the module docstring."""
        records = sorted(records, key=lambda r: r.id)
        session = {r.id: session_of(r) for r in records}
        label = {r.id: self.label_of(r) for r in records}
        sessions = sorted(set(session.values()))
        if len(sessions) < 2:
            raise ValueError(f"leave-one-session-out needs 2+ sessions, found {sessions}")
        folds = []
        for k in sessions:
            test = tuple(u for u in session if session[u] == k)
            pool = [u for u in session if session[u] != k]
            dev = set(self._dev_ids(pool, label))
            train = tuple(u for u in pool if u not in dev)
            folds.append(Split(f"fold{k}", train, tuple(u for u in pool if u in dev), test))
        return folds

    def _dev_ids(self, pool: list[str], label: Mapping[str, int]) -> list[str]:
        n_splits = round(1 / self.dev_fraction)
        groups = [dialogue_of(u) for u in pool]
        if len(set(groups)) < n_splits:
            raise ValueError(
                f"a {self.dev_fraction:.0%} dialogue-grouped dev split needs {n_splits}+ "
                f"dialogues in the training sessions, found {len(set(groups))}"
            )
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=self.seed)
        _, dev_index = next(splitter.split(pool, [label[u] for u in pool], groups))
        return [pool[i] for i in dev_index]

    def metrics(self, preds, labels) -> dict[str, float]:
        """``wa`` and ``ua``; ``preds`` are class indices [N] or logits [N, C]."""
        preds = class_indices(preds)
        return {"wa": weighted_accuracy(labels, preds), "ua": unweighted_accuracy(labels, preds)}

    def confusion(self, preds, labels) -> np.ndarray:
        """Confusion matrix, rows true and columns predicted, in :data:`EMOTIONS` order."""
        return confusion_matrix(labels, class_indices(preds), range(len(EMOTIONS)))
