"""launch/pretrain.py's flags: the paper's command line trains the paper's model."""

from __future__ import annotations

from pathlib import Path

from ctal_ds.model import CTALConfig
from ctal_ds.train.cli import build_parser, run_config_from_args

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
