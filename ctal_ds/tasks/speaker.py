"""LibriSpeech speaker verification (paper section 4.2.3).

Fine-tuning is speaker classification over the training speakers (train-clean-100,
train-clean-360, train-other-500: every split whose name starts with ``train`` unless
told otherwise); class k is the k-th training speaker in sorted order. Evaluation
takes the embeddings before the classifier on ``test-clean``, whose 40 speakers are
unseen in training, and scores a fixed trial list (``trials.py``, ``verification.py``).

Dev (checkpoint selection, speaker accuracy): ``dev_fraction`` of each training
speaker's utterances, seeded; speakers with a single utterance stay wholly in train,
so every class is trained on.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Iterable
from typing import ClassVar

from ctal_ds.data.records import Record
from ctal_ds.tasks.base import Sample, Split, TaskSpec, class_indices, sample_field
from ctal_ds.tasks.metrics import weighted_accuracy
from ctal_ds.tasks.subsets import subsample


def is_training(split: str, train_subsets: tuple[str, ...] | None = None) -> bool:
    """Whether a LibriSpeech subset trains the speaker classifier."""
    return split.startswith("train") if train_subsets is None else split in train_subsets


@dataclasses.dataclass(frozen=True)
class SpeakerTask(TaskSpec):
    name: ClassVar[str] = "speaker"
    kind: ClassVar[str] = "speaker"
    loss: ClassVar[str] = "cross_entropy"
    selection_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    speakers: tuple[str, ...]  # training speakers, sorted: class index = position
    train_subsets: tuple[str, ...] | None = None  # None: every split starting with "train"
    test_subset: str = "test-clean"
    dev_fraction: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if list(self.speakers) != sorted(set(self.speakers)):
            raise ValueError("speakers must be sorted and unique (class index = sorted position)")
        if not 0.0 < self.dev_fraction <= 0.5:
            raise ValueError(f"dev_fraction must be in (0, 0.5], got {self.dev_fraction}")

    @classmethod
    def from_records(cls, records: Iterable[Record], **settings) -> SpeakerTask:
        """The task whose classes are the speakers of the training subsets of ``records``."""
        subsets = settings.get("train_subsets")
        speakers = sorted({r.speaker for r in records if is_training(r.split, subsets)})
        if not speakers:
            raise ValueError("no records in the training subsets")
        return cls(speakers=tuple(speakers), **settings)

    @property
    def num_labels(self) -> int:  # type: ignore[override]
        return len(self.speakers)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.speakers

    def label_of(self, sample: Sample) -> int:
        speaker = sample_field(sample, "speaker")
        index = self._class_of.get(speaker)
        if index is None:
            raise KeyError(
                f"sample {sample_field(sample, 'id')!r}: speaker {speaker!r} is not a training speaker"
            )
        return index

    @functools.cached_property
    def _class_of(self) -> dict[str, int]:
        return {s: k for k, s in enumerate(self.speakers)}

    def splits(self, records: Iterable[Record]) -> list[Split]:
        """Train and dev from the training subsets, test = ``test_subset``. Fails when the
        training speakers are not this task's classes, or a test speaker was trained on."""
        records = sorted(records, key=lambda r: r.id)
        training = [r for r in records if is_training(r.split, self.train_subsets)]
        test = [r for r in records if r.split == self.test_subset]
        if sorted({r.speaker for r in training}) != list(self.speakers):
            raise ValueError(
                "the training speakers of these records differ from the task's classes"
            )
        if not test:
            raise ValueError(f"no records in test subset {self.test_subset!r}")
        leaked = sorted({r.speaker for r in test} & set(self.speakers))
        if leaked:
            raise ValueError(
                f"{len(leaked)} {self.test_subset} speaker(s) are training speakers, e.g. {leaked[0]}"
            )
        per_speaker = collections.Counter(r.speaker for r in training)
        eligible = [r for r in training if per_speaker[r.speaker] > 1]
        dev = set(
            subsample(
                [r.id for r in eligible],
                self.dev_fraction,
                self.seed,
                [r.speaker for r in eligible],
            )
        )
        return [
            Split(
                "librispeech",
                tuple(r.id for r in training if r.id not in dev),
                tuple(r.id for r in training if r.id in dev),
                tuple(r.id for r in test),
            )
        ]

    def metrics(self, preds, labels) -> dict[str, float]:
        """``accuracy`` of speaker classification; ``preds`` are indices [N] or logits [N, C]."""
        return {"accuracy": weighted_accuracy(labels, class_indices(preds))}
