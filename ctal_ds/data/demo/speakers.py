"""Synthetic speakers: an espeak-ng accent and voice variant plus a fixed pitch,
pitch range and speaking rate. The four together stay the same for every utterance
of a speaker, so speaker identity can be learned from the audio alone.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# English accents shipped with espeak-ng (espeak-ng-data/lang/gmw).
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-029", "en-us-nyc")

# Voice variants (espeak-ng-data/voices/!v) by the gender they sound like. Left out:
# robot, whisper, heavy-echo and novelty variants, variants that duplicate another's
# settings, and the few far louder or quieter than the rest (they clip or vanish).
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika",
                   "aunty", "belinda", "linda", "grandma", "steph", "shelby")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Denis", "Diogo", "Henrique",
                 "Lee", "michel", "miguel", "travis", "Alex", "Mario", "Mike", "adam", "benjamin",
                 "boris", "david", "edward", "gustave", "kaukovalta", "max", "quincy", "rob",
                 "robert")

# Per-speaker baselines, in espeak-ng parameter units. Emotion and sentiment offsets
# (prosody.py) are added on top and must stay inside the library's bounds.
PITCH_RANGE = (32, 68)
RANGE_RANGE = (35, 65)
RATE_RANGE = (150, 195)  # words per minute


@dataclasses.dataclass(frozen=True)
class Speaker:
    label: str  # the corpus's own speaker id ("103", "Ses01_F", a MOSEI video id)
    gender: str  # "F" or "M"
    accent: str
    variant: str
    pitch: int
    range: int
    rate: int

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


class SpeakerPool:
    """Draws speakers without repeating an (accent, variant) pair, so no two speakers
    of the whole corpus share a timbre and an accent."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._free = {
            gender: [(a, v) for a in ACCENTS for v in variants]
            for gender, variants in (("F", FEMALE_VARIANTS), ("M", MALE_VARIANTS))
        }
        for combos in self._free.values():
            order = rng.permutation(len(combos))
            combos[:] = [combos[i] for i in order]

    def free(self, gender: str | None = None) -> int:
        """How many voices are left (of one gender, or in all)."""
        return sum(len(v) for g, v in self._free.items() if gender in (None, g))

    def draw(self, label: str, gender: str | None = None) -> Speaker:
        """A speaker with an unused voice. Without ``gender``, a coin decides; once one
        gender's voices are used up the other's are drawn, so a large layout planned
        last can use every voice left."""
        if gender is None:
            gender = "F" if self.rng.random() < 0.5 else "M"
            if not self._free[gender]:
                gender = "M" if gender == "F" else "F"
        if not self._free[gender]:
            raise RuntimeError(f"no unused {gender} voices left for speaker {label}")
        accent, variant = self._free[gender].pop()
        return Speaker(
            label=label,
            gender=gender,
            accent=accent,
            variant=variant,
            pitch=int(self.rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            range=int(self.rng.integers(RANGE_RANGE[0], RANGE_RANGE[1] + 1)),
            rate=int(self.rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)),
        )
