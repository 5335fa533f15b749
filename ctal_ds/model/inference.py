"""Representations of utterances for users outside the training loop.

`encode` takes features and token ids as shards hold them; `embed` takes recordings
(paths or waveforms) and transcripts and prepares them with a `CTALProcessor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ctal_ds.model.fusion import masked_mean
from ctal_ds.model.processor import is_single


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x))


def _pad(items: list[torch.Tensor], pad_value: float | int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(item) for item in items]
    padded = items[0].new_full((len(items), max(lengths), *items[0].shape[1:]), pad_value)
    mask = torch.zeros(len(items), max(lengths), dtype=torch.bool)
    for i, item in enumerate(items):
        padded[i, : len(item)] = item
        mask[i, : len(item)] = True
    return padded, mask


def _is_ragged(x: Any, item_ndim: int) -> bool:
    """A list or tuple of items (arrays, tensors or lists) rather than one array."""
    if not isinstance(x, Sequence) or isinstance(x, str) or len(x) == 0:
        return False
    first = x[0]
    return (first.ndim if isinstance(first, torch.Tensor) else np.ndim(first)) == item_ndim


def prepare_inputs(
    features: Any,
    tokens: Any,
    pad_token_id: int,
    audio_mask: Any = None,
    text_mask: Any = None,
) -> tuple[dict[str, torch.Tensor], bool]:
    """Turn features and token ids into a model batch; True when the input was one utterance.

    Accepted forms: one utterance (features [T, 160], token ids [L]); a padded batch
    ([B, T, 160], [B, L], masks optional: missing audio_mask means no padded frames,
    missing text_mask means every non-`<pad>` id is real); or lists of per-utterance
    arrays of different lengths, padded here.
    """
    if _is_ragged(features, 2):
        feats, default_audio_mask = _pad([_as_tensor(f) for f in features], 0.0)
    else:
        feats = _as_tensor(features)
        default_audio_mask = None
    if _is_ragged(tokens, 1):
        ids, default_text_mask = _pad([_as_tensor(t).long() for t in tokens], pad_token_id)
    else:
        ids = _as_tensor(tokens).long()
        default_text_mask = None

    single = feats.ndim == 2
    if single != (ids.ndim == 1):
        raise ValueError(
            f"features {tuple(feats.shape)} and tokens {tuple(ids.shape)} must both be one "
            "utterance ([T, 160] and [L]) or both batched ([B, T, 160] and [B, L])"
        )
    if single:
        feats, ids = feats[None], ids[None]
        audio_mask = None if audio_mask is None else _as_tensor(audio_mask)[None]
        text_mask = None if text_mask is None else _as_tensor(text_mask)[None]
    if feats.shape[0] != ids.shape[0]:
        raise ValueError(f"{feats.shape[0]} feature sequences but {ids.shape[0]} token sequences")

    if audio_mask is None:
        audio_mask = default_audio_mask
    if audio_mask is None:
        audio_mask = torch.ones(feats.shape[:2], dtype=torch.bool)
    if text_mask is None:
        text_mask = default_text_mask
    if text_mask is None:
        text_mask = ids != pad_token_id
    batch = {
        "input_ids": ids,
        "text_mask": _as_tensor(text_mask).bool(),
        "audio_feats": feats.float(),
        "audio_mask": _as_tensor(audio_mask).bool(),
    }
    return batch, single


def encode(
    model: nn.Module,
    features: Any,
    tokens: Any,
    audio_mask: Any = None,
    text_mask: Any = None,
) -> dict[str, torch.Tensor]:
    """Encode utterances with any CTAL model, in eval mode and without gradients.

    Returns per-frame `audio_states` (H_a^N), per-token `text_states` (H_w^N), their
    masked means over real positions (`audio_pooled`, `text_pooled`), and the masks.
    A fine-tuned task model adds its task outputs: `embedding` (h_fuse, or the
    speaker embedding) and `logits` or `preds`. One utterance in gives tensors
    without the batch dimension.
    """
    batch, single = prepare_inputs(
        features, tokens, model.backbone.config.pad_token_id, audio_mask=audio_mask, text_mask=text_mask
    )
    result = run_model(model, batch)
    if single:
        result = {k: v[0] for k, v in result.items()}
    return result


def run_model(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`encode`'s outputs for a padded batch (input_ids, text_mask, and optionally
    audio_feats, audio_mask), moved to the model's device and dtype. Without audio
    only the text outputs are returned."""
    backbone = model.backbone
    param = next(model.parameters())
    batch = {k: v.to(param.device) for k, v in batch.items()}
    has_audio = "audio_feats" in batch
    if has_audio:
        batch["audio_feats"] = batch["audio_feats"].to(param.dtype)
    task_config = getattr(model, "task_config", None)
    if task_config is not None and task_config.modality != "text" and not has_audio:
        raise ValueError(f"this {task_config.task} model reads audio (modality {task_config.modality!r}): give audio")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            states = backbone(**batch)
            result = {
                "text_states": states.text_states,
                "text_pooled": masked_mean(states.text_states, batch["text_mask"]),
                "text_mask": batch["text_mask"],
            }
            if has_audio:
                result.update(
                    audio_states=states.audio_states,
                    audio_pooled=masked_mean(states.audio_states, batch["audio_mask"]),
                    audio_mask=batch["audio_mask"],
                )
            if hasattr(model, "predict_from_states"):
                text_in, audio_in = states.text_states, states.audio_states
                if task_config.probe:
                    # A probe's head reads its learnt mix of every layer, not H^N.
                    text_in, audio_in = model._backbone(batch, has_audio)
                task = model.predict_from_states(text_in, batch["text_mask"], audio_in, batch.get("audio_mask"))
                result.update({k: v for k, v in task.items() if k != "orth_loss"})
    finally:
        model.train(was_training)
    return result


def _task_outputs(model: nn.Module, result: dict[str, Any]) -> None:
    """Readable task outputs of a fine-tuned model, added to `result` in place."""
    task_config = getattr(model, "task_config", None)
    if task_config is None:
        return
    if task_config.task == "regression":
        result["score"] = result["preds"].float()
        return
    probs = torch.softmax(result["logits"].float(), dim=-1)
    result["probs"] = probs
    result["label"] = probs.argmax(-1)
    names = getattr(model, "label_names", None)
    if names:
        result["label_name"] = [names[i] for i in result["label"].tolist()]
    if task_config.task == "speaker":
        result["speaker_embedding"] = result["embedding"]


def embed(
    model: nn.Module,
    processor: Any,
    audio: Any = None,
    text: Any = None,
    sampling_rate: Any = None,
    truncation: bool = True,
) -> dict[str, Any]:
    """Representations of recordings and transcripts, from raw audio and text.

    `processor` (a `CTALProcessor`) turns the inputs into the batch shard building and
    the collator would give; the model runs in eval mode, without gradients, on its own
    device. Returns `run_model`'s outputs, plus for a fine-tuned model `probs`, `label`
    and `label_name` (classification, speaker; names when the directory stores them),
    `score` (regression) and `speaker_embedding` (speaker). One recording (a path or one
    waveform array) with one text gives tensors without the batch dimension.
    """
    texts, waves = processor.prepare(audio, text, sampling_rate, truncation)
    single = is_single(audio) if audio is not None else isinstance(text, str)
    batch = processor.batch(waves, processor.tokenize(texts, truncation))
    result: dict[str, Any] = run_model(model, batch)
    _task_outputs(model, result)
    if single:
        result = {k: v[0] for k, v in result.items()}
    return result

