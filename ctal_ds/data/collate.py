"""Collators: decoded shard samples -> the padded batch dict of docs/contracts.md.

The loader calls ``collator(samples, epoch)`` inside its worker processes, so
collators are plain picklable dataclasses. Masking randomness comes from
(seed, epoch, sample key) only (see :mod:`ctal_ds.data.masking`), so the
corruption of a sample does not depend on which batch, worker or rank it is
collated in, and a resumed job reproduces it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import torch

from ctal_ds.data.masking import (
    IGNORE_INDEX,
    MCAM_STREAM,
    MLM_STREAM,
    PAD_ID,
    SPECIAL_IDS,
    MCAMMasker,
    MLMMasker,
    sample_rng,
)
from ctal_ds.data.shard_reader import ShardSample

# Batches are assembled in numpy and handed to torch once at the end: torch's
# element-wise copies are multi-threaded, and on a loaded machine (or in the main
# process with num_workers=0) the thread hand-offs cost more than the copies.


def _pad_1d(rows: Sequence[np.ndarray], value: int) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _pad_frames(rows: Sequence[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(rows), max(r.shape[0] for r in rows), rows[0].shape[1]), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return out


def _lengths_mask(lengths: Sequence[int]) -> np.ndarray:
    lengths_np = np.asarray(lengths)
    return np.arange(int(lengths_np.max()))[None, :] < lengths_np[:, None]


def _base_batch(samples: Sequence[ShardSample], pad_id: int) -> dict[str, Any]:
    """The uncorrupted inputs every task shares, as numpy arrays (see _to_torch)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    return {
        "input_ids": _pad_1d([s.tokens for s in samples], pad_id),
        "text_mask": _lengths_mask([len(s.tokens) for s in samples]),
        "audio_feats": _pad_frames([s.feats for s in samples]),
        "audio_mask": _lengths_mask([s.n_frames for s in samples]),
        "keys": [s.key for s in samples],
    }


def _to_torch(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


@dataclasses.dataclass(frozen=True)
class PretrainCollator:
    """MLM + MCAM corruption (section 3.2) and padding.

    ``mlm=False`` / ``mcam=False`` switch a task off for the ablations of
    table 4: that modality is then left uncorrupted and gets no loss
    positions (``mlm_labels`` all IGNORE_INDEX, ``mcam_mask`` all False), while
    the other modality's masks stay exactly as with both tasks on.
    """

    pad_id: int
    mask_id: int
    vocab_size: int
    mlm_prob: float = 0.15
    mcam_prob: float = 0.15
    seg_min: int = 20
    seg_max: int = 50
    seed: int = 0
    mlm: bool = True
    mcam: bool = True
    special_ids: Collection[int] = SPECIAL_IDS

    def __post_init__(self) -> None:
        mlm = MLMMasker(self.vocab_size, self.mask_id, tuple(self.special_ids), self.mlm_prob)
        mcam = MCAMMasker(self.mcam_prob, self.seg_min, self.seg_max)
        object.__setattr__(self, "_mlm", mlm)
        object.__setattr__(self, "_mcam", mcam)

    def __call__(self, samples: Sequence[ShardSample], epoch: int = 0) -> dict[str, Any]:
        batch = _base_batch(samples, self.pad_id)
        batch["mcam_targets"] = batch["audio_feats"].copy()
        input_ids, mlm_labels = [], []
        for s in samples:
            if self.mlm:
                ids, labels = self._mlm(s.tokens, sample_rng(self.seed, epoch, s.key, MLM_STREAM))
            else:
                ids, labels = s.tokens, np.full(len(s.tokens), IGNORE_INDEX, dtype=np.int64)
            input_ids.append(ids)
            mlm_labels.append(labels)
        batch["input_ids"] = _pad_1d(input_ids, self.pad_id)
        batch["mlm_labels"] = _pad_1d(mlm_labels, IGNORE_INDEX)
        mcam_mask = np.zeros_like(batch["audio_mask"])
        if self.mcam:
            for i, s in enumerate(samples):
                frames, mask = self._mcam(s.feats, sample_rng(self.seed, epoch, s.key, MCAM_STREAM))
                batch["audio_feats"][i, : s.n_frames] = frames
                mcam_mask[i, : s.n_frames] = mask
        batch["mcam_mask"] = mcam_mask
        return _to_torch(batch)


LabelSource = str | Callable[[dict[str, Any]], Any]


@dataclasses.dataclass(frozen=True)
class FinetuneCollator:
    """Padding plus a task label, no corruption.

    label:   a field of the sample JSON's ``labels`` (``"emotion"``,
             ``"sentiment"``) or a callable from the sample JSON to the label.
             It must be picklable (a module-level function) to reach the
             loader's worker processes.
    classes: for class labels, the class names in index order; the label is
             then the index of its name. Without it labels are used as numbers.
    dtype:   torch.int64 for classes, torch.float32 for regression targets.
    """

    label: LabelSource
    classes: Sequence[str] | None = None
    dtype: torch.dtype = torch.int64
    pad_id: int = PAD_ID

    def _label_of(self, sample: ShardSample) -> Any:
        if callable(self.label):
            value = self.label(sample.meta)
        else:
            labels = sample.meta.get("labels", {})
            if self.label not in labels:
                raise KeyError(f"sample {sample.key} in {sample.shard} has no label {self.label!r}")
            value = labels[self.label]
        if self.classes is not None:
            if value not in self.classes:
                raise ValueError(f"sample {sample.key}: label {value!r} not in {list(self.classes)}")
            return list(self.classes).index(value)
        return value

    def __call__(self, samples: Sequence[ShardSample], epoch: int = 0) -> dict[str, Any]:
        batch = _base_batch(samples, self.pad_id)
        batch = _to_torch(batch)
        batch["labels"] = torch.tensor([self._label_of(s) for s in samples], dtype=self.dtype)
        return batch
