"""CTALModel: the two-stream backbone shared by pre-training and fine-tuning (3.1)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from ctal_ds.model.config import CTALConfig
from ctal_ds.model.encoders import TextEncoder, TextReferredAudioEncoder
from ctal_ds.model.layers import init_weights
from ctal_ds.model.pretrained import PretrainedModel


@dataclass
class CTALOutput:
    text_states: torch.Tensor  # H_w^N [B, L, H]
    audio_states: torch.Tensor | None  # H_a^N [B, T, H]; None when no audio was given
    # With all_layers: [H^0 (embeddings), ..., H^N] of each stream.
    text_layers: list[torch.Tensor] | None = None
    audio_layers: list[torch.Tensor] | None = None


class CTALModel(PretrainedModel):
    """Text encoder and text-referred audio encoder.

    Text never attends to audio, so H_w^N depends on the tokens alone; audio attends
    to H_w^N in every layer.
    """

    backbone_prefix = ""

    def __init__(self, config: CTALConfig):
        super().__init__()
        self.config = config
        self.text_encoder = TextEncoder(config)
        self.audio_encoder = TextReferredAudioEncoder(config)
        self.apply(partial(init_weights, std=config.initializer_range))

    @property
    def backbone(self) -> CTALModel:
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        audio_feats: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
        all_layers: bool = False,
    ) -> CTALOutput:
        """input_ids int [B, L]; text_mask bool [B, L] (default: ids != <pad>);
        audio_feats float [B, T, 160]; audio_mask bool [B, T] (default: all real).
        Without audio_feats only the text stream runs. ``all_layers`` also returns
        every layer's states (the embeddings' output first)."""
        if text_mask is None:
            text_mask = input_ids != self.config.pad_token_id
        text_layers = self.text_encoder(input_ids, text_mask, all_layers=True)
        h_w = text_layers[-1]
        if audio_feats is None:
            return CTALOutput(h_w, None, text_layers if all_layers else None)
        if audio_feats.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"batch of {audio_feats.shape[0]} audio sequences but {input_ids.shape[0]} texts"
            )
        if audio_feats.shape[-1] != self.config.feat_dim:
            raise ValueError(f"audio_feats last dim {audio_feats.shape[-1]} != feat_dim {self.config.feat_dim}")
        if audio_mask is None:
            audio_mask = torch.ones(audio_feats.shape[:2], dtype=torch.bool, device=audio_feats.device)
        audio_layers = self.audio_encoder(audio_feats, audio_mask, h_w, text_mask, all_layers=True)
        if not all_layers:
            return CTALOutput(h_w, audio_layers[-1])
        return CTALOutput(h_w, audio_layers[-1], text_layers, audio_layers)
