"""One IEMOCAP-like fold fine-tuned through the engine path with gradient accumulation:
the cosine schedule spans the run in optimizer steps, and the model is selected on dev
even when dev and test disagree; test is looked at once, with the selected weights."""

from __future__ import annotations

import json
import math

import finetune_runs as runs
import numpy as np
import pytest
import task_shards
import torch

from ctal_ds.finetune import task as task_module
from ctal_ds.finetune.run import finetune
from ctal_ds.model import load_pretrained

EPOCHS, LR, COS_MIN = 4, 3e-3, 1e-4


@pytest.fixture(scope="module")
def misled_run(tmp_path_factory, process_group):
    """Fold 2, whose dev audio points at the wrong classes; test predictions are counted."""
    root = tmp_path_factory.mktemp("misled")
    shards = task_shards.emotion_shards(root / "shards", misleading_dev_of="fold2")
    cfg = runs.finetune_config("emotion", shards, root / "run", "--fold", "2", "--epochs", str(EPOCHS),
                               "--lr", str(LR), "--micro-batch-size", "2", "--grad-accum", "2")  # fmt: skip
    calls = []
    original = task_module.FinetuneTask.predict

    def spy(self, model, part):
        weights = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        preds = original(self, model, part)
        calls.append((part, int(getattr(model, "global_steps", -1)), weights, preds))
        return preds

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(task_module.FinetuneTask, "predict", spy)
        result = finetune(cfg, process_group)
    return result, calls, root / "run" / "fold2"


def test_lr_follows_one_cosine_over_the_run_stepped_per_optimizer_step(misled_run):
    result, _, out = misled_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["train/lr"] for r in rows if "train/lr" in r]
    steps_per_epoch = 48 // (2 * 2)  # 48 training utterances, micro 2 x accumulation 2
    total = EPOCHS * steps_per_epoch
    assert [r["step"] for r in rows if "train/lr" in r] == list(range(1, total + 1))
    # Update k uses iteration k of WarmupCosineLR (flat 2-step warmup, then the cosine
    # reaching cos_min_ratio exactly at the last update), whatever the accumulation.
    expected = [LR] + [LR * (COS_MIN + (1 - COS_MIN) * 0.5 * (1 + math.cos(math.pi * (k - 1) / (total - 1))))
                       for k in range(2, total + 1)]  # fmt: skip
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert lrs[total // 2] == pytest.approx(LR / 2, rel=0.1)  # half-way is half-way, not per micro batch


def test_loss_logged_is_the_task_loss_plus_the_weighted_orthogonal_loss(misled_run):
    from ctal_ds.model.tasks import ORTHOGONAL_WEIGHT

    _, _, out = misled_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert rows and all(
        r["train/loss"] == pytest.approx(r["train/task_loss"] + ORTHOGONAL_WEIGHT * r["train/orth_loss"], rel=1e-5)
        for r in rows
    )
    assert all(r["train/orth_loss"] > 0 for r in rows)


def test_selection_follows_dev_even_when_test_disagrees(misled_run):
    result, calls, out = misled_run
    (split,) = result.splits
    history = json.loads((out / "results.json").read_text())
    dev_ua = {h["step"]: h["ua"] for h in _history(out)}
    assert split.selection["best_step"] == max(dev_ua, key=lambda s: (dev_ua[s], -s))
    assert split.selection["best_step"] < max(dev_ua)  # the misleading dev split stops it early
    # Test was predicted once, after training, with the weights selected on dev: those
    # the model had when dev evaluated the best step, not those of the last step.
    assert [call[0] for call in calls].count("test") == 1 and calls[-1][0] == "test"
    at_dev = {step: weights for part, step, weights, _ in calls if part == "dev"}
    assert sorted(at_dev) == sorted(dev_ua)
    _, _, tested, test_preds = calls[-1]
    assert same_weights(tested, at_dev[split.selection["best_step"]])
    assert not same_weights(tested, at_dev[max(at_dev)])
    # The reported numbers are those of these predictions; the export is the selected model.
    predicted, labels = test_preds.scores.argmax(1), test_preds.labels
    recalls = [np.mean(predicted[labels == c] == c) for c in np.unique(labels)]
    assert history["metrics"] == split.metrics
    assert split.metrics["ua"] == pytest.approx(np.mean(recalls))
    assert split.metrics["wa"] == pytest.approx(np.mean(predicted == labels))
    selected = load_pretrained(out / "export")
    saved = json.loads((out / "export" / "selection.json").read_text())
    assert saved["step"] == split.selection["best_step"]
    assert same_weights(selected.state_dict(), at_dev[split.selection["best_step"]])


def test_the_export_carries_the_class_names_and_the_shards_feature_config(misled_run):
    from ctal_ds.data.shards import read_manifest

    _, _, out = misled_run
    selected = load_pretrained(out / "export")
    assert selected.label_names == task_shards.EMOTIONS
    # What CTALProcessor.from_pretrained reads (the shards' tokenizer here is a stand-in).
    saved = json.loads((out / "export" / "feature_config.json").read_text())
    assert saved == read_manifest(out.parent.parent / "shards")["features"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return all(torch.equal(a[k], b[k]) for k in a)


def _history(out):
    from ctal_ds.train.checkpoint import latest_complete

    client = torch.load(latest_complete(out / "checkpoints") / "mp_rank_00_model_states.pt", weights_only=False)
    return client["task"]["selection"]["history"]
