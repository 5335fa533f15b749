"""`CTALProcessor`: recordings and transcripts -> the model's input batch.

It reads what a model directory holds besides the weights (``tokenizer.json``,
``feature_config.json`` and the position limits in ``config.json``) and applies the
steps shard building applies, in the same code:

- audio: ``ctal_ds.data.audio.load_audio`` for a file (soundfile, channels averaged,
  soxr HQ resampling to the feature config's rate); a waveform given with its rate
  goes through the same averaging and resampling;
- features: ``ctal_ds.data.features.extract_batch`` (80 log-mel + delta, each dim
  normalised over the utterance), backend ``librosa`` as the shard builder's default,
  then rounded to float16 as a shard stores them, so a file gives the frames the model
  was trained and evaluated on;
- text: the tokenizer of the directory, ``<s> ... </s>`` around the normalised words.

Differences from shard building, both made for single recordings rather than a corpus:

- a recording longer than the model's ``max_frames`` positions is cropped (as a
  waveform, before the features, so the per-utterance normalisation covers the frames
  the model sees) and a transcript longer than ``max_tokens`` keeps its first
  ``max_tokens - 1`` tokens and ``</s>``, each with a warning; shard building
  rejects such inputs instead. ``truncation=False`` raises instead of cropping;
- audio without text gets the transcript ``""``, i.e. ``<s> </s>``. Pre-training and
  fine-tuning never saw an empty transcript (shard building rejects it), so audio
  states computed without text are outside what the model was trained on; pass the
  transcript whenever there is one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ctal_ds.data.audio import load_audio
from ctal_ds.data.features import BACKENDS, FeatureConfig, extract_batch
from ctal_ds.data.tokenizer import CTALTokenizer

FEATURE_CONFIG_NAME = "feature_config.json"

AudioInput = Any  # a path, a waveform (numpy array, torch tensor, list of floats), or a list of them


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _is_waveform(x: Any) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def _as_list(audio: AudioInput) -> tuple[list[Any], bool]:
    """(items, single): one path or one waveform array is one recording; a list or tuple
    holds one recording per item."""
    if _is_path(audio) or _is_waveform(audio):
        return [audio], True
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise ValueError("audio is an empty list")
        if all(isinstance(v, (int, float, np.number)) for v in audio):
            return [np.asarray(audio, dtype=np.float32)], True  # one waveform as a list of floats
        return list(audio), False
    raise TypeError(f"audio must be a path, a waveform or a list of them, got {type(audio).__name__}")


def is_single(audio: AudioInput) -> bool:
    """Whether ``audio`` is one recording (a path, a waveform array, a list of numbers)
    rather than a list of recordings."""
    return _as_list(audio)[1]


def to_mono(waveform: Any) -> np.ndarray:
    """float32 [n] from a waveform array: integer PCM is scaled to [-1, 1) as soundfile
    scales it; a 2-D array has its channels averaged as ``load_audio`` averages them.

    The channel axis of a 2-D array is its shorter one, so both soundfile's
    ``[samples, channels]`` and torchaudio's ``[channels, samples]`` layouts work.
    """
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu().numpy()
    data = np.asarray(waveform)
    if np.issubdtype(data.dtype, np.signedinteger):
        data = data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))
    elif not np.issubdtype(data.dtype, np.floating):
        raise TypeError(f"waveform dtype {data.dtype} is neither float nor signed integer PCM")
    data = data.astype(np.float32, copy=False)
    if data.ndim == 2:
        if data.shape[0] == data.shape[1]:
            raise ValueError(f"waveform of shape {data.shape}: cannot tell channels from samples")
        if data.shape[0] < data.shape[1]:
            data = data.T  # [channels, samples] -> [samples, channels]
        data = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    elif data.ndim != 1:
        raise ValueError(f"a waveform is 1-D (mono) or 2-D (channels), got shape {data.shape}")
    if data.size == 0:
        raise ValueError("empty waveform: no samples")
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise ValueError(f"waveform holds {bad} NaN or infinite samples")
    return np.ascontiguousarray(data)


class CTALProcessor:
    """Feature extractor + tokenizer of a CTAL model directory, as one callable.

        processor = CTALProcessor.from_pretrained("runs/base/export")
        batch = processor(audio=["a.wav", "b.flac"], text=["hello there", "good night"])
        model(**batch)  # or CTALModel.forward(**batch): input_ids, text_mask, audio_feats, audio_mask

    ``backend``/``device``: the feature backend (``librosa``, the shard builder's
    default, or ``torch``, batched and on ``device``); shards built with ``--backend
    torch`` hold the torch backend's features, which agree with librosa's to about
    1e-4, not bit for bit. ``shard_precision``: round features to float16 as shards
    store them (default); False keeps the float32 features.
    """

    def __init__(
        self,
        tokenizer: CTALTokenizer | None,
        feature_config: FeatureConfig | None = None,
        max_tokens: int | None = None,
        max_frames: int | None = None,
        backend: str = "librosa",
        device: str | torch.device | None = None,
        shard_precision: bool = True,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown feature backend {backend!r}; expected one of {BACKENDS}")
        if max_tokens is not None and max_tokens < 2:
            raise ValueError(f"max_tokens must leave room for <s> and </s>, got {max_tokens}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.tokenizer = tokenizer
        self.feature_config = feature_config or FeatureConfig()
        self.max_tokens = max_tokens
        self.max_frames = max_frames
        self.backend = backend
        self.device = device
        self.shard_precision = shard_precision

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any) -> CTALProcessor:
        """The processor of a model directory (a pre-training or a fine-tuning export).

        ``tokenizer.json`` is required for text (a directory without one can only
        process audio, with ``<s> </s>`` as the transcript); ``feature_config.json``
        is used when present, else the default ``FeatureConfig()`` with a warning.
        The limits come from ``config.json`` (``max_tokens``, ``max_frames``).
        Keyword arguments are passed to the constructor.
        """
        from ctal_ds.model.pretrained import TOKENIZER_NAME, read_pretrained_config

        directory = Path(directory)
        model = read_pretrained_config(directory)["model"]
        tokenizer_file = directory / TOKENIZER_NAME
        tokenizer = CTALTokenizer.load(tokenizer_file) if tokenizer_file.is_file() else None
        feature_file = directory / FEATURE_CONFIG_NAME
        if feature_file.is_file():
            features = FeatureConfig.from_dict(json.loads(feature_file.read_text()))
        else:
            warnings.warn(
                f"{directory} has no {FEATURE_CONFIG_NAME}: using the default FeatureConfig(); "
                "audio features are right only if its shards were built with the defaults",
                stacklevel=2,
            )
            features = FeatureConfig()
        kwargs.setdefault("max_tokens", model.get("max_tokens"))
        kwargs.setdefault("max_frames", model.get("max_frames"))
        return cls(tokenizer, features, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` and ``feature_config.json`` into ``directory``."""
        from ctal_ds.model.pretrained import TOKENIZER_NAME

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.tokenizer is not None:
            self.tokenizer.save(directory / TOKENIZER_NAME)
        (directory / FEATURE_CONFIG_NAME).write_text(json.dumps(self.feature_config.to_dict(), indent=2) + "\n")
        return directory

    @property
    def sample_rate(self) -> int:
        return self.feature_config.sample_rate

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_id if self.tokenizer is not None else 1

    # ------------------------------------------------------------------ audio

    def _reader_config(self) -> FeatureConfig:
        # max_duration_s only decides which files shard building refuses; here long
        # recordings are cropped to max_frames instead.
        return dataclasses.replace(self.feature_config, max_duration_s=math.inf)

    def load(self, path: str | os.PathLike, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
        """Mono float32 samples of an audio file (or of its segment from ``offset`` for
        ``duration`` seconds) at ``sample_rate``, read as shard building reads it; raises
        ``ctal_ds.data.audio.AudioRejected`` with the reason."""
        return load_audio(path, self._reader_config(), offset, duration)

    def waveform(self, audio: Any, sampling_rate: int | None = None) -> np.ndarray:
        """Mono float32 samples at ``sample_rate`` of a path or of a waveform at
        ``sampling_rate`` Hz."""
        if _is_path(audio):
            return self.load(audio)
        if sampling_rate is None:
            raise ValueError(
                f"a waveform needs its sampling_rate (the features are computed at {self.sample_rate} Hz)"
            )
        mono = to_mono(audio)
        if int(sampling_rate) != self.sample_rate:
            import soxr

            mono = soxr.resample(mono, int(sampling_rate), self.sample_rate, quality="HQ")
            if mono.size == 0:
                raise ValueError(f"the waveform resamples from {sampling_rate} Hz to no samples")
        return np.ascontiguousarray(mono, dtype=np.float32)

    def _crop(self, wave: np.ndarray, truncation: bool, index: int) -> np.ndarray:
        if self.max_frames is None or self.feature_config.n_frames(len(wave)) <= self.max_frames:
            return wave
        keep = self.max_frames * self.feature_config.hop_length - 1  # n_frames(keep) == max_frames
        seconds = len(wave) / self.sample_rate
        message = (
            f"recording {index} lasts {seconds:.2f} s, {self.feature_config.n_frames(len(wave))} frames; "
            f"the model takes at most max_frames={self.max_frames} ({keep / self.sample_rate:.2f} s)"
        )
        if not truncation:
            raise ValueError(message)
        warnings.warn(f"{message}: cropped to its first {keep / self.sample_rate:.2f} s", stacklevel=3)
        return wave[:keep]

    def features(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """float32 [T, 160] per waveform at ``sample_rate``, through float16 when
        ``shard_precision`` is on."""
        if self.backend == "librosa":
            # Shard-building workers run with one BLAS thread; the mel projection's sums
            # then come out in the same order, so the float32 features, and their float16
            # rounding, are those of the shards bit for bit.
            with threadpool_limits(limits=1, user_api="blas"):
                feats = extract_batch(list(waveforms), self.feature_config, self.backend)
        else:
            feats = extract_batch(list(waveforms), self.feature_config, self.backend, self.device)
        if not self.shard_precision:
            return feats
        out = []
        for f in feats:
            half = f.astype(np.float16)
            if not np.isfinite(half).all():
                raise ValueError("features overflow float16 (shard building rejects such input)")
            out.append(half.astype(np.float32))
        return out

    # ------------------------------------------------------------------ text

    def tokenize(self, texts: Sequence[str], truncation: bool = True) -> list[list[int]]:
        """``<s> ... </s>`` ids per text, cut to ``max_tokens`` (first tokens and ``</s>``)."""
        if self.tokenizer is None:
            if any(t.strip() for t in texts):
                raise ValueError("this model directory has no tokenizer.json: text cannot be encoded")
            return [[0, 2] for _ in texts]  # <s> </s>, the ids of docs/contracts.md
        ids = self.tokenizer.encode_batch(list(texts))
        if self.max_tokens is None:
            return ids
        out = []
        for i, row in enumerate(ids):
            if len(row) > self.max_tokens:
                message = f"text {i} has {len(row)} tokens; the model takes at most max_tokens={self.max_tokens}"
                if not truncation:
                    raise ValueError(message)
                warnings.warn(f"{message}: cut to its first {self.max_tokens - 2} tokens and </s>", stacklevel=3)
                row = [*row[: self.max_tokens - 1], self.tokenizer.eos_id]
            out.append(row)
        return out

    # ------------------------------------------------------------------ call

    def __call__(
        self,
        audio: AudioInput = None,
        text: str | Sequence[str | None] | None = None,
        sampling_rate: int | Sequence[int] | None = None,
        truncation: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The padded batch (docs/contracts.md): ``input_ids`` int64 [B, L] (``<pad>``
        past each text), ``text_mask`` bool [B, L], and with audio ``audio_feats``
        float32 [B, T, 160] (0 past each recording) and ``audio_mask`` bool [B, T].

        audio: a path, a waveform, or a list of paths and/or waveforms; ``sampling_rate``
            is the rate of the waveforms (one int, or one per recording).
        text: a transcript, or one per recording (None or "" for none: ``<s> </s>``).
            Without audio, text alone gives the text inputs only.
        A single recording is a batch of one.
        """
        texts, waves = self.prepare(audio, text, sampling_rate, truncation)
        return self.batch(waves, self.tokenize(texts, truncation))

    def prepare(
        self,
        audio: AudioInput,
        text: str | Sequence[str | None] | None,
        sampling_rate: int | Sequence[int] | None = None,
        truncation: bool = True,
    ) -> tuple[list[str], list[np.ndarray] | None]:
        """(transcripts, waveforms at ``sample_rate`` cropped to ``max_frames``, or None)."""
        if audio is None:
            if text is None:
                raise ValueError("give audio, text or both")
            texts = [text] if isinstance(text, str) else list(text)
            return [t or "" for t in texts], None
        items, _ = _as_list(audio)
        if isinstance(sampling_rate, (list, tuple)):
            if len(sampling_rate) != len(items):
                raise ValueError(f"{len(sampling_rate)} sampling rates for {len(items)} recordings")
            rates = list(sampling_rate)
        else:
            rates = [sampling_rate] * len(items)
        if text is None:
            texts = [""] * len(items)
        elif isinstance(text, str):
            texts = [text]
        else:
            texts = [t or "" for t in text]
        if len(texts) != len(items):
            raise ValueError(f"{len(items)} recordings but {len(texts)} texts")
        waves = [
            self._crop(self.waveform(item, rate), truncation, i) for i, (item, rate) in enumerate(zip(items, rates))
        ]
        return texts, waves

    def batch(self, waves: Sequence[np.ndarray] | None, token_ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pad token ids and (when given) the features of ``waves`` into model inputs."""
        lengths = [len(t) for t in token_ids]
        ids = np.full((len(token_ids), max(lengths)), self.pad_token_id, dtype=np.int64)
        for i, row in enumerate(token_ids):
            ids[i, : len(row)] = row
        out = {
            "input_ids": torch.from_numpy(ids),
            "text_mask": torch.from_numpy(np.arange(ids.shape[1])[None, :] < np.asarray(lengths)[:, None]),
        }
        if waves is None:
            return out
        feats = self.features(waves)
        frames = [len(f) for f in feats]
        padded = np.zeros((len(feats), max(frames), self.feature_config.dim), dtype=np.float32)
        for i, f in enumerate(feats):
            padded[i, : len(f)] = f
        out["audio_feats"] = torch.from_numpy(padded)
        out["audio_mask"] = torch.from_numpy(np.arange(padded.shape[1])[None, :] < np.asarray(frames)[:, None])
        return out
