"""CTAL pre-training: MLM on the text stream plus MCAM on the audio stream (3.2).

The objective is the plain sum of the enabled losses (end of 3.2.2). Both losses
are computed in fp32 whatever dtype the model runs in, and a batch in which nothing
is masked contributes 0, not NaN.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from ctal_ds.model.config import CTALConfig
from ctal_ds.model.ctal import CTALModel
from ctal_ds.model.heads import MCAMHead, MLMHead
from ctal_ds.model.layers import init_weights
from ctal_ds.model.pretrained import PretrainedModel

IGNORE_INDEX = -100


def masked_lm_loss(
    head: MLMHead, h_w: torch.Tensor, mlm_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over tokens whose label is not -100; (loss, tokens, correct).

    Only the selected tokens go through the vocabulary projection, the largest matmul
    of the model.
    """
    selected = mlm_labels != IGNORE_INDEX
    targets = mlm_labels[selected]
    logits = head(h_w[selected]).float()
    count = selected.sum()
    loss = F.cross_entropy(logits, targets, reduction="sum") / count.clamp(min=1)
    correct = (logits.argmax(-1) == targets).sum()
    return loss, count, correct


def masked_acoustic_loss(
    head: MCAMHead, h_a: torch.Tensor, mcam_targets: torch.Tensor, mcam_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 between predicted and original frames, mean over masked frames x dims (3.2.2)."""
    preds = head(h_a[mcam_mask]).float()
    targets = mcam_targets[mcam_mask].float()
    count = mcam_mask.sum()
    loss = (preds - targets).abs().sum() / (count * preds.shape[-1]).clamp(min=1)
    return loss, count


class CTALForPretraining(PretrainedModel):
    """CTAL with its pre-training heads; `forward(batch)` takes the collator's batch.

    `use_mlm=False` / `use_mcam=False` give the paper's "w/o MLM" / "w/o MCAM"
    ablations (table 4 (b), (c)). Without MCAM the audio stream is not run at all.
    MLM reads the text stream only: the paper uses no audio to predict tokens (3.2.1).
    """

    tied_weight_keys = ("mlm_head.decoder.weight",)

    def __init__(self, config: CTALConfig, use_mlm: bool = True, use_mcam: bool = True):
        super().__init__()
        if not (use_mlm or use_mcam):
            raise ValueError("pre-training needs at least one of use_mlm and use_mcam")
        self.config = config
        self.use_mlm = use_mlm
        self.use_mcam = use_mcam
        self.ctal = CTALModel(config)
        self.mlm_head = MLMHead(config) if use_mlm else None
        self.mcam_head = MCAMHead(config) if use_mcam else None
        for head in (self.mlm_head, self.mcam_head):
            if head is not None:
                head.apply(partial(init_weights, std=config.initializer_range))
        if self.mlm_head is not None:
            self.mlm_head.tie_to(self.ctal.text_encoder.embeddings.token)

    def head_config(self) -> dict[str, bool]:
        return {"use_mlm": self.use_mlm, "use_mcam": self.use_mcam}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Returns loss (sum of enabled parts), mlm_loss, mcam_loss, mlm_tokens,
        mlm_correct and mcam_frames; a disabled part reports zeros."""
        states = self.ctal(
            batch["input_ids"],
            batch["text_mask"],
            batch["audio_feats"] if self.use_mcam else None,
            batch["audio_mask"] if self.use_mcam else None,
        )
        device = states.text_states.device
        zero = torch.zeros((), dtype=torch.float32, device=device)
        no_count = torch.zeros((), dtype=torch.long, device=device)
        mlm_loss, mlm_tokens, mlm_correct = zero, no_count, no_count
        mcam_loss, mcam_frames = zero, no_count
        if self.use_mlm:
            mlm_loss, mlm_tokens, mlm_correct = masked_lm_loss(
                self.mlm_head, states.text_states, batch["mlm_labels"]
            )
        if self.use_mcam:
            mcam_loss, mcam_frames = masked_acoustic_loss(
                self.mcam_head, states.audio_states, batch["mcam_targets"], batch["mcam_mask"]
            )
        return {
            "loss": mlm_loss + mcam_loss,
            "mlm_loss": mlm_loss,
            "mcam_loss": mcam_loss,
            "mlm_tokens": mlm_tokens,
            "mlm_correct": mlm_correct,
            "mcam_frames": mcam_frames,
        }
