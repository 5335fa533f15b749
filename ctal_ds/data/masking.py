"""Pre-training corruptions of CTAL (paper section 3.2): MLM on text, MCAM on audio.

Both maskers work on one utterance at a time with a caller-supplied
``numpy.random.Generator``; the collator derives that generator from
(seed, epoch, sample key) with :func:`sample_rng`, so a sample gets the same
masks whatever batch, worker or rank it lands in, and a resumed job reproduces
them exactly. Each epoch draws new masks (dynamic masking, as in RoBERTa).

Choices where the paper leaves room, fixed here:

- How many positions are selected: ``p * n`` is rounded stochastically
  (``floor(p * n + u)``, ``u ~ U[0, 1)``) so the expected fraction is exactly
  ``p`` at every length, then raised to at least one when the utterance has
  anything maskable. A short utterance thus always contributes a loss term;
  the price is a selected fraction above ``p`` for utterances with fewer than
  ``1 / p`` (about 7) maskable tokens or segments.
- The 80/10/10 split is drawn independently per selected token or segment.
- MLM never selects the special tokens (``<s> <pad> </s> <unk> <mask>``), and
  its random replacement is drawn uniformly from the non-special ids; it may
  equal the original id, as in BERT.
- MCAM draws one segment length ``C ~ U{seg_min..seg_max}`` per utterance (the
  paper's "C consecutive frames per segment", read as one C for the split), and
  lays the grid of ``floor(T / C)`` segments at a random offset in
  ``[0, T mod C]``, so the frames left over are not always the last ones.
  ``C`` is capped at ``T``: any utterance of at least ``seg_min`` frames has one
  segment or more; a shorter one has none and no MCAM loss positions.
- MCAM replacement ("the other C randomly selected frames within the audio")
  copies the ORIGINAL frames of a window of C frames starting at a random
  offset chosen so the window does not overlap the segment it replaces; when
  the utterance is shorter than 2C no such window exists and any other offset
  is used (the windows then overlap); with T == C the only window is the
  segment itself, so the segment is effectively kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection

import numpy as np

# Token ids shared by every component (docs/contracts.md).
BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_IDS = (BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID)

# Label value the cross-entropy loss ignores (torch's default ignore_index).
IGNORE_INDEX = -100

# Separate random streams per purpose, so switching MLM off for an ablation does
# not change the MCAM masks of the same samples (and vice versa).
MLM_STREAM = 1
MCAM_STREAM = 2

# MCAM operations on a selected segment.
ZERO, REPLACE, KEEP = 0, 1, 2


def key_hash(key: str) -> int:
    """A 64-bit hash of a sample key that is the same in every process.

    Python's ``hash`` of a str is salted per process, which would give each
    DataLoader worker and each resumed job different masks.
    """
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def sample_rng(seed: int, epoch: int, key: str, stream: int) -> np.random.Generator:
    """The generator for one sample's corruption of one kind in one epoch."""
    return np.random.default_rng([seed, epoch, key_hash(key), stream])


def _count_selected(n: int, prob: float, rng: np.random.Generator) -> int:
    """Stochastically rounded ``prob * n``, at least one when ``n > 0`` (module docstring)."""
    if n == 0:
        return 0
    return min(n, max(1, int(np.floor(prob * n + rng.random()))))


@dataclasses.dataclass(frozen=True)
class MLMMasker:
    """Masked language modelling (section 3.2.1): 15 %, then 80 % <mask> / 10 % random / 10 % kept."""

    vocab_size: int
    mask_id: int = MASK_ID
    special_ids: Collection[int] = SPECIAL_IDS
    prob: float = 0.15
    mask_frac: float = 0.8
    random_frac: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.prob <= 1.0:
            raise ValueError(f"MLM probability must be in (0, 1], got {self.prob}")
        if self.mask_frac + self.random_frac > 1.0:
            raise ValueError("mask_frac + random_frac must not exceed 1")
        replacements = np.setdiff1d(np.arange(self.vocab_size), np.asarray(list(self.special_ids)))
        if replacements.size == 0:
            raise ValueError(f"vocabulary of {self.vocab_size} ids has no non-special token")
        specials = np.asarray(sorted(self.special_ids), dtype=np.int64)
        object.__setattr__(self, "_specials", specials)
        # special[id] for ids 0..max special: np.isin's result by one lookup (ids above it,
        # and negative ones, are not special).
        table = np.zeros(int(specials.max(initial=-1)) + 2, dtype=bool)
        table[specials[specials >= 0]] = True
        object.__setattr__(self, "_special_table", table)
        object.__setattr__(self, "_replacements", replacements.astype(np.int64))

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Corrupt one utterance's ids; returns (input_ids, labels), both int64 [L].

        labels hold the original id at selected positions and IGNORE_INDEX elsewhere.
        """
        original = np.asarray(tokens, dtype=np.int64)
        table = self._special_table
        maskable = np.flatnonzero(~table[np.clip(original, -1, table.size - 1)])
        selected = rng.permutation(maskable)[: _count_selected(maskable.size, self.prob, rng)]
        labels = np.full_like(original, IGNORE_INDEX)
        labels[selected] = original[selected]
        corrupted = original.copy()
        draw = rng.random(selected.size)
        to_mask = selected[draw < self.mask_frac]
        to_random = selected[(draw >= self.mask_frac) & (draw < self.mask_frac + self.random_frac)]
        corrupted[to_mask] = self.mask_id
        corrupted[to_random] = rng.choice(self._replacements, size=to_random.size)
        return corrupted, labels


@dataclasses.dataclass(frozen=True)
class MCAMPlan:
    """The segment grid of one utterance and what happens to each selected segment.

    seg_len:  C, frames per segment.
    starts:   first frame of every segment of the grid, ascending.
    selected: indices into ``starts`` of the segments that get a loss.
    ops:      ZERO / REPLACE / KEEP for each selected segment.
    sources:  for REPLACE, the first frame of the window copied in (else -1).
    """

    seg_len: int
    starts: np.ndarray
    selected: np.ndarray
    ops: np.ndarray
    sources: np.ndarray


@dataclasses.dataclass(frozen=True)
class MCAMMasker:
    """Masked cross-modal acoustic modelling (section 3.2.2) on [T, D] frames."""

    prob: float = 0.15
    seg_min: int = 20
    seg_max: int = 50
    zero_frac: float = 0.8
    replace_frac: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.prob <= 1.0:
            raise ValueError(f"MCAM probability must be in (0, 1], got {self.prob}")
        if not 1 <= self.seg_min <= self.seg_max:
            raise ValueError(f"need 1 <= seg_min <= seg_max, got {self.seg_min}, {self.seg_max}")
        if self.zero_frac + self.replace_frac > 1.0:
            raise ValueError("zero_frac + replace_frac must not exceed 1")

    def plan(self, n_frames: int, rng: np.random.Generator) -> MCAMPlan:
        """Draw the segment grid and the selection for an utterance of ``n_frames`` frames."""
        if n_frames < self.seg_min:
            empty = np.zeros(0, dtype=np.int64)
            return MCAMPlan(0, empty, empty, empty, empty)
        seg_len = int(rng.integers(self.seg_min, min(self.seg_max, n_frames) + 1))
        n_segments = n_frames // seg_len
        offset = int(rng.integers(0, n_frames - n_segments * seg_len + 1))
        starts = offset + seg_len * np.arange(n_segments, dtype=np.int64)
        selected = np.sort(
            rng.permutation(n_segments)[: _count_selected(n_segments, self.prob, rng)]
        )
        draw = rng.random(selected.size)
        ops = np.full(selected.size, KEEP, dtype=np.int64)
        ops[draw < self.zero_frac] = ZERO
        ops[(draw >= self.zero_frac) & (draw < self.zero_frac + self.replace_frac)] = REPLACE
        sources = np.full(selected.size, -1, dtype=np.int64)
        for i in np.flatnonzero(ops == REPLACE):
            sources[i] = self._source_window(int(starts[selected[i]]), seg_len, n_frames, rng)
        return MCAMPlan(seg_len, starts, selected, ops, sources)

    @staticmethod
    def _source_window(start: int, seg_len: int, n_frames: int, rng: np.random.Generator) -> int:
        """Start of a window of ``seg_len`` other frames (module docstring)."""
        last = n_frames - seg_len
        # Offsets in [0, start - C] and [start + C, last] give windows that do not
        # overlap the segment; draw uniformly over their union when it is not empty.
        left = max(0, start - seg_len + 1)
        right = max(0, last - (start + seg_len) + 1)
        if left + right > 0:
            u = int(rng.integers(0, left + right))
            return u if u < left else start + seg_len + (u - left)
        if last == 0:
            return start
        other = int(rng.integers(0, last))
        return other if other < start else other + 1

    def apply(self, feats: np.ndarray, plan: MCAMPlan) -> tuple[np.ndarray, np.ndarray]:
        """Corrupt ``feats`` [T, D] by ``plan``; returns (float32 frames, bool loss mask [T])."""
        original = np.asarray(feats, dtype=np.float32)
        corrupted = original.copy()
        loss_mask = np.zeros(original.shape[0], dtype=bool)
        c = plan.seg_len
        for segment, op, source in zip(plan.selected, plan.ops, plan.sources):
            s = int(plan.starts[segment])
            loss_mask[s : s + c] = True
            if op == ZERO:
                corrupted[s : s + c] = 0.0
            elif op == REPLACE:
                corrupted[s : s + c] = original[source : source + c]
        return corrupted, loss_mask

    def __call__(self, feats: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.apply(feats, self.plan(int(feats.shape[0]), rng))
