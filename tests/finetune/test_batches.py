"""Fine-tuning batches: whole optimizer steps per epoch, equal work per rank, exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ctal_ds.data.shard_reader import ShardSample
from ctal_ds.finetune.batches import EpochPlan, EpochStream, eval_batches


def samples(n: int) -> list[ShardSample]:
    rng = np.random.default_rng(0)
    return [
        ShardSample(f"u{i:03d}", "shard", np.zeros((int(rng.integers(5, 50)), 160), np.float16),
                    np.array([0, 5, 2], np.int32), {"id": f"u{i:03d}"})
        for i in range(n)
    ]  # fmt: skip


def ids_of(batch_samples, epoch=0):
    return {"ids": [s.key for s in batch_samples], "epoch": epoch}


def test_an_epoch_is_a_whole_number_of_optimizer_steps_on_every_rank():
    plan = EpochPlan(micro=4, accum=2, world=3, seed=1)
    lengths = [s.n_frames for s in samples(100)]
    per_rank = plan.epoch_batches(lengths, epoch=0)
    assert plan.steps_per_epoch(100) == 100 // 24 == 4
    assert [len(b) for b in per_rank] == [4 * 2] * 3  # steps x accumulation micro batches each
    seen = [i for rank in per_rank for batch in rank for i in batch]
    assert all(len(batch) == 4 for rank in per_rank for batch in rank)
    assert len(seen) == len(set(seen)) == 96  # no utterance twice; 4 left out of this epoch


def test_each_epoch_deals_a_new_order_and_leaves_out_other_utterances():
    plan = EpochPlan(micro=4, accum=1, world=1, seed=1)
    lengths = list(range(10, 40))
    first, second = (plan.epoch_batches(lengths, e)[0] for e in (0, 1))
    assert first != second
    left_out = [set(range(30)) - {i for b in epoch for i in b} for epoch in (first, second)]
    assert all(len(x) == 2 for x in left_out) and left_out[0] != left_out[1]
    assert plan.epoch_batches(lengths, 0)[0] == first  # a function of (seed, epoch)


def test_too_little_data_for_one_step_is_refused_with_advice():
    with pytest.raises(ValueError, match="--fraction"):
        EpochPlan(micro=4, accum=2, world=2).steps_per_epoch(15)


def test_stream_resumes_with_the_batch_it_would_have_taken():
    data = samples(37)
    plan = EpochPlan(micro=3, accum=1, world=2, seed=5)
    reference = EpochStream(data, plan, ids_of, rank=1)
    expected = [b["ids"] for b in itertools.islice(iter(reference), 20)]  # crosses epoch boundaries
    first = EpochStream(data, plan, ids_of, rank=1)
    taken = [b["ids"] for b in itertools.islice(iter(first), 7)]
    resumed = EpochStream(data, plan, ids_of, rank=1)
    resumed.load_state_dict(first.state_dict())
    taken += [b["ids"] for b in itertools.islice(iter(resumed), 13)]
    assert taken == expected


def test_stream_refuses_a_state_from_other_data():
    stream = EpochStream(samples(20), EpochPlan(2, 1, 1), ids_of, 0)
    other = EpochStream(samples(21), EpochPlan(2, 1, 1), ids_of, 0)
    with pytest.raises(ValueError, match="same data"):
        other.load_state_dict(stream.state_dict())


def test_stream_batches_come_through_the_collator_with_the_epoch():
    seen = []
    stream = EpochStream(samples(8), EpochPlan(4, 1, 1), lambda s, epoch: seen.append(epoch) or {"x": torch.ones(1)}, 0)
    list(itertools.islice(iter(stream), 5))
    assert seen == [0, 0, 1, 1, 2]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_sees_every_utterance_once_with_equal_batch_counts(world):
    data = samples(23)
    per_rank = [eval_batches(data, 4, rank, world) for rank in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    keys = [s.key for rank in per_rank for batch in rank for s in batch]
    assert sorted(keys) == sorted(s.key for s in data)
    assert all(batch for rank in per_rank for batch in rank)
