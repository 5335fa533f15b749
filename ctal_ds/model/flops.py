"""Matmul FLOPs of CTAL, counted per utterance with its real (unpadded) lengths.

With d = hidden size, f = FFN size, L tokens, T frames, a multiply-add = 2 FLOPs:

    text layer   8 L d^2  (Q, K, V, O projections)  + 4 L^2 d  (Q K^T and P V)  + 4 L d f  (FFN)
    audio layer  8 T d^2 + 4 T^2 d                  (bidirectional self-attention)
               + 4 T d^2 + 4 L d^2                  (cross-attention: Q, O over frames; K, V over H_w^N)
               + 4 T L d                            (cross-attention Q K^T and P V;
                                                     none with config.cross_attention off)
               + 4 T d f                            (FFN)
    embeddings   2 T 160 d                          (frame projection; token lookups are free)
    MLM head     n_mlm (2 d^2 + 2 d V)              (only masked tokens are projected)
    MCAM head    n_mcam (2 d^2 + 2 d 160)           (only masked frames are projected)

Training (forward + backward) is 3x the forward count, since backward computes two
matmuls for every forward one (gradients of inputs and of weights), minus one
2 T 160 d: the frames are data, so the projection needs no gradient for its input.
Element-wise work (softmax, LayerNorm, GELU) is left out, as in the usual MFU
accounting. tests/model/test_flops.py checks both counts against torch's FLOP counter.
"""

from __future__ import annotations

from collections.abc import Sequence

from ctal_ds.model.config import CTALConfig


def text_layer_flops(config: CTALConfig, n_tokens: int) -> int:
    d, f, L = config.hidden_size, config.ffn_size, n_tokens
    return 8 * L * d * d + 4 * L * L * d + 4 * L * d * f


def audio_layer_flops(config: CTALConfig, n_frames: int, n_tokens: int) -> int:
    d, f, T, L = config.hidden_size, config.ffn_size, n_frames, n_tokens
    self_attention = 8 * T * d * d + 4 * T * T * d
    cross_attention = 4 * T * d * d + 4 * L * d * d + 4 * T * L * d if config.cross_attention else 0
    return self_attention + cross_attention + 4 * T * d * f


def forward_flops(
    config: CTALConfig,
    text_lengths: Sequence[int],
    audio_lengths: Sequence[int],
    mlm_tokens: int = 0,
    mcam_frames: int = 0,
) -> int:
    """Forward matmul FLOPs of a batch; pass 0 masked positions for the backbone alone."""
    d = config.hidden_size
    total = 0
    for L, T in zip(text_lengths, audio_lengths, strict=True):
        total += config.num_text_layers * text_layer_flops(config, L)
        total += config.num_audio_layers * audio_layer_flops(config, T, L)
        total += 2 * T * config.feat_dim * d
    total += mlm_tokens * (2 * d * d + 2 * d * config.vocab_size)
    total += mcam_frames * (2 * d * d + 2 * d * config.feat_dim)
    return total


def training_flops(
    config: CTALConfig,
    text_lengths: Sequence[int],
    audio_lengths: Sequence[int],
    mlm_tokens: int = 0,
    mcam_frames: int = 0,
) -> int:
    """Forward + backward matmul FLOPs of a batch."""
    forward = forward_flops(config, text_lengths, audio_lengths, mlm_tokens, mcam_frames)
    frame_projection = sum(2 * T * config.feat_dim * config.hidden_size for T in audio_lengths)
    return 3 * forward - frame_projection
