"""The lr of every update: no wasted updates at lr 0, warmup peaks on time, decay ends above 0."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from deepspeed.runtime.lr_schedules import WarmupDecayLR, WarmupLR

from ctal_ds.train.schedule import align_warmup

PEAK, WARMUP, STEPS = 1e-3, 4, 10


def lrs_of_updates(scheduler, optimizer, steps):
    """What DeepSpeed's engine does: update with the current lr, then step the scheduler."""
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return used


def make(kind, warmup_type="linear"):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    args = dict(warmup_min_lr=0.0, warmup_max_lr=PEAK, warmup_num_steps=WARMUP, warmup_type=warmup_type)
    if kind is WarmupDecayLR:
        args["total_num_steps"] = STEPS
    return kind(optimizer, **args), optimizer


@pytest.mark.parametrize("warmup_type", ["linear", "log"])
def test_deepspeed_alone_wastes_the_first_two_updates(warmup_type):
    scheduler, optimizer = make(WarmupDecayLR, warmup_type)
    assert lrs_of_updates(scheduler, optimizer, STEPS)[:2] == [0.0, 0.0]


def test_aligned_linear_warmup_decay():
    scheduler, optimizer = make(WarmupDecayLR)
    assert align_warmup(SimpleNamespace(lr_scheduler=scheduler), STEPS)
    used = lrs_of_updates(scheduler, optimizer, STEPS)
    assert used[:WARMUP] == pytest.approx([PEAK * k / WARMUP for k in range(1, WARMUP + 1)])
    assert min(used) > 0
    assert used[-1] == pytest.approx(PEAK / (STEPS + 1 - WARMUP))
    assert used == sorted(used[:WARMUP]) + sorted(used[WARMUP:], reverse=True)


def test_warmup_only_schedule_is_aligned_and_others_are_left_alone():
    scheduler, optimizer = make(WarmupLR)
    align_warmup(SimpleNamespace(lr_scheduler=scheduler), STEPS)
    assert lrs_of_updates(scheduler, optimizer, 6) == pytest.approx([PEAK / 4, PEAK / 2, 3 * PEAK / 4, PEAK, PEAK, PEAK])
    assert not align_warmup(SimpleNamespace(lr_scheduler=None), STEPS)


def test_aligned_cosine_schedule_starts_at_its_first_warmup_value_not_zero():
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    scheduler = WarmupCosineLR(optimizer, total_num_steps=STEPS, warmup_num_steps=WARMUP, warmup_min_ratio=0.0,
                               warmup_type="linear", cos_min_ratio=0.01)  # fmt: skip
    assert lrs_of_updates(scheduler, optimizer, 1) == [0.0]  # unaligned: the first update is lost
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    scheduler = WarmupCosineLR(optimizer, STEPS, 0.0, WARMUP, 0.01, "linear")
    align_warmup(SimpleNamespace(lr_scheduler=scheduler), STEPS)
    used = lrs_of_updates(scheduler, optimizer, STEPS)
    # DeepSpeed's cosine starts decaying at iteration warmup_num_steps itself.
    assert used[: WARMUP - 1] == pytest.approx([PEAK * k / WARMUP for k in range(1, WARMUP)])
    assert min(used) > 0 and used[-1] == pytest.approx(0.01 * PEAK)
