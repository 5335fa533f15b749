"""What every downstream task tells the generic fine-tune loop (paper section 4.2).

A task is a small frozen description: how to read a label from a sample, how many
outputs the head has, which loss trains it, how the corpus splits into train / dev /
test (one split, or one per cross-validation fold), which metrics to report and which
one selects the checkpoint. It holds no model and no data: the fine-tune loop reads
shard samples and asks the task.

A *sample* is either a :class:`~ctal_ds.data.records.Record` or the JSON object stored
beside it in a shard (``id``, ``speaker``, ``split``, ``labels``; docs/contracts.md).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from ctal_ds.data.records import Record

Sample = Record | Mapping[str, Any]


def sample_field(sample: Sample, name: str) -> Any:
    """``id`` / ``speaker`` / ``split`` / ``labels`` of a record or of a shard sample JSON."""
    if isinstance(sample, Record):
        return getattr(sample, name)
    try:
        return sample[name]
    except KeyError:
        raise KeyError(f"sample {sample.get('id', '?')!r} has no field {name!r}") from None


def sample_label(sample: Sample, key: str) -> Any:
    labels = sample_field(sample, "labels") or {}
    if key not in labels:
        raise KeyError(f"sample {sample_field(sample, 'id')!r} has no label {key!r}")
    return labels[key]


def class_indices(preds: Any) -> np.ndarray:
    """Predicted classes from class indices [N] or logits / probabilities [N, C]."""
    preds = np.asarray(preds)
    return preds.argmax(axis=1) if preds.ndim == 2 else preds


@dataclasses.dataclass(frozen=True)
class Split:
    """Utterance ids of one train / dev / test partition; ``name`` is e.g. ``fold3``."""

    name: str
    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        # A leak between partitions silently inflates every reported number: refuse it.
        for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
            shared = set(getattr(self, a)) & set(getattr(self, b))
            if shared:
                raise ValueError(
                    f"{self.name}: {len(shared)} id(s) in both {a} and {b}, e.g. {min(shared)}"
                )


class TaskSpec(abc.ABC):
    """The interface of a downstream task; subclasses are frozen dataclasses of their
    own settings (seed, dev fraction, subsets) and fix these attributes.

    name:             registry name (``emotion``, ``sentiment``, ``speaker``).
    kind:             ``classification`` | ``regression`` | ``speaker``.
    loss:             ``cross_entropy`` (targets are class indices) or ``l1`` (floats).
    num_labels:       output size of the task head (1 for regression).
    selection_metric: key of :meth:`metrics` that picks the checkpoint on dev.
    higher_is_better: direction of ``selection_metric``.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["classification", "regression", "speaker"]]
    loss: ClassVar[Literal["cross_entropy", "l1"]]
    num_labels: int
    selection_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]

    @abc.abstractmethod
    def label_of(self, sample: Sample) -> int | float:
        """The training target of one sample."""

    @abc.abstractmethod
    def splits(self, records: Iterable[Record]) -> list[Split]:
        """Train / dev / test ids: one :class:`Split`, or one per fold."""

    @abc.abstractmethod
    def metrics(self, preds: Any, labels: Sequence) -> dict[str, float]:
        """Metrics of predictions (logits, class indices or scores) against targets."""

    @property
    def label_names(self) -> tuple[str, ...] | None:
        """Name of each output class in index order (saved with the model), or None."""
        return None

    def is_better(self, candidate: float, best: float | None) -> bool:
        """Whether ``candidate`` of ``selection_metric`` beats the best seen so far."""
        if best is None:
            return True
        return candidate > best if self.higher_is_better else candidate < best
