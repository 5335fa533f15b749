"""The model a fine-tune starts from: pre-trained weights, or the same network fresh.

``--init`` accepts what pre-training leaves behind:

- a ``save_pretrained`` directory (``config.json``), e.g. ``<run>/export``;
- a ZeRO checkpoint: a tag directory (``global_stepN`` with ``complete.json``), a
  ``checkpoints/`` root (its newest complete tag) or a pre-training run directory
  (its ``export/`` if present, else its newest checkpoint). Checkpoints are
  consolidated with the export code of pre-training (``ctal_ds.train.export``) into
  a model directory first, so every start goes through one loading path.

A pre-training directory seeds the backbone and the task head starts fresh; a
fine-tuned model directory (its head matching) is loaded whole. ``scratch`` builds the
same architecture with fresh weights: the "w/o pre-training" baseline of table 4, sized
like the pre-trained model it is compared with, or from a preset when no model is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ctal_ds.model import CTALConfig, CTALForSequenceTask
from ctal_ds.model.pretrained import CONFIG_NAME, TOKENIZER_NAME, read_pretrained_config
from ctal_ds.model.tasks import ORTHOGONAL_WEIGHT
from ctal_ds.tasks.base import TaskSpec


@dataclasses.dataclass(frozen=True)
class HeadSettings:
    """The fine-tuning head and the ablation switches of table 4 (d)-(f)."""

    fusion: bool = True
    orthogonal_weight: float = ORTHOGONAL_WEIGHT
    modality: str = "both"  # both | audio | text
    classifier_dropout: float = 0.1
    # Frozen backbone, learnable mix of every layer's states: the probe of SUPERB.
    probe: bool = False

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_init(init: Path, workdir: Path) -> Path:
    """A model directory for ``init``; checkpoints are exported into ``workdir`` first."""
    from ctal_ds.train.checkpoint import is_complete, latest_complete

    init = Path(init)
    if (init / CONFIG_NAME).is_file():
        return init
    if (init / "export" / CONFIG_NAME).is_file():
        return init / "export"
    tag = init if is_complete(init) else latest_complete(init) or latest_complete(init / "checkpoints")
    if tag is None:
        raise FileNotFoundError(
            f"--init {init}: neither a model directory (config.json) nor a complete checkpoint "
            "(a global_stepN with complete.json, a checkpoints/ root or a run directory)"
        )
    from ctal_ds.train.export import export_checkpoint

    target = Path(workdir) / f"consolidated-{tag.parent.parent.name}-{tag.name}"
    marker = target / "export.json"
    if not (marker.is_file() and json.loads(marker.read_text())["source"] == str(tag.resolve())):
        export_checkpoint(tag, target)
    return target


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_vocabulary(model_dir: Path, tokenizer: Path, vocab_size: int) -> None:
    """The model must read token ids the way the task shards wrote them."""
    meta = read_pretrained_config(model_dir)
    if meta["model"]["vocab_size"] < vocab_size:
        raise ValueError(
            f"{model_dir} has vocab_size {meta['model']['vocab_size']}, the task shards' tokenizer "
            f"{vocab_size}: build the task shards with the pre-training tokenizer (--tokenizer)"
        )
    saved = Path(model_dir) / TOKENIZER_NAME
    if saved.is_file() and tokenizer.is_file() and _file_sha256(saved) != _file_sha256(tokenizer):
        raise ValueError(
            f"{model_dir}/{TOKENIZER_NAME} differs from the task shards' {tokenizer}: token ids would "
            "mean other words; build the task shards with the model's tokenizer (--tokenizer)"
        )


def scratch_config(
    preset: str, vocab_size: int, longest_frames: int, overrides: dict[str, Any], longest_tokens: int = 0
) -> CTALConfig:
    """The preset widened to the task shards, as pre-training widens it to its shards:
    position tables too short for the longest utterance or transcript would stop the
    run at the first batch that holds it."""
    base = CTALConfig.preset(preset)
    fitted = {
        "vocab_size": vocab_size,
        "max_frames": max(base.max_frames, longest_frames),
        "max_tokens": max(base.max_tokens, longest_tokens),
    }
    return CTALConfig.preset(preset, **{**fitted, **overrides})


def build_task_model(
    spec: TaskSpec,
    head: HeadSettings,
    init: Path | None,
    scratch: bool,
    seed: int,
    preset: str = "tiny",
    fitted: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> CTALForSequenceTask:
    """The task model; identical on every rank (the head is drawn from ``seed``).

    ``fitted``: ``vocab_size``, ``longest_frames`` and ``longest_tokens`` of the task
    shards, for a scratch model built from a preset.
    """
    torch.manual_seed(seed)
    task_args = dict(task=spec.kind, num_labels=spec.num_labels, **head.kwargs())
    if init is None:
        if not scratch:
            raise ValueError("give a pre-trained model (--init) or ask for --scratch")
        fitted = fitted or {}
        config = scratch_config(
            preset, fitted["vocab_size"], fitted.get("longest_frames", 0), overrides or {},
            fitted.get("longest_tokens", 0),
        )  # fmt: skip
        return CTALForSequenceTask(config, **task_args)
    meta = read_pretrained_config(init)
    if scratch:
        config = CTALConfig.from_dict({**meta["model"], **(overrides or {})})
        return CTALForSequenceTask(config, **task_args)
    if overrides:
        # Only fields that leave the weights' shapes alone can change on load.
        return CTALForSequenceTask.from_pretrained(init, config_overrides=overrides, **task_args)
    return CTALForSequenceTask.from_pretrained(init, **task_args)
