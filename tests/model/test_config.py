import json

import pytest

from ctal_ds.model import (
    CTALConfig,
    CTALForPretraining,
    CTALModel,
    count_parameters,
    estimate_parameters,
)


def test_paper_presets_have_the_paper_sizes():
    base, large = CTALConfig.preset("base"), CTALConfig.preset("large")
    assert (base.num_text_layers, base.num_audio_layers) == (3, 3)
    assert (large.num_text_layers, large.num_audio_layers) == (6, 6)
    for config in (base, large):
        assert (config.hidden_size, config.num_heads, config.ffn_size) == (768, 12, 3072)
        assert config.feat_dim == 160 and config.pad_token_id == 1


def test_preset_overrides_replace_fields():
    config = CTALConfig.preset("tiny", vocab_size=77, attn_impl="eager")
    assert config.vocab_size == 77 and config.attn_impl == "eager"
    assert config.num_text_layers == 2


def test_default_max_frames_covers_thirty_seconds_at_80_frames_per_second():
    assert CTALConfig().max_frames >= 30 * 16000 // 200


def test_config_round_trips_through_json(tmp_path):
    config = CTALConfig.preset("large", dropout=0.2, activation_checkpointing=True)
    assert CTALConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    config.to_json(tmp_path / "c.json")
    assert CTALConfig.from_json(tmp_path / "c.json") == config


@pytest.mark.parametrize(
    "bad",
    [
        dict(attn_impl="flash"),
        dict(hidden_size=100, num_heads=12),
        dict(attn_impl="fused", attention_dropout=0.1),
        dict(vocab_size=1, pad_token_id=1),
    ],
)
def test_invalid_configs_are_refused(bad):
    with pytest.raises(ValueError):
        CTALConfig.preset("tiny", **bad)


def test_unknown_fields_are_refused_on_load():
    with pytest.raises(ValueError, match="unknown"):
        CTALConfig.from_dict({**CTALConfig().to_dict(), "hiden_size": 3})


@pytest.mark.parametrize("cross_attention", [True, False])
def test_parameter_formula_matches_built_models(cross_attention):
    # Distinct sizes everywhere so that a swapped term in the formula shows up.
    config = CTALConfig(
        vocab_size=101, num_text_layers=2, num_audio_layers=3, hidden_size=24,
        num_heads=4, ffn_size=40, max_tokens=17, max_frames=33, feat_dim=160,
        cross_attention=cross_attention,
    )  # fmt: skip
    expected = estimate_parameters(config)
    assert count_parameters(CTALModel(config)) == expected["backbone"]
    assert count_parameters(CTALForPretraining(config)) == expected["pretraining"]


def test_tied_decoder_is_counted_once():
    config = CTALConfig.preset("tiny")
    model = CTALForPretraining(config)
    untied_total = sum(p.numel() for p in model.state_dict().values())
    assert untied_total - count_parameters(model) == config.vocab_size * config.hidden_size
