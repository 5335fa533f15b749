"""What each DataLoader worker runs: shards -> checked samples -> planned batches -> collated batches.

Every stage is a module-level callable class (picklable, so worker processes
may be forked or spawned), composed with ``webdataset.DataPipeline``. The
planning stages see only sample lengths; decoding (which derives the features of
shards in a logmel encoding, ``ctal_ds.data.feature_encoding``), masking and padding
happen after the resume fast-forward has dropped the batches a previous run already
consumed, so fast-forwarding costs reading and checking, not collating.

A worker's output is a deterministic function of (seed, epoch, rank,
world_size, logical worker, num_workers) and the shard contents. Each item it
yields carries its position (logical worker, epoch, batch index, last of its
epoch) and the damage seen since the previous item, for the main process to
keep the resume state and the damage count.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import webdataset as wds

from ctal_ds.data.bucketing import plan_batches, plan_dealt_batches
from ctal_ds.data.damage import DamageEvent, SampleDamage
from ctal_ds.data.feature_encoding import StoredFeatures
from ctal_ds.data.shard_list import ShardSet, shards_for_worker
from ctal_ds.data.shard_reader import (
    RawSample,
    SampleError,
    ShardSample,
    decode_sample,
    inspect_sample,
    read_shard,
)

# Random stream of the per-epoch batch order (other streams: masking, shard order).
BATCH_ORDER_STREAM = 4

Collator = Callable[[Sequence[ShardSample], int], dict[str, Any]]
Planned = tuple[RawSample, int]  # a checked sample and its frame count


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """How samples are grouped into batches.

    max_frames_per_batch: bound on ``batch size x longest utterance`` (padded
        frames), the quantity that decides activation memory. Set it above the
        longest utterance: one longer utterance becomes a batch of its own.
    max_batch_size: bound on utterances per batch (text side, attention calls).
    bucket_buffer: samples gathered and sorted by length before cutting; more
        means less padding but more memory per worker (about bucket_buffer x
        average sample size: 256 x ~0.3 MB for LibriSpeech) and less mixing
        across shards in one batch.
    bucketing: sort within the buffer; False cuts batches in stream order
        under the same budget (for comparison).
    """

    max_frames_per_batch: int = 16000
    max_batch_size: int = 64
    bucket_buffer: int = 256
    bucketing: bool = True

    def __post_init__(self) -> None:
        if min(self.max_frames_per_batch, self.max_batch_size, self.bucket_buffer) < 1:
            raise ValueError(f"batch limits must be positive: {self}")


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """What a valid sample looks like beyond the member names."""

    feat_dim: int = 160
    vocab_size: int | None = None


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where this loader sits in the job. ``num_workers`` 0 counts as one logical worker."""

    rank: int
    world_size: int
    num_workers: int

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)


class StreamItem(NamedTuple):
    """One worker output. A NamedTuple so that ``pin_memory`` reaches the tensors in ``batch``."""

    worker: int
    epoch: int
    index: int
    last: bool
    batch: dict[str, Any] | None  # None: a final item that only carries damage
    damage: tuple[DamageEvent, ...]


@dataclasses.dataclass(frozen=True)
class ShardSource:
    """Pipeline source: (url, manifest sample count) pairs in reading order."""

    shards: ShardSet
    indices: tuple[int, ...]

    def __call__(self) -> Iterator[tuple[str, int | None]]:
        for i in self.indices:
            yield self.shards.urls[i], self.shards.samples[i]


@dataclasses.dataclass(frozen=True)
class ReadSamples:
    damage: list[DamageEvent]

    def __call__(self, shards: Iterable[tuple[str, int | None]]) -> Iterator[RawSample]:
        for url, expected in shards:
            yield from read_shard(url, self.damage, expected)


@dataclasses.dataclass(frozen=True)
class CheckSamples:
    spec: SampleSpec
    damage: list[DamageEvent]
    stored: StoredFeatures = StoredFeatures()

    def __call__(self, samples: Iterable[RawSample]) -> Iterator[Planned]:
        for raw in samples:
            try:
                yield raw, inspect_sample(raw, self.spec.feat_dim, self.spec.vocab_size, self.stored)
            except SampleError as exc:
                self.damage.append(SampleDamage(raw.shard, raw.key, str(exc)))


@dataclasses.dataclass(frozen=True)
class BucketBatches:
    """Buffer, sort by length, cut under the budget, shuffle the batch order."""

    config: BatchConfig
    order_seed: tuple[int, ...]

    def __call__(self, samples: Iterable[Planned]) -> Iterator[list[Planned]]:
        # Shuffled so that a run of batches is not a ramp of growing lengths.
        rng = np.random.default_rng(list(self.order_seed))
        buffer: list[Planned] = []
        for item in samples:
            buffer.append(item)
            if len(buffer) >= self.config.bucket_buffer:
                yield from self._plan(buffer, rng)
                buffer = []
        if buffer:
            yield from self._plan(buffer, rng)

    def _plan(self, buffer: list[Planned], rng: np.random.Generator) -> Iterator[list[Planned]]:
        c = self.config
        batches = plan_batches([n for _, n in buffer], c.max_frames_per_batch, c.max_batch_size, c.bucketing)
        order = rng.permutation(len(batches)) if c.bucketing else range(len(batches))
        for i in order:
            yield [buffer[j] for j in batches[i]]


@dataclasses.dataclass(frozen=True)
class DealtBatches:
    """Every rank reads the same samples; each keeps its member of every row (bucketing.plan_dealt_batches).

    The buffer holds ``max(bucket_buffer, world_size)`` samples of all ranks;
    ``world_size`` more are held back so that the last buffer of the stream is
    never shorter than one full row.
    """

    config: BatchConfig
    rank: int
    world_size: int
    damage: list[DamageEvent]

    def __call__(self, samples: Iterable[Planned]) -> Iterator[list[Planned]]:
        size = max(self.config.bucket_buffer, self.world_size)
        buffer: list[Planned] = []
        for item in samples:
            buffer.append(item)
            if len(buffer) == size + self.world_size:
                yield from self._plan(buffer[:size])
                buffer = buffer[size:]
        if len(buffer) < self.world_size:
            raise ValueError(
                f"an evaluation worker's shards hold {len(buffer)} readable sample(s), fewer than "
                f"the {self.world_size} ranks that must each get one; use fewer loader workers. "
                f"Damage seen: {self.damage or 'none'}"
            )
        yield from self._plan(buffer)

    def _plan(self, buffer: list[Planned]) -> Iterator[list[Planned]]:
        c = self.config
        lengths = [n for _, n in buffer]
        plan = plan_dealt_batches(
            lengths, self.world_size, c.max_frames_per_batch, c.max_batch_size, c.bucketing
        )
        for rows in plan:
            yield [buffer[row[self.rank]] for row in rows if self.rank < len(row)]


def _with_last(items: Iterable[Any]) -> Iterator[tuple[int, Any, bool]]:
    """(index, item, is_last) with one item of look-ahead."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for index in itertools.count():
        try:
            following = next(iterator)
        except StopIteration:
            yield index, current, True
            return
        yield index, current, False
        current = following


def _collate(collator: Collator, batch: list[Planned], epoch: int, stored: StoredFeatures) -> dict[str, Any]:
    """Decode (deriving the features of the logmel encodings) and collate one batch."""
    return collator([decode_sample(raw, stored) for raw, _ in batch], epoch)


class TrainStream(torch.utils.data.IterableDataset):
    """An endless stream of batches for one rank: epoch after epoch, each freshly shuffled.

    rotation: logical worker of DataLoader worker 0; a resumed loader rotates
        the workers so that the round-robin interleaving continues where it
        stopped (see ``ShardLoader``).
    start: per logical worker, (epoch, batches of that epoch already consumed).
    """

    def __init__(
        self,
        shards: ShardSet,
        batching: BatchConfig,
        spec: SampleSpec,
        collator: Collator,
        seed: int,
        layout: Layout,
        rotation: int,
        start: Sequence[tuple[int, int]],
    ) -> None:
        super().__init__()
        self.shards, self.batching, self.spec, self.collator = shards, batching, spec, collator
        self.seed, self.layout, self.rotation, self.start = seed, layout, rotation, list(start)

    def __iter__(self) -> Iterator[StreamItem]:
        info = torch.utils.data.get_worker_info()
        worker = ((info.id if info else 0) + self.rotation) % self.layout.workers
        first_epoch, skip = self.start[worker]
        damage: list[DamageEvent] = []
        for epoch in itertools.count(first_epoch):
            indices = shards_for_worker(
                len(self.shards), self.seed, epoch, self.layout.rank, self.layout.world_size,
                worker, self.layout.workers,
            )
            pipeline = wds.DataPipeline(
                ShardSource(self.shards, tuple(indices)),
                ReadSamples(damage),
                CheckSamples(self.spec, damage, self.shards.stored),
                BucketBatches(
                    self.batching,
                    (self.seed, epoch, self.layout.rank, worker, BATCH_ORDER_STREAM),
                ),
            )
            produced = 0
            for index, batch, last in _with_last(pipeline):
                produced += 1
                if epoch == first_epoch and index < skip:
                    continue
                collated = _collate(self.collator, batch, epoch, self.shards.stored)
                item = StreamItem(worker, epoch, index, last, collated, tuple(damage))
                damage.clear()
                yield item
            if produced == 0:
                # An endless loop over shards that give nothing would hang the job.
                urls = [self.shards.urls[i] for i in indices]
                raise RuntimeError(
                    f"rank {self.layout.rank} loader worker {worker} got no readable sample in "
                    f"epoch {epoch} from {urls}; damage: {damage}"
                )


class EvalStream(torch.utils.data.IterableDataset):
    """One pass over the full set, the same number of batches on every rank.

    Every rank reads every shard (worker ``w`` of each rank reads shards
    ``w, w + W, ...`` in manifest order) and keeps its own member of each dealt
    row, so ranks agree on the batch plan without communicating. The cost is
    that each rank reads the whole set: meant for validation sets, not corpora.
    """

    def __init__(
        self, shards: ShardSet, batching: BatchConfig, spec: SampleSpec, collator: Collator, layout: Layout
    ) -> None:
        super().__init__()
        self.shards, self.batching, self.spec, self.collator, self.layout = shards, batching, spec, collator, layout

    def __iter__(self) -> Iterator[StreamItem]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        damage: list[DamageEvent] = []
        pipeline = wds.DataPipeline(
            ShardSource(self.shards, tuple(range(worker, len(self.shards), self.layout.workers))),
            ReadSamples(damage),
            CheckSamples(self.spec, damage, self.shards.stored),
            DealtBatches(self.batching, self.layout.rank, self.layout.world_size, damage),
        )
        for index, batch, last in _with_last(pipeline):
            # Epoch 0 for the masks every time: each evaluation scores the same corruption,
            # so validation losses of different checkpoints are comparable.
            collated = _collate(self.collator, batch, 0, self.shards.stored)
            item = StreamItem(worker, 0, index, last, collated, tuple(damage))
            damage.clear()
            yield item
        if damage:
            yield StreamItem(worker, 0, -1, True, None, tuple(damage))
