"""Batches of fine-tuning: epochs of a small in-memory training set, and evaluation passes.

Training is budgeted in optimizer steps like pre-training, but fine-tuning thinks in
epochs (the paper: 20 epochs, batch 4), so an epoch is made a whole number of steps:

    steps_per_epoch = n_train // (micro x accumulation x world)

Each epoch deals a fresh seeded permutation of the training samples; the remainder
(fewer than one global batch) is left out of that epoch only and is a different set of
utterances in the next. The run length, epochs x steps_per_epoch, is known before the
engine starts, so the LR schedule spans exactly the run.

Inside an epoch, samples are grouped by length within windows of a few global
batches (less padding, the same mixing across windows), then the micro batches are
shuffled and dealt to the ranks in turn, so every rank takes the same number of micro
batches. Everything is a function of (seed, epoch): a resumed run continues with the
batch it would have taken.

Evaluation sorts a split by length and deals rows of it to the ranks
(``plan_dealt_batches``): each utterance is seen by exactly one rank and every rank
runs the same number of forward passes, as ZeRO-3's parameter gathers require.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ctal_ds.data.bucketing import plan_dealt_batches
from ctal_ds.data.shard_reader import ShardSample

# Random stream of the fine-tuning epoch permutation (the loader uses 3 and 4).
EPOCH_ORDER_STREAM = 11

Collate = Callable[[Sequence[ShardSample], int], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    micro: int  # utterances per micro batch
    accum: int  # micro batches per optimizer step
    world: int
    seed: int = 0
    # Length grouping window, in global batches (micro x world): enough to cut padding,
    # few enough that a window mixes utterances of the whole length range over an epoch.
    window: int = 8

    @property
    def samples_per_step(self) -> int:
        return self.micro * self.accum * self.world

    def steps_per_epoch(self, n_train: int) -> int:
        steps = n_train // self.samples_per_step
        if steps < 1:
            raise ValueError(
                f"{n_train} training utterance(s) cannot fill one optimizer step of "
                f"{self.micro} x accumulation {self.accum} x world {self.world}; "
                "use a smaller micro batch or more data (a larger --fraction)"
            )
        return steps

    def epoch_batches(self, lengths: Sequence[int], epoch: int) -> list[list[list[int]]]:
        """Per rank, the micro batches (lists of sample indices) of ``epoch``."""
        steps = self.steps_per_epoch(len(lengths))
        rng = np.random.default_rng([self.seed, epoch, EPOCH_ORDER_STREAM])
        order = rng.permutation(len(lengths))[: steps * self.samples_per_step]
        span = self.micro * self.world * self.window
        batches = []
        for start in range(0, len(order), span):
            window = sorted(order[start : start + span].tolist(), key=lambda i: (lengths[i], i))
            batches += [window[k : k + self.micro] for k in range(0, len(window), self.micro)]
        batches = [batches[k] for k in rng.permutation(len(batches))]
        return [batches[rank :: self.world] for rank in range(self.world)]


class EpochStream:
    """This rank's micro batches, epoch after epoch, without end (the trainer counts steps).

    ``state_dict`` is the position (epoch, micro batches taken in it), saved with
    every checkpoint like the pre-training loader's.
    """

    def __init__(self, samples: Sequence[ShardSample], plan: EpochPlan, collate: Collate, rank: int) -> None:
        if not 0 <= rank < plan.world:
            raise ValueError(f"rank {rank} outside world of size {plan.world}")
        self.samples = tuple(samples)
        self.lengths = [s.n_frames for s in self.samples]
        self.plan, self.collate, self.rank = plan, collate, rank
        self.steps_per_epoch = plan.steps_per_epoch(len(self.samples))
        self.epoch, self.index = 0, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            batches = self.plan.epoch_batches(self.lengths, self.epoch)[self.rank]
            while self.index < len(batches):
                batch = self.collate([self.samples[i] for i in batches[self.index]], self.epoch)
                self.index += 1
                yield batch
            self.epoch, self.index = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "samples": len(self.samples), "seed": self.plan.seed}

    def load_state_dict(self, state: dict[str, int], strict: bool = True) -> None:
        """``strict=False`` (a checkpoint from another world size) starts the next epoch."""
        if state["samples"] != len(self.samples) or state["seed"] != self.plan.seed:
            raise ValueError(
                f"the saved stream had {state['samples']} samples and seed {state['seed']}, this run "
                f"has {len(self.samples)} and {self.plan.seed}: resume with the same data and settings"
            )
        if strict:
            self.epoch, self.index = int(state["epoch"]), int(state["index"])
        else:
            self.epoch, self.index = int(state["epoch"]) + (1 if state["index"] else 0), 0


def eval_batches(samples: Sequence[ShardSample], max_batch: int, rank: int, world: int) -> list[list[ShardSample]]:
    """This rank's batches of one evaluation pass (sorted by length, dealt in rows)."""
    lengths = [s.n_frames for s in samples]
    if len(samples) < world:
        raise ValueError(f"{len(samples)} evaluation utterance(s) cannot give each of {world} ranks one")
    # The frame budget is left open: evaluation batches are bounded by count only.
    plan = plan_dealt_batches(lengths, world, max_frames=max(lengths) * max_batch, max_batch=max_batch)
    return [[samples[row[rank]] for row in batch if rank < len(row)] for batch in plan]
