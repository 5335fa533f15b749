"""Stopping rules: non-finite losses and a collapsed fp16 loss scale end the run with a diagnosis."""

from __future__ import annotations

import signal

import pytest

from ctal_ds.train.health import HealthMonitor, TrainingDiverged
from ctal_ds.train.stop import EXIT_AT_STEP, NONE, SIGNAL, TIME_LIMIT, StopRequest


def test_non_finite_mcam_loss_is_named_with_step_lr_and_scale():
    monitor = HealthMonitor(min_scale=1.0, max_skips_at_min_scale=3)
    monitor.check_finite(5, {"loss": False, "mlm_loss": False, "mcam_loss": False}, 1e-4, 1024.0)
    with pytest.raises(TrainingDiverged) as err:
        monitor.check_finite(6, {"loss": True, "mlm_loss": False, "mcam_loss": True}, 1e-4, 1024.0)
    message = str(err.value)
    assert "mcam_loss" in message and "mlm_loss" not in message
    assert "step 6" in message and "lr 0.0001" in message and "loss scale 1024" in message
    assert "nothing was saved" in message


def test_non_finite_sum_of_finite_parts_is_reported_as_the_sum():
    with pytest.raises(TrainingDiverged, match="the sum"):
        HealthMonitor(1.0, 3).check_finite(1, {"loss": True}, 1e-3, None)


def test_loss_scale_collapse_needs_consecutive_skips_at_the_minimum():
    monitor = HealthMonitor(min_scale=1.0, max_skips_at_min_scale=3)
    monitor.after_step(1, skipped=True, scale=4.0, lr=1e-3)  # above the floor: normal overflow
    monitor.after_step(2, skipped=True, scale=1.0, lr=1e-3)
    monitor.after_step(3, skipped=False, scale=1.0, lr=1e-3)  # a good step resets the count
    monitor.after_step(4, skipped=True, scale=1.0, lr=1e-3)
    monitor.after_step(5, skipped=True, scale=1.0, lr=1e-3)
    with pytest.raises(TrainingDiverged, match="collapsed at step 6: 3 consecutive"):
        monitor.after_step(6, skipped=True, scale=1.0, lr=1e-3)


def test_precision_without_loss_scale_never_collapses():
    monitor = HealthMonitor(1.0, 1)
    for step in range(5):
        monitor.after_step(step, skipped=False, scale=None, lr=1e-3)


def test_deepspeed_min_scale_error_is_recognised():
    err = Exception("Current loss scale already at minimum - cannot decrease scale anymore. Exiting run.")
    assert HealthMonitor.is_deepspeed_min_scale_error(err)
    assert not HealthMonitor.is_deepspeed_min_scale_error(ValueError("other"))


def test_stop_request_reasons_in_priority_order():
    # The trainer stops every rank for the largest code over ranks: higher means stronger.
    assert NONE < EXIT_AT_STEP < TIME_LIMIT < SIGNAL
    assert StopRequest(exit_at_step=10).code(9) == NONE
    assert StopRequest(exit_at_step=10).code(10) == StopRequest(exit_at_step=10).code(11) == EXIT_AT_STEP
    assert StopRequest(exit_at_step=10, time_limit_min=60.0).code(10) == EXIT_AT_STEP  # time left
    # Several reasons at once: the signal, then the time limit, then --exit-at-step.
    stop = StopRequest(exit_at_step=10, time_limit_min=0.0)
    assert stop.code(3) == TIME_LIMIT
    assert stop.code(10) == TIME_LIMIT and stop.describe(TIME_LIMIT) == "--time-limit-min reached"
    stop._handle(signal.SIGTERM, None)
    assert stop.code(0) == stop.code(10) == SIGNAL and stop.describe(SIGNAL) == "SIGTERM received"
    signalled = StopRequest(exit_at_step=10)
    signalled._handle(signal.SIGUSR1, None)
    assert signalled.code(10) == SIGNAL and signalled.describe(SIGNAL) == "SIGUSR1 received"
    assert StopRequest().describe(EXIT_AT_STEP) == "--exit-at-step reached" and StopRequest().describe(NONE) == ""
