"""Audio loading for shard building: any soundfile format -> mono float32 at 16 kHz.

Resampling happens here, once, when shards are built (DESIGN.md section 4); training
never sees another rate. Inputs that cannot become features raise
:class:`AudioRejected`, whose reason starts with a class name the shard builder counts:
``unreadable audio``, ``empty audio``, ``non-finite audio``, ``too long``, ``bad segment``.
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


def segment_frames(offset: float, duration: float | None, sample_rate: int) -> tuple[int, int | None]:
    """(first frame, frame count or None for "to the end") of a segment given in seconds,
    rounded as lhotse rounds them (``compute_num_samples``)."""
    start = int(round(offset * sample_rate))
    return start, None if duration is None else int(round(duration * sample_rate))


def load_audio(
    path: str | os.PathLike,
    config: FeatureConfig | None = None,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``config.sample_rate``.

    ``offset`` and ``duration`` (seconds) select a segment of the file, cut at the file's
    own rate before resampling; a segment that ends past the file's end is refused.
    Channels are averaged; other rates are resampled with soxr (HQ, deterministic).
    Raises :class:`AudioRejected` for a file that is unreadable, has no samples, holds
    NaN or infinite samples, or lasts longer than ``config.max_duration_s``.
    """
    config = config or FeatureConfig()
    segment = offset != 0.0 or duration is not None
    try:
        # The header first: a long file is refused without decoding it.
        info = soundfile.info(str(path))
        start, frames = segment_frames(offset, duration, info.samplerate)
        if segment and info.frames > 0:
            stop = info.frames if frames is None else start + frames
            if start < 0 or stop > info.frames or stop <= start:
                raise AudioRejected(
                    path, f"bad segment: {offset:g} s + {duration} s is frames [{start}, {stop}) of a file "
                    f"of {info.frames} frames at {info.samplerate} Hz",
                )
        if info.frames > 0:
            _too_long(path, (info.frames - start) if frames is None else frames, info.samplerate, config)
        data, rate = soundfile.read(
            str(path), dtype="float32", always_2d=True, start=start, frames=-1 if frames is None else frames
        )
    except AudioRejected:
        raise
    except Exception as err:  # soundfile raises several types for missing or broken files
        raise AudioRejected(path, f"unreadable audio: {type(err).__name__}: {err}") from err
    if segment and frames is not None and data.shape[0] != frames:
        raise AudioRejected(path, f"bad segment: {frames} frames from frame {start} asked, {data.shape[0]} read")
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
