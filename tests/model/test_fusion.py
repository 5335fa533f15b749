"""Fusion of pooled streams and the orthogonal regulariser (section 3.3)."""

import math

import pytest
import torch

from ctal_ds.model import CTALFusion, orthogonal_loss
from ctal_ds.model.fusion import AttentionPooling, masked_max, masked_mean

H = 8


@pytest.fixture
def streams():
    """Two utterances, the second padded; padding holds large values, so a pool that
    reads it is far off."""
    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, 6, H, generator=g)
    audio = torch.randn(2, 10, H, generator=g)
    text_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    audio_mask = torch.tensor([[True] * 10, [True] * 7 + [False] * 3])
    text = text.masked_fill(~text_mask[..., None], 1e4)
    audio = audio.masked_fill(~audio_mask[..., None], 1e4)
    return text, text_mask, audio, audio_mask


def test_orthogonal_loss_is_the_sum_of_absolute_cosines_averaged_over_the_batch():
    a_attn = [[3.0, 4.0], [1.0, 0.0]]
    w_attn = [[4.0, -3.0], [2.0, 2.0]]
    a_max = [[1.0, 2.0], [0.0, -5.0]]
    w_max = [[2.0, 4.0], [0.0, 1.0]]

    def cos(u, v):
        dot = sum(x * y for x, y in zip(u, v))
        return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))

    by_hand = sum(abs(cos(a_attn[i], w_attn[i])) + abs(cos(a_max[i], w_max[i])) for i in range(2)) / 2
    # Sample 0: orthogonal attn pair (0) and parallel max pair (1); sample 1: 1/sqrt(2) and 1.
    assert by_hand == pytest.approx((0 + 1 + 1 / math.sqrt(2) + 1) / 2)
    got = orthogonal_loss(*(torch.tensor(x) for x in (a_attn, w_attn, a_max, w_max)))
    assert got.item() == pytest.approx(by_hand, abs=1e-6)


def test_orthogonal_loss_does_not_depend_on_the_scale_of_either_stream():
    g = torch.Generator().manual_seed(1)
    a, w, am, wm = (torch.randn(3, 5, generator=g) for _ in range(4))
    reference = orthogonal_loss(a, w, am, wm)
    # Dividing by the audio norm twice (the public release's typo) would break this.
    torch.testing.assert_close(orthogonal_loss(7 * a, w, 0.1 * am, wm), reference)
    torch.testing.assert_close(orthogonal_loss(a, 9 * w, am, 0.2 * wm), reference)


def test_masked_pools_ignore_padding(streams):
    text, text_mask, _, _ = streams
    noisy = torch.where(text_mask[..., None], text, torch.full_like(text, 1e4))
    torch.testing.assert_close(masked_max(noisy, text_mask)[1], text[1, :4].amax(0))
    torch.testing.assert_close(masked_mean(noisy, text_mask)[1], text[1, :4].mean(0))


def test_attention_pooling_is_softmax_of_v_tanh_w_over_real_frames(streams, reference_pools):
    text, text_mask, audio, audio_mask = streams
    torch.manual_seed(0)
    pool = AttentionPooling(H)
    expected = reference_pools(text, text_mask, audio, audio_mask, pool)["h_a_attn"]
    torch.testing.assert_close(pool(audio, audio_mask), expected)
    # By hand for the padded utterance: its 7 frames, W, b and v of the pooling.
    x, w, b, v = audio[1, :7], pool.proj.weight.detach(), pool.proj.bias.detach(), pool.score.weight[0].detach()
    energies = [float(v @ torch.tanh(w @ x[t] + b)) for t in range(7)]
    alpha = [math.exp(e) / sum(math.exp(f) for f in energies) for e in energies]
    by_hand = sum(a * x[t] for t, a in enumerate(alpha))
    torch.testing.assert_close(pool(audio, audio_mask)[1], by_hand)


def test_h_fuse_adds_attention_and_max_pools_of_both_streams(streams, reference_pools, reference_orthogonal_loss):
    text, text_mask, audio, audio_mask = streams
    torch.manual_seed(0)
    fusion = CTALFusion(H)
    h_fuse, orth = fusion(text, text_mask, audio, audio_mask)
    p = reference_pools(text, text_mask, audio, audio_mask, fusion.audio_attention_pooling)
    torch.testing.assert_close(p["h_w_attn"], text[:, 0])
    torch.testing.assert_close(h_fuse[:, :H], p["h_a_attn"] + p["h_w_attn"])
    torch.testing.assert_close(h_fuse[:, H:], p["h_a_max"] + p["h_w_max"])
    torch.testing.assert_close(orth, reference_orthogonal_loss(p))
    assert fusion.output_size == 2 * H


def test_without_fusion_the_four_pooled_vectors_are_concatenated(streams, reference_pools):
    text, text_mask, audio, audio_mask = streams
    fusion = CTALFusion(H, fusion=False)
    rep, _ = fusion(text, text_mask, audio, audio_mask)
    p = reference_pools(text, text_mask, audio, audio_mask, fusion.audio_attention_pooling)
    torch.testing.assert_close(rep, torch.cat([p["h_a_attn"], p["h_a_max"], p["h_w_attn"], p["h_w_max"]], -1))
    assert fusion.output_size == 4 * H


def test_text_only_representation_never_reads_audio(streams, reference_pools):
    text, text_mask, audio, audio_mask = streams
    fusion = CTALFusion(H, modality="text")
    rep, orth = fusion(text, text_mask, None, None)
    p = reference_pools(text, text_mask, None, None, None)
    torch.testing.assert_close(rep, torch.cat([p["h_w_attn"], p["h_w_max"]], -1))
    assert orth is None


def test_audio_only_representation_ignores_the_text_states(streams, reference_pools):
    text, text_mask, audio, audio_mask = streams
    fusion = CTALFusion(H, modality="audio")
    rep, orth = fusion(text, text_mask, audio, audio_mask)
    rep_other_text, _ = fusion(torch.randn_like(text), text_mask, audio, audio_mask)
    torch.testing.assert_close(rep_other_text, rep)
    p = reference_pools(text, text_mask, audio, audio_mask, fusion.audio_attention_pooling)
    torch.testing.assert_close(rep, torch.cat([p["h_a_attn"], p["h_a_max"]], -1))
    assert orth is None
