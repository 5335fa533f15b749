"""The two-stream encoder of section 3.1: shapes, padding, direction of information flow."""

import pytest
import torch

from ctal_ds.model import CTALModel


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return CTALModel(tiny_config).eval()


def run(model, batch):
    return model(batch["input_ids"], batch["text_mask"], batch["audio_feats"], batch["audio_mask"])


def test_outputs_have_one_state_per_token_and_per_frame(model, batch, tiny_config):
    out = run(model, batch)
    b, n_tokens = batch["input_ids"].shape
    t = batch["audio_feats"].shape[1]
    assert out.text_states.shape == (b, n_tokens, tiny_config.hidden_size)
    assert out.audio_states.shape == (b, t, tiny_config.hidden_size)
    assert torch.isfinite(out.text_states).all() and torch.isfinite(out.audio_states).all()


def test_utterance_alone_equals_it_padded_next_to_a_longer_one(model, make_utterance, collate, tiny_config):
    short = make_utterance(tiny_config, 7, 25, seed=11)
    long = make_utterance(tiny_config, 19, 61, seed=12)
    alone = run(model, collate([short]))
    padded = run(model, collate([long, short]))
    torch.testing.assert_close(padded.text_states[1, :7], alone.text_states[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded.audio_states[1, :25], alone.audio_states[0], atol=1e-5, rtol=0)


def test_values_at_padded_positions_change_nothing(model, batch, tiny_config):
    reference = run(model, batch)
    noisy = dict(batch)
    g = torch.Generator().manual_seed(5)
    noisy["input_ids"] = torch.where(
        batch["text_mask"], batch["input_ids"],
        torch.randint(0, tiny_config.vocab_size, batch["input_ids"].shape, generator=g),
    )  # fmt: skip
    noisy["audio_feats"] = torch.where(
        batch["audio_mask"][..., None], batch["audio_feats"],
        100 * torch.randn(batch["audio_feats"].shape, generator=g),
    )  # fmt: skip
    out = run(model, noisy)
    tm, am = batch["text_mask"], batch["audio_mask"]
    torch.testing.assert_close(out.text_states[tm], reference.text_states[tm], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.audio_states[am], reference.audio_states[am], atol=1e-5, rtol=0)


def test_audio_self_attention_is_bidirectional(model, batch):
    # A causal audio encoder (the public release's defect) would leave frame 0 unchanged.
    reference = run(model, batch)
    changed = dict(batch)
    changed["audio_feats"] = batch["audio_feats"].clone()
    changed["audio_feats"][0, 20] += 3.0
    out = run(model, changed)
    assert (out.audio_states[0, 0] - reference.audio_states[0, 0]).abs().max() > 1e-4


def test_text_states_do_not_depend_on_audio(model, batch):
    reference = run(model, batch)
    changed = dict(batch, audio_feats=torch.randn_like(batch["audio_feats"]))
    torch.testing.assert_close(run(model, changed).text_states, reference.text_states, atol=0, rtol=0)


def test_audio_states_depend_on_the_text(model, batch):
    reference = run(model, batch)
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][0, 3] = 7 if batch["input_ids"][0, 3] != 7 else 8
    assert (run(model, changed).audio_states[0] - reference.audio_states[0]).abs().max() > 1e-4


def test_every_cross_attention_reads_the_final_text_states(model, batch):
    seen = []
    hooks = [
        layer.cross_attention.key.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        for layer in model.audio_encoder.layers
    ]
    try:
        out = run(model, batch)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(model.audio_encoder.layers)
    for keys_input in seen:
        torch.testing.assert_close(keys_input, out.text_states, atol=0, rtol=0)


def test_last_text_layer_changes_the_audio_output(model, batch):
    reference = run(model, batch).audio_states
    with torch.no_grad():
        bias = model.text_encoder.layers[-1].ffn.down.bias
        bias.add_(torch.linspace(-1.0, 1.0, bias.numel()))
    assert (run(model, batch).audio_states - reference).abs().max() > 1e-4


def test_text_only_forward_skips_the_audio_stream(model, batch):
    out = model(batch["input_ids"], batch["text_mask"])
    assert out.audio_states is None
    torch.testing.assert_close(out.text_states, run(model, batch).text_states, atol=0, rtol=0)


def test_too_many_frames_is_a_clear_error(model, tiny_config):
    feats = torch.zeros(1, tiny_config.max_frames + 1, tiny_config.feat_dim)
    with pytest.raises(ValueError, match="max_frames"):
        model(torch.tensor([[0, 5, 2]]), audio_feats=feats)
