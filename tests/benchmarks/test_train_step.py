"""benchmarks/train_step.py: the phase timer's bookkeeping, the baseline optimizer it
builds from a DeepSpeed JSON, and one real run of every kind of row on two CPU ranks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import train_step  # noqa: E402


class Clock:
    """perf_counter that advances by a fixed amount per read: every timing is exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_phase_timer_books_self_time_and_collectives_under_their_caller(monkeypatch):
    monkeypatch.setattr(train_step.time, "perf_counter", Clock())
    timer = train_step.PhaseTimer()
    collective = timer.wrap(lambda: None, "unused")  # replaced below by the comm path

    def all_reduce():
        return "reduced"

    def reduce_grads():
        return timer.comm(fn=all_reduce)

    inner = timer.wrap(reduce_grads, "grad reduction (flatten, copies)")
    outer = timer.wrap(lambda: inner(), "backward (autograd)")
    assert collective() is None and timer.step_times == {}  # inactive: passes through, books nothing
    timer.active = True
    outer()
    timer.end_step()
    outer()
    timer.end_step()
    # Clock reads, one tick each: outer start, inner start, comm start, comm end (1 s),
    # inner end (3 s incl. comm), outer end (5 s incl. inner).
    expected = {"grad reduction: comm": 1.0, "grad reduction (flatten, copies)": 2.0, "backward (autograd)": 2.0}
    assert timer.per_step == [expected, expected]
    assert timer.stack == []


def test_phase_timer_patch_skips_missing_attributes_and_global_patch_is_applied_once():
    class Holder:
        def work(self):
            return 7

    holder = Holder()
    timer = train_step.PhaseTimer()
    timer.patch(holder, "missing", "x")
    assert not hasattr(holder, "missing")
    timer.patch(holder, "work", "forward")
    timer.active = True
    assert holder.work() == 7
    assert set(timer.step_times) == {"forward"}

    train_step.patch_global(holder, "work", "param all-gather")
    wrapped = holder.work
    train_step.patch_global(holder, "work", "param all-gather")
    assert holder.work is wrapped  # a second engine row does not wrap it twice
    train_step.PhaseTimer.current = timer
    try:
        assert holder.work() == 7
    finally:
        train_step.PhaseTimer.current = None
    assert "param all-gather" in timer.step_times


def test_the_baseline_optimizer_follows_the_deepspeed_json(tmp_path):
    config = tmp_path / "ds.json"
    params = {"lr": 0.002, "betas": [0.8, 0.9], "eps": 1e-6, "weight_decay": 0.1, "torch_adam": True, "fused": True}
    config.write_text(json.dumps({"gradient_clipping": 0.5, "optimizer": {"type": "AdamW", "params": params}}))
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer, clip = train_step.torch_optimizer(config, [weight])
    assert isinstance(optimizer, torch.optim.AdamW) and clip == 0.5
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.002 and tuple(group["betas"]) == (0.8, 0.9) and group["eps"] == 1e-6
    assert group["weight_decay"] == 0.1 and group["fused"] is True

    config.write_text(json.dumps({"optimizer": {"type": "AdamW", "params": {"lr": 0.1}}}))
    optimizer, clip = train_step.torch_optimizer(config, [weight])
    assert clip == 0.0 and not optimizer.param_groups[0]["fused"]


def test_unknown_rows_are_refused_with_the_valid_names():
    assert train_step.parse_rows("bare, zero2,bare", False) == ["bare", "zero2"]
    assert train_step.parse_rows("ddp", True)[1:] == list(train_step.VARIANTS)
    with pytest.raises(SystemExit, match=r"unknown row\(s\) \['zero5'\].*no-rs"):
        train_step.parse_rows("ddp,zero5", False)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_rank_run_prints_every_row_and_a_profile_of_each():
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--preset", "tiny", "--batch", "2",
           "--frames", "40", "--tokens", "12", "--steps", "2", "--warmup", "1", "--peak-flops", "1e9",
           "--rows", "bare,ddp,zero0,zero2,no-rs", "--profile"]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=840)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"benchmarks/train_step.py (5 rows, 3 rounds, tiny model) did not finish in 840 s: {err.stdout}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert re.search(r"^CPU: .+, \d+ cores; load average before [\d.]+", out, re.M), out
    row = r"^(bare|ddp|zero0|zero2|no-rs)\s+([\d.]+)\s+[\d.]+-[\d.]+\s+([\d.]+)\s+([\d.]+)"
    rows = {m[0]: m[1:] for m in re.findall(row, out, re.M)}
    assert set(rows) == {"bare", "ddp", "zero0", "zero2", "no-rs"}, out
    assert rows["bare"][1] == "1.00" and rows["ddp"][2] == "1.00", out  # each row against itself
    assert "no-rs: ZeRO-2 with zero_optimization.reduce_scatter=false" in out
    profile = out.split("per-phase self time on rank 0")[1].splitlines()
    assert profile[1].split() == ["phase", "bare", "ddp", "zero0", "zero2", "no-rs"]
    # Labels have single spaces; the five cells are the last five fields of a line.
    table = {" ".join(line.split()[:-5]): line.split()[-5:] for line in profile[2:] if line.strip()}
    # Only the engine rows communicate through DeepSpeed; only ZeRO-2 gathers parameters.
    assert table["grad reduction: comm"][:2] == ["-", "-"] and "-" not in table["grad reduction: comm"][2:]
    assert table["param all-gather: comm"][:3] == ["-", "-", "-"], table
    assert "-" not in table["param all-gather: comm"][3:], table
    assert "-" not in table["forward"] and "-" not in table["Adam update"], table
