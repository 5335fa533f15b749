"""Turn an :class:`Utterance` into a 16 kHz mono 16-bit file on disk.

espeak-ng speaks at 22.05 kHz; the corpus is 16 kHz like the real ones, resampled
once here (soxr, deterministic). Leading and trailing silence is cut to a short
margin, so durations and timestamps describe speech.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .espeak import ESpeak
from .plan import Utterance

SAMPLE_RATE = 16000
MARGIN_S = 0.06  # silence kept before and after speech
_FRAME = 160  # 10 ms at 16 kHz
_SILENCE_DB = -45.0  # frames this far below the loudest frame count as silence
_FORMATS = {".flac": "FLAC", ".wav": "WAV"}


@dataclasses.dataclass(frozen=True)
class Rendered:
    path: str
    seconds: float


def trim_silence(audio: np.ndarray) -> np.ndarray:
    """Cut leading and trailing silence down to :data:`MARGIN_S`."""
    n = len(audio) // _FRAME
    if n == 0:
        return audio
    frames = audio[: n * _FRAME].reshape(n, _FRAME)
    energy = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(energy > energy.max() * 10 ** (_SILENCE_DB / 20))
    if loud.size == 0:
        return audio
    margin = int(MARGIN_S * SAMPLE_RATE)
    start = max(0, loud[0] * _FRAME - margin)
    end = min(len(audio), (loud[-1] + 1) * _FRAME + margin)
    return audio[start:end]


def render(utt: Utterance, engine: ESpeak, out_dir: Path) -> Rendered:
    samples = engine.synthesize(utt.text, utt.settings, utt.seed)
    if samples.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {utt.path}: {utt.text!r}")
    audio = soxr.resample(samples.astype(np.float32) / 32768.0, engine.sample_rate, SAMPLE_RATE,
                          quality="HQ")
    pcm = np.clip(np.rint(trim_silence(audio) * 32768.0), -32768, 32767).astype(np.int16)
    path = out_dir / utt.path
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16", format=_FORMATS[path.suffix])
    return Rendered(utt.path, len(pcm) / SAMPLE_RATE)


# Worker processes: one engine each, made once by the pool initialiser.
_engine: ESpeak | None = None
_out_dir: Path | None = None


def init_worker(out_dir: str) -> None:
    global _engine, _out_dir
    _engine = ESpeak()
    _out_dir = Path(out_dir)


def render_in_worker(utt: Utterance) -> Rendered:
    assert _engine is not None and _out_dir is not None, "init_worker was not called"
    return render(utt, _engine, _out_dir)
