"""The CMU-MOSEI-layout part of the demo corpus (MMSA style): opinion clips with a
sentiment score in [-3, 3].

    mosei/label.csv   video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode
    mosei/wav/<video_id>/<clip_id>.wav

A clip's score is the sum of what its words say and what its voice says:
``label = clip(TEXT_WEIGHT * word polarity + valence)``, the valence realised only by
prosody. Some sentences are neutral in their words, so their score is prosody alone;
neither modality predicts the label on its own. ``label_T`` and ``label_A`` hold the
two parts (as CH-SIMS does for its unimodal labels); there is no video, so
``label_V`` is empty. Scores are rounded to thirds, like MOSEI's averages of three
ratings.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import string
from pathlib import Path

import numpy as np

from . import prosody
from .plan import CorpusSize, Utterance, utterance_seed
from .sentences import TOPICS, SentenceGenerator
from .speakers import SpeakerPool

ROOT = "mosei"
COLUMNS = ("video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V",
           "annotation", "mode")
TEXT_WEIGHT = 0.7
VALENCE_BOUND = 1.5  # prosodic valence is drawn from [-1.5, 1.5]
NEUTRAL_TEXT_SHARE = 0.3
SPLIT_SHARES = (("train", 0.7), ("valid", 0.1), ("test", 0.2))
_BASE62 = string.ascii_letters + string.digits


@dataclasses.dataclass(frozen=True)
class Clip:
    video_id: str
    clip_id: int
    mode: str
    label: float
    label_text: float
    label_audio: float
    utterance: Utterance


def round_thirds(x: float) -> float:
    return round(round(x * 3) / 3, 4)


def _video_modes(n: int, rng: np.random.Generator) -> list[str]:
    """Split by video, as MOSEI does, with at least one video in every split."""
    n_valid = max(1, round(n * SPLIT_SHARES[1][1]))
    n_test = max(1, round(n * SPLIT_SHARES[2][1]))
    modes = ["valid"] * n_valid + ["test"] * n_test
    modes += ["train"] * (n - len(modes))
    return [modes[i] for i in rng.permutation(n)]


def plan(size: CorpusSize, seed: int, rng: np.random.Generator, pool: SpeakerPool) -> list[Clip]:
    gen = SentenceGenerator(rng)
    video_ids: list[str] = []
    while len(video_ids) < size.mosei_videos:
        vid = "".join(_BASE62[i] for i in rng.integers(len(_BASE62), size=11))
        if vid not in video_ids:
            video_ids.append(vid)
    modes = _video_modes(size.mosei_videos, rng)
    clips = []
    for vid, mode in zip(video_ids, modes):
        speaker = pool.draw(vid)
        topic = TOPICS[int(rng.integers(len(TOPICS)))]  # a video reviews one thing
        for clip_id in range(size.mosei_clips_per_video):
            if rng.random() < NEUTRAL_TEXT_SHARE:
                sentence = gen.neutral(topic)
            else:
                sentence = gen.opinion(topic, sign=1 if rng.random() < 0.5 else -1)
            valence = float(rng.uniform(-VALENCE_BOUND, VALENCE_BOUND))
            label = float(np.clip(TEXT_WEIGHT * sentence.polarity + valence, -3, 3))
            path = f"{ROOT}/wav/{vid}/{clip_id}.wav"
            clips.append(Clip(
                video_id=vid, clip_id=clip_id, mode=mode,
                label=round_thirds(label),
                label_text=round_thirds(TEXT_WEIGHT * sentence.polarity),
                label_audio=round_thirds(valence),
                utterance=Utterance(path, sentence.text,
                                    prosody.sentiment_speech(speaker, valence, rng),
                                    utterance_seed(seed, path)),
            ))
    return clips


def _annotation(label: float) -> str:
    return "Positive" if label > 0 else "Negative" if label < 0 else "Neutral"


def write_metadata(out_dir: Path, clips: list[Clip], seconds: dict[str, float]) -> dict:
    """label.csv; returns this layout's summary."""
    with (out_dir / ROOT / "label.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for c in clips:
            writer.writerow([c.video_id, c.clip_id, c.utterance.text, c.label, c.label_text,
                             c.label_audio, "", _annotation(c.label), c.mode])
    labels = np.array([c.label for c in clips])
    return {
        "clips": len(clips),
        "videos": len({c.video_id for c in clips}),
        "speakers": len({c.video_id for c in clips}),
        "modes": dict(collections.Counter(c.mode for c in clips)),
        "annotation": dict(collections.Counter(_annotation(c.label) for c in clips)),
        "label_mean": round(float(labels.mean()), 3),
        "label_std": round(float(labels.std()), 3),
        "label_min": float(labels.min()),
        "label_max": float(labels.max()),
        "seconds": round(sum(seconds[c.utterance.path] for c in clips), 1),
    }
