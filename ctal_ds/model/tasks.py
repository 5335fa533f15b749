"""Fine-tuning heads over the fused representation (sections 3.3 and 4.2).

- classification (IEMOCAP emotions): logits = W h_fuse, cross-entropy.
- regression (CMU-MOSEI sentiment): a scalar w . h_fuse, L1 loss.
- speaker (LibriSpeech): a classifier over h_fuse, cross-entropy; verification scores
  h_fuse, the representation before the classifier, with cosine similarity (4.2.3).
  ``speaker_embedding_dim`` > 0 inserts an x-vector style bottleneck (linear, then
  ReLU before the classifier) whose pre-activation output is scored instead; that
  layer is not in the paper.

The training loss is task loss + orthogonal_weight * L_orth (3.3.1).

``probe=True`` is the frozen-representation evaluation of SUPERB / s3prl: the
backbone's weights are frozen (and it runs in eval mode, without dropout), and each
stream's input to the fusion is a learnable softmax-weighted sum of all its layers'
states (embeddings included), so the probe reads whichever layer holds the task's
information. Only the layer weights, the pooling and the head are trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctal_ds.model.config import CTALConfig
from ctal_ds.model.ctal import CTALModel
from ctal_ds.model.fusion import MODALITIES, CTALFusion
from ctal_ds.model.layers import init_weights
from ctal_ds.model.pretrained import PretrainedModel

TASKS = ("classification", "regression", "speaker")
# The paper adds L_orth to the task loss without a weight (section 3.3.1). At weight 1
# it dominates fine-tuning: most of it is the cosine of the two max-pooled vectors,
# which starts near 1 whatever the weights (max-pooled LayerNorm outputs are mostly
# positive); its gradient is larger than the task loss's and, from a pre-trained start,
# points against it, so the backbone is rebuilt to turn the pooled vectors apart
# instead of learning the task. 0.1 keeps the regulariser and lets the task lead
# (docs/finetune.md has the measurements).
ORTHOGONAL_WEIGHT = 0.1


@dataclass
class SequenceTaskConfig:
    task: str
    # Classes for classification, speakers for speaker; 1 for regression.
    num_labels: int = 1
    fusion: bool = True
    # 0 disables L_orth; 1.0 is the paper's plain sum.
    orthogonal_weight: float = ORTHOGONAL_WEIGHT
    modality: str = "both"
    classifier_dropout: float = 0.1
    # 0: the paper's speaker embedding, h_fuse itself; > 0: an extra bottleneck layer.
    speaker_embedding_dim: int = 0
    probe: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.task == "regression" and self.num_labels != 1:
            raise ValueError("regression predicts one scalar: num_labels must be 1")
        if self.task != "regression" and self.num_labels < 2:
            raise ValueError(f"{self.task} needs num_labels >= 2, got {self.num_labels}")
        if self.orthogonal_weight < 0:
            raise ValueError("orthogonal_weight must be >= 0")
        if self.speaker_embedding_dim < 0:
            raise ValueError("speaker_embedding_dim must be >= 0")


class CTALForSequenceTask(PretrainedModel):
    """CTAL backbone + fusion + one task head; `forward(batch)` takes the collator's batch.

    Returns loss (only when `labels` is in the batch), task_loss, orth_loss,
    `logits` (classification, speaker) or `preds` (regression), and `embedding`.
    """

    def __init__(self, config: CTALConfig, task: str | None = None, **task_config: Any):
        super().__init__()
        if task is None:
            raise ValueError(
                "CTALForSequenceTask needs task= (and num_labels=) when the checkpoint holds "
                "no task head"
            )
        self.config = config
        self.task_config = SequenceTaskConfig(task=task, **task_config)
        tc = self.task_config
        self.ctal = CTALModel(config)
        self.fusion = CTALFusion(config.hidden_size, fusion=tc.fusion, modality=tc.modality)
        self.dropout = nn.Dropout(tc.classifier_dropout)
        if tc.task == "speaker" and tc.speaker_embedding_dim > 0:
            self.embedding = nn.Linear(self.fusion.output_size, tc.speaker_embedding_dim)
            self.classifier = nn.Linear(tc.speaker_embedding_dim, tc.num_labels)
        else:
            self.embedding = None
            self.classifier = nn.Linear(self.fusion.output_size, tc.num_labels)
        for module in (self.fusion, self.embedding, self.classifier):
            if module is not None:
                module.apply(partial(init_weights, std=config.initializer_range))
        if tc.probe:
            # Zeros: the probe starts from the plain mean of the layers.
            self.text_layer_weights = nn.Parameter(torch.zeros(config.num_text_layers + 1))
            self.audio_layer_weights = nn.Parameter(torch.zeros(config.num_audio_layers + 1))
            self.ctal.requires_grad_(False)

    def train(self, mode: bool = True) -> CTALForSequenceTask:
        super().train(mode)
        if self.task_config.probe:
            self.ctal.eval()  # a frozen backbone is a fixed feature extractor: no dropout
        return self

    def _backbone(self, batch: dict[str, torch.Tensor], use_audio: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(text states, audio states) the fusion pools: H^N, or the probe's layer mix."""
        audio = (batch["audio_feats"], batch["audio_mask"]) if use_audio else (None, None)
        if not self.task_config.probe:
            states = self.ctal(batch["input_ids"], batch["text_mask"], *audio)
            return states.text_states, states.audio_states
        with torch.no_grad():
            states = self.ctal(batch["input_ids"], batch["text_mask"], *audio, all_layers=True)

        def mix(layers: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
            w = torch.softmax(weights.float(), dim=0).to(layers[0].dtype)
            return torch.einsum("k,kbth->bth", w, torch.stack(layers))

        text = mix(states.text_layers, self.text_layer_weights)
        audio_states = mix(states.audio_layers, self.audio_layer_weights) if use_audio else None
        return text, audio_states

    def head_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.task_config)

    def predict_from_states(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        audio_states: torch.Tensor | None,
        audio_mask: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        representation, orth = self.fusion(text_states, text_mask, audio_states, audio_mask)
        if orth is None:
            orth = torch.zeros((), dtype=torch.float32, device=representation.device)
        if self.embedding is not None:
            embedding = self.embedding(self.dropout(representation))
            logits = self.classifier(F.relu(embedding))
        else:
            embedding = representation
            logits = self.classifier(self.dropout(representation))
        out = {"embedding": embedding, "orth_loss": orth}
        if self.task_config.task == "regression":
            out["preds"] = logits.squeeze(-1)
        else:
            out["logits"] = logits
        return out

    def task_loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        if self.task_config.task == "regression":
            return F.l1_loss(out["preds"].float(), labels.float())
        return F.cross_entropy(out["logits"].float(), labels.long())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        use_audio = self.task_config.modality != "text"
        # Text-only (table 4 (e), "w/o audio outputs") does not read the audio at all.
        text_states, audio_states = self._backbone(batch, use_audio)
        audio_mask = batch["audio_mask"] if use_audio else None
        out = self.predict_from_states(text_states, batch["text_mask"], audio_states, audio_mask)
        if "labels" in batch:
            out["task_loss"] = self.task_loss(out, batch["labels"])
            out["loss"] = out["task_loss"] + self.task_config.orthogonal_weight * out["orth_loss"]
        return out
