"""Pre-training heads: MLM over text states, MCAM over audio states (section 3.2)."""

from __future__ import annotations

import torch
from torch import nn

from ctal_ds.model.config import CTALConfig


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> vocabulary logits, decoder tied to token embeddings."""

    def __init__(self, config: CTALConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def tie_to(self, token_embeddings: nn.Embedding) -> None:
        self.decoder.weight = token_embeddings.weight

    def forward(self, h_w: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(h_w))))


class MCAMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> the 160 acoustic feature dimensions."""

    def __init__(self, config: CTALConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.feat_dim)

    def forward(self, h_a: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(h_a))))
