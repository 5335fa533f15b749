"""The hang watchdog (a real thread on a fake clock), its exit, the flags and the
process-group timeouts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
import train_helpers as h

from ctal_ds.train.cli import build_parser, run_config_from_args, validate
from ctal_ds.train.config import ConfigError, TimeoutConfig, WatchdogConfig
from ctal_ds.train.watchdog import EXIT_CODE, Watchdog, describe


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Stalls:
    """Records what the watchdog would have printed, instead of exiting."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.fired = threading.Event()

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        self.fired.set()


def make(clock: FakeClock, **cfg: float) -> tuple[Watchdog, Stalls]:
    stalls = Stalls()
    dog = Watchdog(WatchdogConfig(**cfg), rank=1, host="node7", clock=clock, poll_s=0.001, on_stall=stalls)
    return dog, stalls


def looked(dog: Watchdog) -> None:
    """Return once the thread has made a whole check after this call (no time margin)."""
    target = dog.polls + 2
    deadline = time.monotonic() + 60
    while dog.polls < target and not dog.fired:
        assert time.monotonic() < deadline, "the watchdog thread stopped polling"
        time.sleep(0.001)


def test_fires_once_the_startup_allowance_passes_without_a_step():
    clock = FakeClock()
    dog, stalls = make(clock, startup_s=100, floor_s=10, factor=10)
    dog.start()
    try:
        clock.now = 100.0
        looked(dog)
        assert not stalls.messages
        clock.now = 101.0
        assert stalls.fired.wait(60), "the watchdog did not fire within 60 s of its limit passing"
    finally:
        dog.stop()
    (message,) = stalls.messages
    assert message.startswith("[ctal-ds] watchdog: rank 1 on node7: no optimizer step completed for 101 s")
    assert "limit 100 s: the start-up allowance" in message
    assert "last completed step none in this process" in message
    assert f"exiting with code {EXIT_CODE}" in message


def test_steady_progress_never_fires_then_a_stall_fires_at_the_step_limit():
    clock = FakeClock()
    dog, stalls = make(clock, startup_s=100, floor_s=10, factor=10)
    dog.start()
    try:
        clock.now = 90.0  # engine build and first step inside the start-up allowance
        for step in range(1, 301):  # 1 s per step, 300 s in all: far past every limit
            dog.step_done(step)
            clock.now += 1.0
            if step % 50 == 0:
                looked(dog)
        assert not stalls.messages
        last = clock.now - 1.0  # the time step 300 completed
        clock.now = last + 10.0
        looked(dog)
        assert not stalls.messages
        clock.now = last + 10.5
        assert stalls.fired.wait(60), "the watchdog did not fire within 60 s of its limit passing"
    finally:
        dog.stop()
    (message,) = stalls.messages
    assert "rank 1 on node7" in message and "last completed step 300" in message
    assert "limit 10 s: the floor; 10 x median step time 1 s is less" in message


def test_limit_is_the_startup_allowance_until_a_step_time_is_known_then_the_median_rule():
    clock = FakeClock()
    dog, _ = make(clock, startup_s=500, floor_s=20, factor=10, window=3)
    assert dog.limit() == (500, "the start-up allowance, no step time known yet")
    clock.now = 400.0
    dog.step_done(1)  # the first completion measures start-up, not a step
    assert dog.limit()[0] == 500 and not dog.step_times
    for step, seconds in zip(range(2, 6), (100.0, 1.0, 3.0, 2.0)):
        clock.now += seconds
        dog.step_done(step)
    # The last 3 step times are 1, 3, 2: median 2, 10 x 2 = 20 is not above the floor.
    assert list(dog.step_times) == [1.0, 3.0, 2.0]
    assert dog.limit() == (20, "the floor; 10 x median step time 2 s is less")
    clock.now += 5.0
    dog.step_done(6)  # 3, 2, 5: median 3
    assert dog.limit() == (30.0, "10 x median step time 3 s")


def test_evaluation_and_checkpoint_get_the_startup_allowance_and_stay_out_of_step_times():
    clock = FakeClock()
    dog, stalls = make(clock, startup_s=300, floor_s=5, factor=2)
    for step in range(1, 4):
        clock.now += 1.0
        dog.step_done(step)
    assert dog.limit()[0] == 5
    with dog.phase("checkpoint"):
        assert dog.limit() == (300, "the start-up allowance, during checkpoint")
        clock.now += 299.0
        assert not dog.check()
    clock.now += 4.0  # the next step, timed from the end of the checkpoint
    dog.step_done(4)
    assert list(dog.step_times) == [1.0, 1.0, 4.0]
    with dog.phase("evaluation"):
        clock.now += 301.0
        assert dog.check()
    (message,) = stalls.messages
    assert "evaluation made no progress for 301 s (limit 300 s" in message
    assert "last completed step 4" in message


def test_factor_0_switches_it_off():
    clock = FakeClock()
    dog, stalls = make(clock, factor=0)
    dog.start()
    clock.now = 10.0**9
    assert not dog.check() and dog._thread is None
    assert not stalls.messages
    assert describe(dog.cfg) == "watchdog off (--watchdog-factor 0)"


def test_a_real_stall_prints_the_rank_dumps_every_thread_and_exits_with_its_code():
    script = textwrap.dedent(
        """
        import threading
        from ctal_ds.train.config import WatchdogConfig
        from ctal_ds.train.watchdog import Watchdog

        def loader_worker():
            threading.Event().wait()

        def stuck_in_a_collective():
            threading.Event().wait()  # never set: the stall is unbounded

        threading.Thread(target=loader_worker, name="loader", daemon=True).start()
        Watchdog(WatchdogConfig(startup_s=0.2), rank=3, poll_s=0.05).start()
        stuck_in_a_collective()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_CODE, result.stderr
    err = result.stderr
    assert "[ctal-ds] watchdog: rank 3 on " in err and "no optimizer step completed" in err
    assert "in stuck_in_a_collective" in err and "in loader_worker" in err  # both threads' stacks
    assert err.rstrip().endswith(f"[ctal-ds] watchdog: rank exits with code {EXIT_CODE}")


def test_flags_reach_the_run_config_and_bad_values_fail_before_any_compute(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    args = ["--deepspeed_config", str(h.REPO / "ds_configs" / "cpu.json"), "--train-shards", str(tmp_path),
            "--out", str(tmp_path / "run")]  # fmt: skip
    cfg = run_config_from_args(build_parser().parse_args(args))
    assert cfg.timeouts == TimeoutConfig(600.0, 1800.0)
    assert cfg.watchdog == WatchdogConfig(factor=10.0, floor_s=120.0, startup_s=1800.0)
    validate(cfg)
    cfg = run_config_from_args(build_parser().parse_args([
        *args, "--dist-init-timeout-s", "60", "--collective-timeout-s", "900", "--watchdog-factor", "5",
        "--watchdog-floor-s", "30", "--watchdog-startup-s", "600",
    ]))  # fmt: skip
    assert (cfg.timeouts.startup_s, cfg.timeouts.collective_s) == (60, 900)
    assert (cfg.watchdog.factor, cfg.watchdog.floor_s, cfg.watchdog.startup_s) == (5, 30, 600)
    assert "max(30 s, 5 x the median of the last 50 step times); 600 s" in describe(cfg.watchdog)
    off = run_config_from_args(build_parser().parse_args([*args, "--watchdog-factor", "0", "--watchdog-floor-s", "0"]))
    validate(off)
    assert not off.watchdog.enabled

    for flags, text in ((["--collective-timeout-s", "0"], "--collective-timeout-s must be positive"),
                        (["--watchdog-factor", "-1"], "--watchdog-factor must be positive"),
                        (["--watchdog-floor-s", "0"], "--watchdog-floor-s must be positive")):  # fmt: skip
        with pytest.raises(ConfigError, match=text):
            validate(run_config_from_args(build_parser().parse_args([*args, *flags])))


def test_process_group_takes_the_startup_timeout_then_the_collective_timeout_for_every_group():
    script = textwrap.dedent(
        """
        import torch, torch.distributed as dist
        from ctal_ds.train.config import TimeoutConfig
        from ctal_ds.train.engine import init_process_group

        init_process_group(TimeoutConfig(startup_s=123, collective_s=456))
        cpu = torch.device("cpu")
        world = dist.distributed_c10d._get_default_group()._get_backend(cpu).options._timeout
        later = dist.new_group([0])._get_backend(cpu).options._timeout
        print("timeouts", world.total_seconds(), later.total_seconds())
        dist.destroy_process_group()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=h.job_env(), cwd=h.REPO)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[ctal-ds] timeouts: process-group start-up 123 s, collectives 456 s" in result.stdout
    assert "timeouts 456.0 456.0" in result.stdout
