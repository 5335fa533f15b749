"""What the demo corpus contains, decided before any audio is made.

Planning runs in one process from the corpus seed alone; synthesis workers only
execute :class:`Utterance` jobs. That is what makes the output independent of the
number of workers: nothing random happens in a worker except espeak-ng's noise, and
that is seeded from the utterance's own path.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from .espeak import VoiceSettings


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One audio file to synthesise."""

    path: str  # relative to the corpus root; the suffix picks the format (.flac / .wav)
    text: str  # what espeak-ng speaks (natural casing and punctuation)
    settings: VoiceSettings
    seed: int


@dataclasses.dataclass(frozen=True)
class CorpusSize:
    name: str
    # LibriSpeech layout: speakers x chapters x utterances per chapter, per subset
    # (train: train-clean, test: test-clean, other: train-other).
    ls_train_speakers: int
    ls_test_speakers: int
    ls_chapters_per_speaker: int
    ls_train_utts_per_chapter: int
    ls_test_utts_per_chapter: int
    ls_other_speakers: int
    ls_other_utts_per_chapter: int
    # IEMOCAP layout: five sessions, each with two speakers.
    iemocap_utts_per_session: int
    iemocap_dialogs_per_session: int
    # MOSEI layout: one speaker per video.
    mosei_videos: int
    mosei_clips_per_video: int


SIZES = {
    # About 12,900 utterances, 7.8 h of audio, synthesised in about a minute on two
    # idle cores. Pre-training gets leverage as in the paper (960 h against small
    # labelled sets): train-clean (960) + train-other (10,240) is over ten times each
    # labelled set (IEMOCAP 600 turns, MOSEI 810 clips, the 960 speaker-verification
    # training utterances of train-clean), and train-other's expressive reading
    # covers the prosody of the emotion and sentiment sets. Its 160 speakers leave
    # 42 of the pool's 352 voices unused.
    "default": CorpusSize(
        name="default",
        ls_train_speakers=40,
        ls_test_speakers=10,
        ls_chapters_per_speaker=2,
        ls_train_utts_per_chapter=12,
        ls_test_utts_per_chapter=15,
        ls_other_speakers=160,
        ls_other_utts_per_chapter=32,
        iemocap_utts_per_session=120,
        iemocap_dialogs_per_session=8,
        mosei_videos=90,
        mosei_clips_per_video=9,
    ),
    # About 100 utterances, every label and layout feature present: for tests.
    "small": CorpusSize(
        name="small",
        ls_train_speakers=6,
        ls_test_speakers=3,
        ls_chapters_per_speaker=2,
        ls_train_utts_per_chapter=2,
        ls_test_utts_per_chapter=2,
        ls_other_speakers=2,
        ls_other_utts_per_chapter=2,
        iemocap_utts_per_session=8,
        iemocap_dialogs_per_session=1,
        mosei_videos=5,
        mosei_clips_per_video=4,
    ),
}


def layout_rng(seed: int, layout: str) -> np.random.Generator:
    """An independent stream per layout, so resizing one layout leaves the others as
    they were."""
    return np.random.default_rng([seed, _stable_int(layout)])


def utterance_seed(seed: int, path: str) -> int:
    return _stable_int(f"{seed}:{path}") & 0x7FFFFFFF


def _stable_int(text: str) -> int:
    # Python's hash() is salted per process; a digest is the same everywhere.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def largest_remainder(shares: dict[str, float], total: int) -> dict[str, int]:
    """Split ``total`` into integer counts proportional to ``shares``, summing exactly
    to ``total`` (so a small corpus still has every label its shares allow)."""
    norm = sum(shares.values())
    exact = {k: total * v / norm for k, v in shares.items()}
    counts = {k: int(np.floor(x)) for k, x in exact.items()}
    by_remainder = sorted(shares, key=lambda k: (-(exact[k] - counts[k]), k))
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def pick_share(rng: np.random.Generator, shares: tuple[tuple[str, float], ...]) -> str:
    """One key of ``shares`` (pairs of key and probability), drawn with one uniform."""
    u = rng.random() * sum(p for _, p in shares)
    for key, p in shares:
        u -= p
        if u < 0:
            return key
    return shares[-1][0]
