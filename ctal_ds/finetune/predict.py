"""One evaluation pass: a model over a split, outputs gathered from every rank.

The model is either a DeepSpeed engine (inside a fine-tune run, any ZeRO stage) or a
plain module (an exported model evaluated without DeepSpeed); both are called on the
same collated batches, so the two give the same numbers. Labels are taken out of the
batch before the forward pass: evaluation needs the outputs, not the training loss,
and the speaker test split has no training class to put there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ctal_ds.data.shard_reader import ShardSample
from ctal_ds.finetune.batches import Collate, eval_batches

OUTPUT_KEYS = ("logits", "preds", "embedding")


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Outputs of one pass, rows in utterance-id order."""

    ids: tuple[str, ...]
    labels: np.ndarray
    outputs: dict[str, np.ndarray]  # logits [N, C] or preds [N]; embedding [N, D]

    @property
    def scores(self) -> np.ndarray:
        """What the task metrics take: logits for classes, predicted values for regression."""
        return self.outputs["logits"] if "logits" in self.outputs else self.outputs["preds"]

    def select(self, ids: Sequence[str]) -> Predictions:
        row = {u: i for i, u in enumerate(self.ids)}
        index = np.array([row[u] for u in ids], dtype=np.int64)
        return Predictions(tuple(ids), self.labels[index], {k: v[index] for k, v in self.outputs.items()})


def _gather(local: dict[str, Any]) -> list[dict[str, Any]]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        return parts
    return [local]


@torch.no_grad()
def predict(
    model: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
    samples: Sequence[ShardSample],
    collate: Collate,
    device: torch.device,
    max_batch: int = 16,
    rank: int = 0,
    world: int = 1,
) -> Predictions:
    """Run ``model`` over ``samples`` (every rank calls this with the same samples)."""
    module = getattr(model, "module", model)
    was_training = module.training
    module.eval()
    keys: list[str] = []
    labels: list[np.ndarray] = []
    outputs: dict[str, list[np.ndarray]] = {}
    try:
        for batch_samples in eval_batches(samples, max_batch, rank, world):
            batch = collate(batch_samples, 0)
            labels.append(batch.pop("labels").numpy())
            tensors = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            out = model(tensors)
            for key in OUTPUT_KEYS:
                if key in out:
                    outputs.setdefault(key, []).append(out[key].detach().float().cpu().numpy())
            keys += [s.meta["id"] for s in batch_samples]
    finally:
        module.train(was_training)
    local = {
        "ids": keys,
        "labels": np.concatenate(labels) if labels else np.zeros(0),
        "outputs": {k: np.concatenate(v) for k, v in outputs.items()},
    }
    parts = [p for p in _gather(local) if p["ids"]]
    ids = [u for p in parts for u in p["ids"]]
    order = np.argsort(np.array(ids), kind="stable")
    merged_labels = np.concatenate([p["labels"] for p in parts])[order]
    merged = {k: np.concatenate([p["outputs"][k] for p in parts])[order] for k in parts[0]["outputs"]}
    return Predictions(tuple(ids[i] for i in order), merged_labels, merged)
