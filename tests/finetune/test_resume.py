"""A fine-tune stopped by SIGTERM mid-epoch resumes (--resume auto) to exactly the
weights, selection and test numbers of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal

import finetune_runs as runs
import pytest
import torch

from ctal_ds.finetune.run import finetune
from ctal_ds.train.checkpoint import latest_complete
from ctal_ds.train.export import consolidated_state_dict
from ctal_ds.train.stop import StopRequest

ARGS = ("--epochs", "3", "--orthogonal-weight", "0", "--grad-accum", "2", "--micro-batch-size", "2",
        "--classifier-dropout", "0.3")  # fmt: skip


class SignalAtStep(StopRequest):
    """Delivers a real SIGTERM to this process when the trainer asks about `step`."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.at = step

    def code(self, step: int) -> int:
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().code(step)


def final_weights(out):
    return consolidated_state_dict(latest_complete(out / "mosei" / "checkpoints"))


@pytest.fixture(scope="module")
def uninterrupted(sentiment_shards, tmp_path_factory, process_group):
    out = tmp_path_factory.mktemp("straight") / "run"
    return finetune(runs.finetune_config("sentiment", sentiment_shards, out, *ARGS), process_group), out


def test_sigterm_mid_epoch_then_resume_auto_equals_an_uninterrupted_run(uninterrupted, sentiment_shards, tmp_path,
                                                                         process_group):  # fmt: skip
    reference, reference_out = uninterrupted
    out = tmp_path / "run"
    cfg = runs.finetune_config("sentiment", sentiment_shards, out, *ARGS)
    previous = signal.getsignal(signal.SIGTERM)
    stop = SignalAtStep(17)  # 12 steps per epoch: in the middle of the second epoch
    stop.install()
    try:
        stopped = finetune(cfg, process_group, stop)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not stopped.finished
    status = json.loads((out / "mosei" / "status.json").read_text())
    assert status == {"step": 17, "finished": False, "reason": "SIGTERM received"}
    assert not (out / "results.json").exists()

    resumed = finetune(cfg, process_group, StopRequest())
    assert resumed.finished
    expected, got = final_weights(reference_out), final_weights(out)
    assert expected.keys() == got.keys()
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) < 1e-6
    assert resumed.splits[0].selection == reference.splits[0].selection
    assert resumed.metrics == pytest.approx(reference.metrics, abs=1e-6)
    # One tracking run, continued: the step history has no gap and no repeat.
    rows = [json.loads(line) for line in (out / "mosei" / "metrics.jsonl").read_text().splitlines()]
    steps = sorted({r["step"] for r in rows if "train/loss" in r})
    assert steps == list(range(1, 37))
    assert all(r["train/loss"] == r["train/task_loss"] for r in rows if "train/loss" in r)  # L_orth weight 0


def test_a_finished_fine_tune_is_read_back_not_rerun(uninterrupted, sentiment_shards, process_group, monkeypatch):
    reference, out = uninterrupted
    weights, results = final_weights(out), (out / "results.json").read_text()
    monkeypatch.setattr("ctal_ds.finetune.run.finetune_split", lambda *a, **k: pytest.fail("re-ran a finished split"))
    again = finetune(runs.finetune_config("sentiment", sentiment_shards, out, *ARGS), process_group)
    assert again.to_dict() == reference.to_dict()
    assert again.metrics == reference.metrics and again.run_id == reference.run_id
    # Nothing was rewritten: the summary and the final checkpoint's weights are as they were.
    assert (out / "results.json").read_text() == results
    again_weights = final_weights(out)
    assert again_weights.keys() == weights.keys()
    assert all(torch.equal(again_weights[k], weights[k]) for k in weights)
