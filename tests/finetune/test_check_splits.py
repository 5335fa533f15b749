"""A task shard set too small for the task's splits, or a --resume that names no usable
checkpoint, fails the configuration check, which the launch scripts run before any
process group or DeepSpeed engine, naming the fix."""

from __future__ import annotations

import os

import finetune_runs as runs
import pytest
import task_shards

from ctal_ds.finetune.config import check_splits, validate
from ctal_ds.train.checkpoint import MARKER
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


def test_a_bad_resume_path_exits_2_naming_it_before_any_process_group_starts(few_dialogues, tmp_path):
    import subprocess
    import sys

    resume = tmp_path / "elsewhere" / "fold1" / "checkpoints"
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RANK", "WORLD_SIZE", "MASTER_"))}
    result = subprocess.run(
        [sys.executable, str(runs.REPO / "launch" / "finetune.py"), "--task", "emotion", "--shards", str(few_dialogues),
         "--scratch", "--task-setting", "dev_fraction=0.25", "--fold", "1", "--out", str(out), "--resume", str(resume)],
        env={**env, "OMP_NUM_THREADS": "1"}, cwd=runs.REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = result.stdout + result.stderr
    assert result.returncode == 2, text[-3000:]
    assert f"[ctal-ds] configuration error: --resume {resume}: no such file or directory" in result.stderr
    # Lines that only a started process group prints (ctal_ds/dist.py, DeepSpeed's comm backend).
    assert not [line for line in ("rendezvous", "rank map", "Initializing TorchBackend") if line in text], text
    assert not out.exists()


def test_a_resume_path_needs_one_fold(few_dialogues, tmp_path):
    tag = tmp_path / "run" / "fold2" / "checkpoints" / "global_step3"
    tag.mkdir(parents=True)
    (tag / MARKER).write_text("{}")  # the layout is checked here; its files when the run resumes
    settings = ("--task-setting", "dev_fraction=0.25", "--resume", str(tag))
    with pytest.raises(ConfigError, match=r"--resume .*global_step3: a checkpoint path belongs to one split; "
                                          r"the emotion task has 3 \(fold1, fold2, fold3\): add --fold N"):
        validate(_config(few_dialogues, tmp_path / "run", *settings))
    validate(_config(few_dialogues, tmp_path / "run", *settings, "--fold", "2"))
    interrupted = tag.parent / "global_step4"
    interrupted.mkdir()
    with pytest.raises(ConfigError, match=r"global_step4: not a complete checkpoint"):
        validate(_config(few_dialogues, tmp_path / "run", *settings[:3], str(interrupted), "--fold", "2"))
