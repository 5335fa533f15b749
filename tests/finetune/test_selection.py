"""Model selection on dev: the best dev evaluation's weights are kept, across resumes."""

from __future__ import annotations

import pytest

from ctal_ds.finetune.selection import ModelSelection
from ctal_ds.tasks import EmotionTask, SentimentTask


def saver(written):
    def save(target):
        target.mkdir(parents=True)
        (target / "weights").write_text(target.name)
        written.append(target.name)

    return save


def test_the_best_dev_value_is_kept_in_the_direction_of_the_task(tmp_path):
    written = []
    ua = ModelSelection(EmotionTask(), tmp_path / "ua")
    for step, value in ((10, 0.4), (20, 0.7), (30, 0.6)):
        ua.update(step, {"wa": 0.9, "ua": value}, saver(written))
    assert ua.best_step == 20 and written == ["step10", "step20"]  # selected on UA, not WA
    mae = ModelSelection(SentimentTask(), tmp_path / "mae")
    for step, value in ((10, 0.9), (20, 0.5), (30, 0.7)):
        mae.update(step, {"mae": value, "acc2": 1.0 - step / 100}, saver(written))
    assert mae.best_step == 20  # lower MAE wins


def test_pruning_after_a_checkpoint_keeps_only_the_selected_weights(tmp_path):
    selection = ModelSelection(EmotionTask(), tmp_path)
    for step, value in ((10, 0.4), (20, 0.7)):
        selection.update(step, {"wa": 0.0, "ua": value}, saver([]))
    selection.prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step20"]


def test_a_resumed_selection_keeps_its_best_even_if_a_killed_run_wrote_a_later_one(tmp_path):
    selection = ModelSelection(EmotionTask(), tmp_path)
    selection.update(10, {"wa": 0.0, "ua": 0.5}, saver([]))
    state = selection.state_dict()  # what the checkpoint at step 10 holds
    selection.update(20, {"wa": 0.0, "ua": 0.9}, saver([]))  # killed before its checkpoint completed
    resumed = ModelSelection(EmotionTask(), tmp_path)
    resumed.load_state_dict(state)
    assert resumed.best_dir().name == "step10" and resumed.best_dir().is_dir()
    resumed.update(20, {"wa": 0.0, "ua": 0.3}, saver([]))  # the repeated epoch scores worse this time
    resumed.prune()
    assert resumed.best_step == 10 and sorted(p.name for p in tmp_path.iterdir()) == ["step10"]


def test_a_checkpoint_naming_missing_weights_is_an_error(tmp_path):
    selection = ModelSelection(EmotionTask(), tmp_path)
    with pytest.raises(FileNotFoundError):
        selection.load_state_dict({"best_step": 40, "best_value": 0.5, "history": []})
