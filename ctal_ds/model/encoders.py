"""The two CTAL streams: text encoder and text-referred audio encoder (section 3.1)."""

from __future__ import annotations

import torch
from torch import nn

from ctal_ds.model.activation_checkpointing import run_layer
from ctal_ds.model.config import CTALConfig
from ctal_ds.model.layers import TextEncoderLayer, TextReferredAudioLayer


class TextEmbeddings(nn.Module):
    """e_w = token embedding + learned position embedding (section 3.1.1).

    LayerNorm and dropout follow, as in RoBERTa, whose text pre-processing the paper
    adopts.
    """

    def __init__(self, config: CTALConfig):
        super().__init__()
        self.max_tokens = config.max_tokens
        self.token = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_tokens, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.max_tokens:
            raise ValueError(f"{length} tokens exceed max_tokens={self.max_tokens}")
        positions = torch.arange(length, device=input_ids.device)
        return self.dropout(self.norm(self.token(input_ids) + self.position(positions)))


class AudioEmbeddings(nn.Module):
    """e_a = Linear(160 -> d) frame projection + learned position embedding (3.1.1)."""

    def __init__(self, config: CTALConfig):
        super().__init__()
        self.max_frames = config.max_frames
        self.projection = nn.Linear(config.feat_dim, config.hidden_size)
        self.position = nn.Embedding(config.max_frames, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, audio_feats: torch.Tensor) -> torch.Tensor:
        frames = audio_feats.shape[1]
        if frames > self.max_frames:
            raise ValueError(
                f"{frames} frames exceed max_frames={self.max_frames}; crop the utterance "
                "or build the model with a larger max_frames"
            )
        positions = torch.arange(frames, device=audio_feats.device)
        projected = self.projection(audio_feats.to(self.projection.weight.dtype))
        return self.dropout(self.norm(projected + self.position(positions)))


class TextEncoder(nn.Module):
    """Token ids -> H_w^N, N post-LN self-attention layers (section 3.1.2)."""

    def __init__(self, config: CTALConfig):
        super().__init__()
        self.checkpointing = config.activation_checkpointing
        self.embeddings = TextEmbeddings(config)
        self.layers = nn.ModuleList(TextEncoderLayer(config) for _ in range(config.num_text_layers))

    def forward(
        self, input_ids: torch.Tensor, text_mask: torch.Tensor, all_layers: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """H_w^N, or with ``all_layers`` [H_w^0 (embeddings), H_w^1, ..., H_w^N]."""
        h_w = self.embeddings(input_ids)
        states = [h_w]
        for layer in self.layers:
            h_w = run_layer(layer, h_w, text_mask, checkpointing=self.checkpointing)
            states.append(h_w)
        return states if all_layers else h_w


class TextReferredAudioEncoder(nn.Module):
    """Frames and H_w^N -> H_a^N (section 3.1.3)."""

    def __init__(self, config: CTALConfig):
        super().__init__()
        self.checkpointing = config.activation_checkpointing
        self.embeddings = AudioEmbeddings(config)
        self.layers = nn.ModuleList(
            TextReferredAudioLayer(config) for _ in range(config.num_audio_layers)
        )

    def forward(
        self,
        audio_feats: torch.Tensor,
        audio_mask: torch.Tensor,
        h_w_final: torch.Tensor,
        text_mask: torch.Tensor,
        all_layers: bool = False,
    ) -> torch.Tensor | list[torch.Tensor]:
        """H_a^N, or with ``all_layers`` [H_a^0 (embeddings), H_a^1, ..., H_a^N]."""
        h_a = self.embeddings(audio_feats)
        states = [h_a]
        for layer in self.layers:
            h_a = run_layer(
                layer, h_a, audio_mask, h_w_final, text_mask, checkpointing=self.checkpointing
            )
            states.append(h_a)
        return states if all_layers else h_a
