"""Streaming loaders over WebDataset shards: an endless, resumable training stream and a
finite evaluation pass with the same batch count on every rank.

Training (:class:`ShardLoader`, :func:`build_pretrain_loader`)
    Budget training in optimizer steps, not epochs (DESIGN.md section 4): the
    stream never ends, every rank can take as many batches as the trainer asks
    for, so all ranks make the same number of steps. Each worker passes epoch
    after epoch over its share of a freshly shuffled shard order
    (:mod:`ctal_ds.data.shard_list`); workers keep their own epoch count.

Resume
    A torch DataLoader hands out worker outputs round-robin: item ``k`` of an
    iterator comes from DataLoader worker ``k mod W``. Each worker's stream is
    a deterministic function of (seed, epoch, rank, world_size, logical worker,
    num_workers), and the loader records, for every logical worker, the epoch
    and the number of its batches consumed in that epoch, plus the total
    number of batches consumed. A resumed loader makes DataLoader worker ``j``
    play logical worker ``(j + total) mod W``, so the round-robin continues
    with the worker that was next, and each worker fast-forwards its epoch by
    skipping the consumed batches before decoding, masking or padding them.
    Masks depend on (seed, epoch, key) only, so they come out identical.
    Cost of a resume: every worker re-reads the shards of its current epoch up
    to where it stopped and checks the samples from their headers, at about
    2,000 utterances (400 MiB) per second and worker from the page cache
    (``benchmarks/loader.py``), or disk speed: for LibriSpeech 960 h on 8 ranks
    x 4 workers, at most ~9,000 utterances per worker, seconds to a minute.
    Resuming needs the same seed, world size, worker count and shard set; see
    :meth:`ShardLoader.load_state_dict` for what happens otherwise.

Evaluation (:class:`EvalShardLoader`, :func:`build_eval_loader`)
    One pass over the whole set, in which every rank yields the same number
    of batches and each sample reaches exactly one rank, without
    communication: every rank reads every shard and keeps its own member of
    each row of length-sorted samples (:class:`ctal_ds.data.streams.EvalStream`).
    Sharded evaluation with ZeRO-3, which gathers parameters in every forward,
    needs exactly this.

Damage
    Unreadable or short shards and malformed samples are skipped, named in a
    warning and counted per rank; past ``max_bad_shards`` or
    ``max_bad_samples`` the job stops with :class:`DataDamageError`
    (:mod:`ctal_ds.data.damage`).

All randomness is drawn from explicitly seeded generators keyed by (seed,
epoch, rank, worker) or (seed, epoch, sample key); nothing depends on the
global or per-worker torch/numpy seeds that DataLoader sets.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ctal_ds.data.damage import DamageLog, DataDamageError
from ctal_ds.data.shard_list import ShardSet, check_enough_shards
from ctal_ds.data.streams import (
    BatchConfig,
    Collator,
    EvalStream,
    Layout,
    SampleSpec,
    StreamItem,
    TrainStream,
)

__all__ = [
    "BatchConfig",
    "BatchPosition",
    "DataDamageError",
    "EvalShardLoader",
    "LoaderConfig",
    "SampleSpec",
    "ShardLoader",
    "build_eval_loader",
    "build_pretrain_loader",
]

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
ShardLocation = str | os.PathLike[str] | Sequence[str]


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """Loader settings shared by training and evaluation.

    num_workers: DataLoader worker processes per rank; shards must number at
        least world_size x num_workers for training (num_workers for
        evaluation), since a worker without a shard would hang the job.
    seed: base of every random choice: shard order, batch order, masks.
    max_bad_shards / max_bad_samples: damage tolerated per rank before the job
        stops; a few broken shards in a large corpus should not kill a long
        run, many mean the data needs rebuilding.
    prefetch_factor: batches each worker prepares ahead.
    pin_memory: None pins when CUDA is available.
    """

    batch: BatchConfig = BatchConfig()
    sample: SampleSpec = SampleSpec()
    num_workers: int = 2
    seed: int = 0
    max_bad_shards: int = 5
    max_bad_samples: int = 1000
    prefetch_factor: int = 2
    pin_memory: bool | None = None


@dataclasses.dataclass(frozen=True)
class BatchPosition:
    """Where a batch came from: logical worker, worker epoch, index in that epoch."""

    worker: int
    epoch: int
    index: int
    last_in_epoch: bool


def _passthrough(item: StreamItem) -> StreamItem:
    """DataLoader collate_fn: the workers already collated."""
    return item


# How long a worker outlives a SIGTERM: enough for its rank to finish the step and
# checkpoint, short enough that a process exiting on an error path (which terminates
# and then joins its daemonic workers) is not held up for long.
WORKER_TERM_GRACE_S = 30


def _arm_exit_timer(signum: int, frame: Any) -> None:
    signal.alarm(WORKER_TERM_GRACE_S)  # SIGALRM's default action ends the worker


def _defer_stop_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn. SLURM delivers scancel's and pre-emption's SIGTERM
    (and ``scancel --signal=USR1`` without --batch) to every process of a job step,
    workers included; a worker dying of it at once would make the rank raise instead
    of finishing its step and saving a checkpoint. The rank alone decides when to stop:
    workers ignore USR1 and leave WORKER_TERM_GRACE_S after a TERM. A normal shutdown
    (loader.close(), which the trainer calls) ends them without any signal."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _arm_exit_timer)


def _data_loader(dataset: torch.utils.data.IterableDataset, config: LoaderConfig) -> torch.utils.data.DataLoader:
    # No persistent_workers: the training iterator never ends, so its workers live as
    # long as the job; an evaluation pass forks its workers afresh, which costs well
    # under a second next to reading the set.
    pin = torch.cuda.is_available() if config.pin_memory is None else config.pin_memory
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        collate_fn=_passthrough,
        num_workers=config.num_workers,
        worker_init_fn=_defer_stop_signals if config.num_workers > 0 else None,
        prefetch_factor=config.prefetch_factor if config.num_workers > 0 else None,
        pin_memory=pin,
    )


class ShardLoader:
    """The training stream of one rank: iterate it for batches, checkpoint it with state_dict.

    Iterating yields batch dicts (docs/contracts.md) without end. Creating a
    new iterator starts from the current state, and replaces the old one.
    """

    def __init__(
        self, shards: ShardSet, config: LoaderConfig, collator: Collator, rank: int, world_size: int
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        check_enough_shards(len(shards), world_size, config.num_workers)
        self.shards, self.config, self.collator = shards, config, collator
        self.layout = Layout(rank, world_size, config.num_workers)
        self.damage = DamageLog(config.max_bad_shards, config.max_bad_samples)
        self.batches_consumed = 0
        self.positions: list[tuple[int, int]] = [(0, 0)] * self.layout.workers
        self.last_batch_position: BatchPosition | None = None
        self._active: Iterator[dict[str, Any]] | None = None

    @property
    def epoch(self) -> int:
        """Epochs every worker of this rank has completed (for logging)."""
        return min(epoch for epoch, _ in self.positions)

    def dataset(self) -> TrainStream:
        """The worker-side stream starting at the current state."""
        return TrainStream(
            self.shards, self.config.batch, self.config.sample, self.collator, self.config.seed,
            self.layout, self.batches_consumed % self.layout.workers, self.positions,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.close()
        self._active = self._iterate()
        return self._active

    def _iterate(self) -> Iterator[dict[str, Any]]:
        for item in _data_loader(self.dataset(), self.config):
            self.damage.record(item.damage)
            expected = self.batches_consumed % self.layout.workers
            if item.worker != expected:
                raise RuntimeError(
                    f"batch from logical worker {item.worker} where worker {expected} was due: "
                    "the DataLoader did not interleave workers round-robin, resume state would be wrong"
                )
            self.positions[item.worker] = (item.epoch + 1, 0) if item.last else (item.epoch, item.index + 1)
            self.batches_consumed += 1
            self.last_batch_position = BatchPosition(item.worker, item.epoch, item.index, item.last)
            yield item.batch  # type: ignore[misc]

    def close(self) -> None:
        """Stop the worker processes of the current iterator, if any."""
        if self._active is not None:
            self._active.close()  # type: ignore[attr-defined]
            self._active = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "seed": self.config.seed,
            "world_size": self.layout.world_size,
            "num_workers": self.layout.workers,
            "num_shards": len(self.shards),
            "batches_consumed": self.batches_consumed,
            "positions": [list(p) for p in self.positions],
            "damage": self.damage.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Continue with the batches after those consumed when ``state`` was taken.

        The stream is only reproducible under the same seed, world size,
        number of workers and number of shards. Otherwise, with ``strict`` a
        ValueError says what changed; without, the loader starts afresh at the
        first epoch no worker has started, so the unconsumed rest of the
        interrupted epoch is skipped and nothing is repeated.
        """
        self.close()
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown loader state format {state.get('format')!r}")
        now = {
            "seed": self.config.seed,
            "world_size": self.layout.world_size,
            "num_workers": self.layout.workers,
            "num_shards": len(self.shards),
        }
        changed = {k: (state[k], v) for k, v in now.items() if state[k] != v}
        self.damage.load_state_dict(state["damage"])
        if not changed:
            self.batches_consumed = int(state["batches_consumed"])
            self.positions = [(int(e), int(b)) for e, b in state["positions"]]
            return
        detail = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
        if strict:
            raise ValueError(
                f"cannot reproduce the saved data stream: {detail}. Resume with the saved settings, "
                "or pass strict=False to start at the next epoch"
            )
        next_epoch = max(int(e) + (1 if int(b) else 0) for e, b in state["positions"])
        logger.warning("data stream changed (%s): starting afresh at epoch %d", detail, next_epoch)
        self.batches_consumed = 0
        self.positions = [(next_epoch, 0)] * self.layout.workers


class EvalShardLoader:
    """A finite pass over an evaluation set; every rank yields the same number of batches."""

    def __init__(
        self, shards: ShardSet, config: LoaderConfig, collator: Collator, rank: int, world_size: int
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        # Every rank reads every shard here, so only the workers need one each.
        check_enough_shards(len(shards), 1, config.num_workers)
        self.shards, self.config, self.collator = shards, config, collator
        self.layout = Layout(rank, world_size, config.num_workers)
        self.damage = DamageLog(config.max_bad_shards, config.max_bad_samples)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dataset = EvalStream(self.shards, self.config.batch, self.config.sample, self.collator, self.layout)
        for item in _data_loader(dataset, self.config):
            self.damage.record(item.damage)
            if item.batch is not None:
                yield item.batch


def build_pretrain_loader(
    shards: ShardLocation,
    config: LoaderConfig,
    collator: Collator,
    rank: int = 0,
    world_size: int = 1,
) -> ShardLoader:
    """The endless training stream of ``rank``: a shard directory, manifest file, or shard URLs."""
    return ShardLoader(ShardSet.resolve(shards), config, collator, rank, world_size)


def build_eval_loader(
    shards: ShardLocation,
    config: LoaderConfig,
    collator: Collator,
    rank: int = 0,
    world_size: int = 1,
) -> EvalShardLoader:
    """One evaluation pass for ``rank``, with as many batches as on every other rank."""
    return EvalShardLoader(ShardSet.resolve(shards), config, collator, rank, world_size)
