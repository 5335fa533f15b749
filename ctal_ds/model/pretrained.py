"""One directory format for every CTAL model: save, load, and the `encode` API.

    <dir>/config.json        {"format_version", "architecture", "model": CTALConfig, "head": {...}}
    <dir>/model.safetensors  weights; tied copies are stored once
    <dir>/tokenizer.json     the tokenizer, when one was given
    <dir>/feature_config.json the audio FeatureConfig of the shards, when one was given

config.json also holds `label_names` (class index -> name) for a task model that was
saved with them. `CTALProcessor.from_pretrained(dir)` reads the tokenizer and the
feature config; `model.embed(audio=..., text=...)` uses that processor.

A checkpoint of one architecture can seed another: a pre-training checkpoint loaded
with `CTALForSequenceTask.from_pretrained(dir, task=..., num_labels=...)` brings its
backbone and starts the task head fresh.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ctal_ds.data.features import FeatureConfig
from ctal_ds.model.config import CTALConfig
from ctal_ds.model.inference import embed, encode
from ctal_ds.model.processor import FEATURE_CONFIG_NAME, CTALProcessor

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
FORMAT_VERSION = 1


class PretrainedModel(nn.Module):
    """Base of the CTAL models: directory save/load and `encode`.

    Subclasses are built as `cls(config, **head_config())` and name where their
    backbone's weights live (`backbone_prefix`) and which state-dict keys are tied
    aliases of other keys (`tied_weight_keys`).
    """

    architectures: ClassVar[dict[str, type[PretrainedModel]]] = {}
    backbone_prefix: ClassVar[str] = "ctal."
    tied_weight_keys: ClassVar[tuple[str, ...]] = ()
    config: CTALConfig
    # Set by from_pretrained: the directory loaded, and the class names stored there.
    pretrained_dir: Path | None = None
    label_names: tuple[str, ...] | None = None
    _processor: CTALProcessor | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        PretrainedModel.architectures[cls.__name__] = cls

    @property
    def backbone(self) -> nn.Module:
        return self.ctal

    def head_config(self) -> dict[str, Any]:
        """Constructor arguments besides the CTALConfig, saved in config.json."""
        return {}

    def save_pretrained(
        self,
        directory: str | Path,
        tokenizer_file: str | Path | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
        feature_config: dict[str, Any] | FeatureConfig | None = None,
        label_names: Sequence[str] | None = None,
    ) -> Path:
        """Write the model directory.

        `state_dict` replaces the module's own, e.g. the consolidated weights of a
        ZeRO-3 engine, whose module holds only this rank's partition.
        `feature_config` (a `FeatureConfig.to_dict()`, as a shard manifest's `features`)
        is written as feature_config.json. `label_names` (default: the model's own,
        from the directory it was loaded from) name the task head's classes.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_dict() if state_dict is None else state_dict
        # safetensors refuses tensors that share memory; the tie is rebuilt by the
        # constructor on load, so the alias is not stored.
        tensors = {
            key: value.detach().cpu().contiguous()
            for key, value in state.items()
            if key not in self.tied_weight_keys
        }
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        meta = {
            "format_version": FORMAT_VERSION,
            "architecture": type(self).__name__,
            "model": self.config.to_dict(),
            "head": self.head_config(),
        }
        names = self.label_names if label_names is None else tuple(label_names)
        if names is not None:
            meta["label_names"] = list(names)
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, directory / TOKENIZER_NAME)
        if feature_config is not None:
            if isinstance(feature_config, FeatureConfig):
                feature_config = feature_config.to_dict()
            (directory / FEATURE_CONFIG_NAME).write_text(json.dumps(dict(feature_config), indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        config_overrides: dict[str, Any] | None = None,
        **head_config: Any,
    ) -> PretrainedModel:
        """Load a model directory.

        `config_overrides` changes CTALConfig fields that do not change the weights
        (attn_impl, dropout, activation_checkpointing). When the directory holds
        another architecture, only its backbone is loaded and `head_config` must give
        this class's head arguments.
        """
        directory = Path(directory)
        meta = read_pretrained_config(directory)
        config = CTALConfig.from_dict({**meta["model"], **(config_overrides or {})})
        saved_cls = cls.architectures.get(meta["architecture"])
        if saved_cls is None:
            raise ValueError(f"{directory} holds unknown architecture {meta['architecture']!r}")
        state = load_file(str(directory / WEIGHTS_NAME))
        if saved_cls is cls:
            model = cls(config, **{**meta["head"], **head_config})
            model._load_full_state(state)
            if meta.get("label_names") is not None:
                model.label_names = tuple(meta["label_names"])
        else:
            model = cls(config, **head_config)
            prefix = saved_cls.backbone_prefix
            backbone_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            model.backbone.load_state_dict(backbone_state, strict=True)
        model.pretrained_dir = directory
        return model

    def _load_full_state(self, state: dict[str, torch.Tensor]) -> None:
        result = self.load_state_dict(state, strict=False)
        missing = set(result.missing_keys) - set(self.tied_weight_keys)
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"checkpoint does not match {type(self).__name__}: missing {sorted(missing)}, "
                f"unexpected {sorted(result.unexpected_keys)}"
            )

    def encode(
        self,
        features: Any,
        tokens: Any,
        audio_mask: Any = None,
        text_mask: Any = None,
    ) -> dict[str, torch.Tensor]:
        """Representations of utterances; see `ctal_ds.model.inference.encode`."""
        return encode(self, features, tokens, audio_mask=audio_mask, text_mask=text_mask)

    @property
    def processor(self) -> CTALProcessor:
        """The `CTALProcessor` of the directory the model was loaded from, limited to
        this model's positions; assign one to use other settings (e.g. the torch
        feature backend on a GPU)."""
        if self._processor is None:
            if self.pretrained_dir is None:
                raise ValueError(
                    "this model was not loaded with from_pretrained: set model.processor = "
                    "CTALProcessor.from_pretrained(<model directory>) or pass processor= to embed"
                )
            self._processor = CTALProcessor.from_pretrained(
                self.pretrained_dir, max_tokens=self.config.max_tokens, max_frames=self.config.max_frames
            )
        return self._processor

    @processor.setter
    def processor(self, processor: CTALProcessor) -> None:
        self._processor = processor

    def embed(
        self,
        audio: Any = None,
        text: Any = None,
        sampling_rate: Any = None,
        processor: CTALProcessor | None = None,
        truncation: bool = True,
    ) -> dict[str, Any]:
        """Representations of recordings (paths or waveforms at `sampling_rate`) and
        their transcripts; see `ctal_ds.model.inference.embed` and `CTALProcessor`."""
        return embed(self, processor or self.processor, audio, text, sampling_rate, truncation)


def read_pretrained_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a ctal-ds model directory")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
    return meta


def load_pretrained(
    directory: str | Path, config_overrides: dict[str, Any] | None = None
) -> PretrainedModel:
    """Load a model directory as the architecture it was saved from."""
    meta = read_pretrained_config(directory)
    cls = PretrainedModel.architectures.get(meta["architecture"])
    if cls is None:
        raise ValueError(f"{directory} holds unknown architecture {meta['architecture']!r}")
    return cls.from_pretrained(directory, config_overrides=config_overrides)


def tokenizer_path(directory: str | Path) -> Path | None:
    path = Path(directory) / TOKENIZER_NAME
    return path if path.is_file() else None
