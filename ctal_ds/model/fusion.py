"""Fine-tuning fusion of the two streams and its orthogonal regulariser (section 3.3).

Pooling is over real positions only, so padding never changes a representation:

    h_a^attn = softmax(v_a . tanh(W_a H_a^N)) H_a^N     attention pooling over frames
    h_a^max  = MaxPool(H_a^N)                           over real frames
    h_w^attn = H_w^N[<s>]                               the start token's state
    h_w^max  = MaxPool(H_w^N)                           over real tokens
    h_fuse   = (h_a^attn + h_w^attn) (+) (h_a^max + h_w^max)          (+) = concatenation
    L_orth   = |cos(h_a^attn, h_w^attn)| + |cos(h_a^max, h_w^max)|    (3.3.1)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MODALITIES = ("both", "audio", "text")


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of states [B, L, H] over positions where mask [B, L] is True."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def masked_max(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max of states [B, L, H] over positions where mask [B, L] is True."""
    filled = states.masked_fill(~mask.unsqueeze(-1), torch.finfo(states.dtype).min)
    return filled.amax(dim=1)


class AttentionPooling(nn.Module):
    """softmax(v . tanh(W H)) H over real positions (section 3.3)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(torch.tanh(self.proj(states))).squeeze(-1).float()
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1).to(states.dtype)
        return torch.einsum("bt,bth->bh", weights, states)


def orthogonal_loss(
    h_a_attn: torch.Tensor,
    h_w_attn: torch.Tensor,
    h_a_max: torch.Tensor,
    h_w_max: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Batch mean of |cos(h_a^attn, h_w^attn)| + |cos(h_a^max, h_w^max)| (3.3.1).

    Each cosine divides by the norms of both of its vectors (the public release
    divides by the audio norm twice).
    """

    def abs_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.float(), b.float()
        norms = (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=eps)
        return (a * b).sum(-1).abs() / norms

    return (abs_cos(h_a_attn, h_w_attn) + abs_cos(h_a_max, h_w_max)).mean()


@dataclass
class PooledStreams:
    """The four pooled vectors of section 3.3; a stream left out is None."""

    h_a_attn: torch.Tensor | None
    h_a_max: torch.Tensor | None
    h_w_attn: torch.Tensor | None
    h_w_max: torch.Tensor | None


class CTALFusion(nn.Module):
    """Pooled representation of an utterance for the task head.

    - modality "both", fusion on: h_fuse, 2d wide.
    - modality "both", fusion off (paper table 4 (d), "w/o orthogonal fusion"): the
      plain concatenation h_a^attn (+) h_a^max (+) h_w^attn (+) h_w^max, 4d wide, so
      its head has twice the input width (and weights) of the h_fuse head.
    - modality "text" (table 4 (e), "w/o audio outputs"): h_w^attn (+) h_w^max, 2d
      wide; audio is not read.
    - modality "audio" (table 4 (f), "w/o language outputs"): h_a^attn (+) h_a^max, 2d
      wide; the text stream still conditions H_a^N through cross-attention, but no text
      pooled vector is used.
    """

    def __init__(self, hidden_size: int, fusion: bool = True, modality: str = "both"):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.fusion = fusion
        self.modality = modality
        self.audio_attention_pooling = AttentionPooling(hidden_size) if modality != "text" else None
        if modality == "both":
            self.output_size = 2 * hidden_size if fusion else 4 * hidden_size
        else:
            self.output_size = 2 * hidden_size

    def pool(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        audio_states: torch.Tensor | None,
        audio_mask: torch.Tensor | None,
    ) -> PooledStreams:
        h_a_attn = h_a_max = h_w_attn = h_w_max = None
        if self.modality != "text":
            h_a_attn = self.audio_attention_pooling(audio_states, audio_mask)
            h_a_max = masked_max(audio_states, audio_mask)
        if self.modality != "audio":
            # The first token is always <s>; its final state summarises the text (3.1.2).
            h_w_attn = text_states[:, 0]
            h_w_max = masked_max(text_states, text_mask)
        return PooledStreams(h_a_attn, h_a_max, h_w_attn, h_w_max)

    def forward(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        audio_states: torch.Tensor | None,
        audio_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (representation [B, output_size], L_orth or None if one stream only)."""
        p = self.pool(text_states, text_mask, audio_states, audio_mask)
        if self.modality == "audio":
            return torch.cat([p.h_a_attn, p.h_a_max], dim=-1), None
        if self.modality == "text":
            return torch.cat([p.h_w_attn, p.h_w_max], dim=-1), None
        orth = orthogonal_loss(p.h_a_attn, p.h_w_attn, p.h_a_max, p.h_w_max)
        if self.fusion:
            h_fuse = torch.cat([p.h_a_attn + p.h_w_attn, p.h_a_max + p.h_w_max], dim=-1)
            return h_fuse, orth
        return torch.cat([p.h_a_attn, p.h_a_max, p.h_w_attn, p.h_w_max], dim=-1), orth
