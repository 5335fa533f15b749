"""Audio loading for shard building: any soundfile format -> mono float32 at 16 kHz.

Resampling happens here, once, when shards are built (DESIGN.md section 4); training
never sees another rate. Inputs that cannot become features raise
:class:`AudioRejected`, whose reason starts with a class name the shard builder counts:
``unreadable audio``, ``empty audio``, ``non-finite audio``, ``too long``.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile
import soxr

from ctal_ds.data.features import FeatureConfig


class AudioRejected(Exception):
    """This file cannot be used; ``reason`` says why (class, then details)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _too_long(path, n_samples: int, sample_rate: int, config: FeatureConfig) -> None:
    seconds = n_samples / sample_rate
    if seconds > config.max_duration_s:
        raise AudioRejected(path, f"too long: {seconds:.2f} s > max_duration_s {config.max_duration_s:g} s")


def load_audio(path: str | os.PathLike, config: FeatureConfig | None = None) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``config.sample_rate``.

    Channels are averaged; other rates are resampled with soxr (HQ, deterministic).
    Raises :class:`AudioRejected` for a file that is unreadable, has no samples, holds
    NaN or infinite samples, or lasts longer than ``config.max_duration_s``.
    """
    config = config or FeatureConfig()
    try:
        # The header first: a long file is refused without decoding it.
        info = soundfile.info(str(path))
        if info.frames > 0:
            _too_long(path, info.frames, info.samplerate, config)
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except AudioRejected:
        raise
    except Exception as err:  # soundfile raises several types for missing or broken files
        raise AudioRejected(path, f"unreadable audio: {type(err).__name__}: {err}") from err
    if data.shape[0] == 0:
        raise AudioRejected(path, "empty audio: no samples")
    # Some containers do not store a frame count in the header; check what was decoded.
    _too_long(path, data.shape[0], rate, config)
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise AudioRejected(path, f"non-finite audio: {bad} NaN or infinite samples")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != config.sample_rate:
        mono = soxr.resample(mono, rate, config.sample_rate, quality="HQ")
        if mono.size == 0:
            raise AudioRejected(path, f"empty audio: {data.shape[0]} samples at {rate} Hz resample to none")
    return np.ascontiguousarray(mono, dtype=np.float32)
