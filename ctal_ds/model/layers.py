"""Transformer layers of the two CTAL streams (paper sections 3.1.2 and 3.1.3).

Both streams are post-LN: every sub-layer is followed by LayerNorm(sublayer(x) + x),
exactly as the paper's equations write it.
"""

from __future__ import annotations

import torch
from torch import nn

from ctal_ds.model.attention import MultiHeadAttention
from ctal_ds.model.config import CTALConfig


class FeedForward(nn.Module):
    def __init__(self, config: CTALConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.ffn_size)
        self.act = nn.GELU()
        self.down = nn.Linear(config.ffn_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class PostNormResidual(nn.Module):
    """LayerNorm(dropout(sublayer_output) + residual)."""

    def __init__(self, config: CTALConfig):
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, sublayer_output: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dropout(sublayer_output) + residual)


def _attention(config: CTALConfig) -> MultiHeadAttention:
    return MultiHeadAttention(
        config.hidden_size, config.num_heads, config.attention_dropout, config.attn_impl
    )


class TextEncoderLayer(nn.Module):
    """H_w^k -> H_w^{k+1}: self-attention and FFN over tokens (section 3.1.2)."""

    def __init__(self, config: CTALConfig):
        super().__init__()
        self.self_attention = _attention(config)
        self.self_attention_norm = PostNormResidual(config)
        self.ffn = FeedForward(config)
        self.ffn_norm = PostNormResidual(config)

    def forward(self, h_w: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        h_w = self.self_attention_norm(self.self_attention(h_w, text_mask), h_w)
        return self.ffn_norm(self.ffn(h_w), h_w)


class TextReferredAudioLayer(nn.Module):
    """H_a^l -> H_a^{l+1} (section 3.1.3).

    Self-attention over frames is bidirectional: only padded frames are masked, never
    future ones (the public release's causal mask contradicts the paper). The
    cross-attention's keys and values are the final text states H_w^N, the same
    tensor in every layer. With ``config.cross_attention`` off the layer is a plain
    audio Transformer layer (unimodal pre-training, table 4 (g)).
    """

    def __init__(self, config: CTALConfig):
        super().__init__()
        self.self_attention = _attention(config)
        self.self_attention_norm = PostNormResidual(config)
        self.cross_attention = _attention(config) if config.cross_attention else None
        self.cross_attention_norm = PostNormResidual(config) if config.cross_attention else None
        self.ffn = FeedForward(config)
        self.ffn_norm = PostNormResidual(config)

    def forward(
        self,
        h_a: torch.Tensor,
        audio_mask: torch.Tensor,
        h_w_final: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        h_a = self.self_attention_norm(self.self_attention(h_a, audio_mask), h_a)
        if self.cross_attention is not None:
            h_a = self.cross_attention_norm(
                self.cross_attention(h_a, text_mask, context=h_w_final), h_a
            )
        return self.ffn_norm(self.ffn(h_a), h_a)


def init_weights(module: nn.Module, std: float) -> None:
    """RoBERTa's initialisation: N(0, std) weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
