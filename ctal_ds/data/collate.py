"""Collators: decoded shard samples -> the padded batch dict of docs/contracts.md.

The loader calls ``collator(samples, epoch)`` inside its worker processes, so
collators are plain picklable dataclasses. Masking randomness comes from
(seed, epoch, sample key) only (see :mod:`ctal_ds.data.masking`), so the
corruption of a sample does not depend on which batch, worker or rank it is
collated in, and a resumed job reproduces it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import torch

from ctal_ds.data.masking import (
    IGNORE_INDEX,
    MCAM_STREAM,
    MLM_STREAM,
    PAD_ID,
    REPLACE,
    SPECIAL_IDS,
    ZERO,
    MCAMMasker,
    MLMMasker,
    sample_rng,
)
from ctal_ds.data.shard_reader import ShardSample

# Batches are assembled in numpy and handed to torch once at the end, except for the
# frame tensors: their float16 -> float32 conversion is a torch copy (numpy's is ten times
# slower), and inside a DataLoader worker they are allocated in shared memory, where the
# DataLoader would otherwise copy them to send them to the main process. Those copies
# run on the calling thread alone (serial_copy): torch splits larger ones over its
# threads, and on a loaded machine, or in the main process with num_workers=0, the
# thread hand-offs cost more than the copies.


def _pad_1d(rows: Sequence[np.ndarray], value: int) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


# Element count below which torch runs an element-wise kernel on the calling thread
# (at::internal::GRAIN_SIZE).
SERIAL_ELEMENTS = 32767


def serial_copy(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``dst.copy_(src)`` (same shapes, any dtypes) on the calling thread alone: in
    pieces along the leading dims too small for torch to split over threads."""
    if torch.get_num_threads() == 1 or dst.numel() <= SERIAL_ELEMENTS:
        return dst.copy_(src)
    if dst.dim() > 2:
        for d, s in zip(dst, src):
            serial_copy(d, s)
        return dst
    rows = max(1, SERIAL_ELEMENTS // max(1, dst[0].numel()))
    for start in range(0, dst.shape[0], rows):
        dst[start : start + rows].copy_(src[start : start + rows])
    return dst


def _frame_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor, in shared memory inside a DataLoader worker."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    storage = torch.UntypedStorage._new_shared(4 * int(np.prod(shape)))
    return torch.tensor([], dtype=torch.float32).set_(storage, 0, shape)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory, only ever read from (decoded samples are
    read-only views of the shard bytes, which torch.from_numpy warns about)."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _pad_frames(rows: Sequence[np.ndarray]) -> torch.Tensor:
    """float32 [B, max T, D] of [T, D] rows, zeros past each row's end."""
    out = _frame_tensor((len(rows), max(r.shape[0] for r in rows), rows[0].shape[1]))
    zeros = torch.zeros((1, 1), dtype=torch.float32)
    for i, row in enumerate(rows):
        serial_copy(out[i, : row.shape[0]], _as_tensor(row))
        padding = out[i, row.shape[0] :]
        if padding.numel():
            serial_copy(padding, zeros.expand_as(padding))
    return out


def _lengths_mask(lengths: Sequence[int]) -> np.ndarray:
    lengths_np = np.asarray(lengths)
    return np.arange(int(lengths_np.max()))[None, :] < lengths_np[:, None]


def _base_batch(samples: Sequence[ShardSample], pad_id: int, with_ids: bool = True) -> dict[str, Any]:
    """The uncorrupted inputs every task shares, as numpy arrays (see _to_torch);
    ``audio_feats`` is already a tensor."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    return {
        "input_ids": _pad_1d([s.tokens for s in samples], pad_id) if with_ids else None,
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
        batch = _base_batch(samples, self.pad_id, with_ids=False)
        targets = batch["audio_feats"]
        batch["audio_feats"] = serial_copy(_frame_tensor(tuple(targets.shape)), targets)
        batch["mcam_targets"] = targets
        batch["input_ids"], batch["mlm_labels"] = self.mlm_batch(samples, epoch)
        batch["mcam_mask"] = self.mcam_batch(samples, epoch, batch["audio_feats"].numpy(), targets.numpy())
        return _to_torch(batch)

    def mlm_batch(self, samples: Sequence[ShardSample], epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, mlm_labels), int64 [B, max L], padded."""
        input_ids = np.full((len(samples), max(len(s.tokens) for s in samples)), self.pad_id, dtype=np.int64)
        labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
        for i, s in enumerate(samples):
            if self.mlm:
                ids, row = self._mlm(s.tokens, sample_rng(self.seed, epoch, s.key, MLM_STREAM))
                labels[i, : len(row)] = row
            else:
                ids = s.tokens
            input_ids[i, : len(ids)] = ids
        return input_ids, labels

    def mcam_batch(
        self, samples: Sequence[ShardSample], epoch: int, frames: np.ndarray, targets: np.ndarray
    ) -> np.ndarray:
        """Corrupt ``frames`` [B, T, D] (a padded copy of ``targets``, the original frames)
        in place by each sample's MCAM plan; returns the bool loss mask [B, T]. The same
        corruption as ``MCAMMasker.__call__`` on each sample alone."""
        mask = np.zeros(frames.shape[:2], dtype=bool)
        if not self.mcam:
            return mask
        for i, s in enumerate(samples):
            plan = self._mcam.plan(s.n_frames, sample_rng(self.seed, epoch, s.key, MCAM_STREAM))
            c = plan.seg_len
            for start, op, source in zip(plan.starts[plan.selected].tolist(), plan.ops.tolist(), plan.sources.tolist()):
                mask[i, start : start + c] = True
                if op == ZERO:
                    frames[i, start : start + c] = 0.0
                elif op == REPLACE:
                    frames[i, start : start + c] = targets[i, source : source + c]
        return mask


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
        batch = _to_torch(_base_batch(samples, self.pad_id))
        batch["labels"] = torch.tensor([self._label_of(s) for s in samples], dtype=self.dtype)
        return batch
