"""launch/pretrain.py's flags: the paper's command line trains the paper's model; a bad --resume
fails before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import train_helpers as h

from ctal_ds.model import CTALConfig
from ctal_ds.train.cli import build_parser, run_config_from_args, validate
from ctal_ds.train.config import ConfigError

REQUIRED = ["--deepspeed_config", "ds_configs/zero2.json", "--train-shards", "shards/ls960", "--out", "runs/base"]


def test_without_a_preset_the_paper_base_model_is_trained():
    parser = build_parser()
    cfg = run_config_from_args(parser.parse_args(REQUIRED))
    assert cfg.model.preset == "base"
    base = CTALConfig.preset(cfg.model.preset)
    assert (base.num_text_layers, base.num_audio_layers, base.hidden_size) == (3, 3, 768)
    preset_help = next(a.help for a in parser._actions if "--preset" in a.option_strings)
    assert "default" in preset_help and "base" in preset_help


def test_the_tiny_preset_is_still_there_when_asked_for():
    cfg = run_config_from_args(build_parser().parse_args([*REQUIRED, "--preset", "tiny"]))
    assert cfg.model.preset == "tiny"
    assert cfg.deepspeed_config == Path("ds_configs/zero2.json")


# Lines that only a started process group prints (ctal_ds/dist.py, DeepSpeed's comm backend).
STARTUP_LINES = ("rendezvous", "rank map", "Initializing TorchBackend")


@pytest.mark.parametrize("case", ["no such path", "a directory without checkpoints"])
def test_a_bad_resume_path_exits_2_naming_it_before_any_process_group_starts(demo_shards, tmp_path, case):
    if case == "no such path":
        resume = tmp_path / "elsewhere" / "checkpoints"
    else:
        resume = tmp_path / "notes"
        (resume / "global_step5").mkdir(parents=True)  # an interrupted tag is not a checkpoint
        (resume / "README").write_text("not a checkpoint\n")
    out = tmp_path / "run"
    cmd = [sys.executable, str(h.PRETRAIN), *h.pretrain_args(demo_shards, out, "--resume", str(resume))]
    result = subprocess.run(cmd, env=h.job_env(), cwd=h.REPO, capture_output=True, text=True, timeout=300)
    text = result.stdout + result.stderr
    assert result.returncode == 2, text[-3000:]
    assert f"[ctal-ds] configuration error: --resume {resume}: " in result.stderr
    assert ("no such file or directory" if case == "no such path" else "no complete global_step<N>/ tag") in result.stderr
    assert not [line for line in STARTUP_LINES if line in text], text[-3000:]
    assert not out.exists()  # nothing was written for the run


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--time-limit-min", "-5", "--time-limit-min must be >= 0, got -5"),
        ("--time-limit-min", "nan", "--time-limit-min must be >= 0, got nan"),
        ("--exit-at-step", "0", "--exit-at-step must be positive, got 0"),
    ],
)
def test_a_stop_flag_that_would_end_the_run_at_once_is_a_configuration_error(tmp_path, flag, value, message):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text("{}")
    args = ["--deepspeed_config", str(h.REPO / "ds_configs" / "cpu.json"), "--train-shards", str(shards),
            "--out", str(tmp_path / "run")]  # fmt: skip
    validate(run_config_from_args(build_parser().parse_args(args)))  # the rest is valid
    validate(run_config_from_args(build_parser().parse_args([*args, "--time-limit-min", "0"])))
    with pytest.raises(ConfigError, match=message):
        validate(run_config_from_args(build_parser().parse_args([*args, flag, value])))


def test_a_configuration_error_of_one_rank_only_is_said_by_that_rank(demo_shards, tmp_path):
    """The other ranks would wait for it at the rendezvous: its own message is the clue."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(h.PRETRAIN), *h.pretrain_args(demo_shards, out, "--time-limit-min", "-1")]
    env = h.job_env(RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29999")
    result = subprocess.run(cmd, env=env, cwd=h.REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    assert "[ctal-ds] rank 1: configuration error: --time-limit-min must be >= 0, got -1" in result.stderr
    assert not out.exists()
