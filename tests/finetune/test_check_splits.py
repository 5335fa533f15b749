"""A task shard set too small for the task's splits fails the configuration check, which
the launch scripts run before any process group or DeepSpeed engine, naming the fix."""

from __future__ import annotations

import finetune_runs as runs
import pytest
import task_shards

from ctal_ds.finetune.config import check_splits, validate
from ctal_ds.train.config import ConfigError


@pytest.fixture(scope="module")
def few_dialogues(tmp_path_factory):
    """Three sessions of two dialogues: each fold trains on four dialogues, too few for
    the default 10 % dialogue-grouped dev split (it needs ten)."""
    return task_shards.emotion_shards(tmp_path_factory.mktemp("few"), sessions=3, dialogues=2, turns=4)


def _config(shards, out, *extra):
    return runs.config_from_args(runs.build_parser().parse_args(
        ["--task", "emotion", "--shards", str(shards), "--out", str(out), "--scratch", *extra]))  # fmt: skip


def test_too_few_dialogues_for_the_dev_split_is_a_config_error_naming_dev_fraction(few_dialogues, tmp_path):
    with pytest.raises(ConfigError) as caught:
        validate(_config(few_dialogues, tmp_path))
    message = str(caught.value)
    assert "needs 10+ dialogues" in message and "found 4" in message
    assert "--task-setting dev_fraction=0.25" in message

    validate(_config(few_dialogues, tmp_path, "--task-setting", "dev_fraction=0.25"))


def test_the_launch_script_exits_2_before_starting_a_process_group_or_engine(few_dialogues, tmp_path, monkeypatch, capsys):
    import deepspeed

    script = runs.launch_script("finetune")

    def started(*args, **kwargs):
        raise AssertionError("the configuration check let a process group or engine start")

    monkeypatch.setattr(script, "init_process_group", started)
    monkeypatch.setattr(deepspeed, "initialize", started)
    assert script.main(["--task", "emotion", "--shards", str(few_dialogues), "--out", str(tmp_path), "--scratch"]) == 2
    assert "--task-setting dev_fraction=0.25" in capsys.readouterr().err


def test_bad_task_settings_and_folds_are_config_errors(few_dialogues, tmp_path):
    with pytest.raises(ConfigError, match="--task-setting .*dev_fraction must be in"):
        check_splits(_config(few_dialogues, tmp_path, "--task-setting", "dev_fraction=0.9"))
    with pytest.raises(ConfigError, match=r"--fold 4: no such split; the task has \['fold1', 'fold2', 'fold3'\]"):
        check_splits(_config(few_dialogues, tmp_path, "--task-setting", "dev_fraction=0.25", "--fold", "4"))
