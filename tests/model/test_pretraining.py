"""MLM + MCAM pre-training losses (section 3.2)."""


import pytest
import torch
import torch.nn.functional as F

from ctal_ds.model import CTALForPretraining
from ctal_ds.model.pretraining import masked_acoustic_loss, masked_lm_loss


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return CTALForPretraining(tiny_config).eval()


def test_loss_is_the_sum_of_mlm_and_mcam(model, batch):
    out = model(batch)
    torch.testing.assert_close(out["loss"], out["mlm_loss"] + out["mcam_loss"])
    assert out["mlm_tokens"] == (batch["mlm_labels"] != -100).sum()
    assert out["mcam_frames"] == batch["mcam_mask"].sum()


def test_losses_equal_cross_entropy_and_l1_written_out(model, batch):
    out = model(batch)
    states = model.ctal(batch["input_ids"], batch["text_mask"], batch["audio_feats"], batch["audio_mask"])
    logits = model.mlm_head(states.text_states)
    selected = batch["mlm_labels"] != -100
    expected_mlm = F.cross_entropy(logits[selected], batch["mlm_labels"][selected])
    preds = model.mcam_head(states.audio_states)
    m = batch["mcam_mask"]
    expected_mcam = (preds[m] - batch["mcam_targets"][m]).abs().mean()
    torch.testing.assert_close(out["mlm_loss"], expected_mlm, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out["mcam_loss"], expected_mcam, atol=1e-6, rtol=1e-6)


def test_losses_ignore_unmasked_predictions_and_targets(model, batch, tiny_config):
    g = torch.Generator().manual_seed(3)
    h_w = torch.randn(*batch["input_ids"].shape, tiny_config.hidden_size, generator=g)
    h_a = torch.randn(*batch["audio_mask"].shape, tiny_config.hidden_size, generator=g)
    mlm_labels, mcam_mask = batch["mlm_labels"], batch["mcam_mask"]
    mcam_targets = batch["mcam_targets"]
    mlm = masked_lm_loss(model.mlm_head, h_w, mlm_labels)[0]
    mcam = masked_acoustic_loss(model.mcam_head, h_a, mcam_targets, mcam_mask)[0]

    unlabelled = (mlm_labels == -100)[..., None]
    h_w_noisy = torch.where(unlabelled, h_w + 10 * torch.randn(h_w.shape, generator=g), h_w)
    unmasked = (~mcam_mask)[..., None]
    h_a_noisy = torch.where(unmasked, h_a + 10 * torch.randn(h_a.shape, generator=g), h_a)
    targets_noisy = torch.where(unmasked, mcam_targets + 5.0, mcam_targets)
    assert masked_lm_loss(model.mlm_head, h_w_noisy, mlm_labels)[0] == mlm
    assert masked_acoustic_loss(model.mcam_head, h_a_noisy, targets_noisy, mcam_mask)[0] == mcam


def test_mlm_does_not_use_the_audio(model, batch):
    reference = model(batch)["mlm_loss"]
    changed = dict(batch, audio_feats=torch.randn_like(batch["audio_feats"]))
    assert model(changed)["mlm_loss"] == reference


def test_mcam_uses_the_text(model, batch):
    reference = model(batch)["mcam_loss"]
    changed = dict(batch, input_ids=batch["input_ids"].flip(1).clamp(min=5))
    assert model(changed)["mcam_loss"] != reference


def test_batch_with_nothing_masked_gives_zero_losses_not_nan(model, batch):
    empty = dict(
        batch,
        mlm_labels=torch.full_like(batch["mlm_labels"], -100),
        mcam_mask=torch.zeros_like(batch["mcam_mask"]),
    )
    out = model.train()(empty)
    assert out["loss"].item() == 0.0 and out["mlm_tokens"] == 0 and out["mcam_frames"] == 0
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_padding_does_not_change_the_losses(model, make_utterance, collate, tiny_config):
    short = make_utterance(tiny_config, 8, 33, seed=21)
    long = make_utterance(tiny_config, 16, 58, seed=22)
    alone = model(collate([short]))
    # The same utterance twice, once padded: per-token means must not move.
    padded = model(collate([short, long, short]))
    mixed = model(collate([long]))
    n_s, n_l = alone["mlm_tokens"], mixed["mlm_tokens"]
    expected = (2 * n_s * alone["mlm_loss"] + n_l * mixed["mlm_loss"]) / (2 * n_s + n_l)
    torch.testing.assert_close(padded["mlm_loss"], expected, atol=1e-5, rtol=0)
    f_s, f_l = alone["mcam_frames"], mixed["mcam_frames"]
    expected = (2 * f_s * alone["mcam_loss"] + f_l * mixed["mcam_loss"]) / (2 * f_s + f_l)
    torch.testing.assert_close(padded["mcam_loss"], expected, atol=1e-5, rtol=0)


def test_mlm_decoder_is_the_token_embedding(model):
    assert model.mlm_head.decoder.weight is model.ctal.text_encoder.embeddings.token.weight


def test_losses_are_fp32_when_the_model_runs_in_bf16(tiny_config, batch):
    torch.manual_seed(0)
    model = CTALForPretraining(tiny_config).to(torch.bfloat16)
    out = model(dict(batch, audio_feats=batch["audio_feats"].bfloat16()))
    assert out["mlm_loss"].dtype == torch.float32 and out["mcam_loss"].dtype == torch.float32
    assert torch.isfinite(out["loss"])


def test_without_mcam_the_audio_stream_is_not_run(tiny_config, batch):
    model = CTALForPretraining(tiny_config, use_mcam=False)
    assert model.mcam_head is None
    called = []
    model.ctal.audio_encoder.register_forward_hook(lambda *a: called.append(True))
    out = model(batch)
    assert not called and out["mcam_loss"] == 0 and out["loss"] == out["mlm_loss"]


def test_without_mlm_only_mcam_is_trained(tiny_config, batch):
    model = CTALForPretraining(tiny_config, use_mlm=False)
    out = model(batch)
    assert model.mlm_head is None and out["mlm_loss"] == 0 and out["loss"] == out["mcam_loss"]
    with pytest.raises(ValueError):
        CTALForPretraining(tiny_config, use_mlm=False, use_mcam=False)


def test_tiny_model_overfits_one_batch(tiny_config, batch):
    torch.manual_seed(0)
    model = CTALForPretraining(tiny_config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(batch)
    for _ in range(200):
        optimizer.zero_grad()
        out = model(batch)
        out["loss"].backward()
        optimizer.step()
    for part in ("mlm_loss", "mcam_loss"):
        assert out[part].item() < 0.1 * first[part].item(), (part, first[part], out[part])
