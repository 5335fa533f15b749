"""How a speaker says a line: read speech, an emotion, a sentiment, or expressive
reading (a narrator acting out a book), as espeak-ng settings around the speaker's
baseline.

Emotions differ in pitch level, pitch range and rate far more than in volume, and
every utterance draws its volume from one wide band, so loudness alone does not tell
an angry line from a sad one. Per-utterance jitter makes neighbouring classes overlap
(happy and excited, angry and frustrated), as annotated emotion does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .espeak import VoiceSettings
from .speakers import Speaker


@dataclasses.dataclass(frozen=True)
class Style:
    pitch: float  # added to the speaker's pitch (espeak units, 0-99)
    range: float  # added to the speaker's pitch range (0-99)
    rate: float  # multiplies the speaker's rate
    volume: float  # mean volume (100 = normal); jitter is added per utterance


EMOTION_STYLES = {
    "neu": Style(pitch=0, range=0, rate=1.00, volume=100),
    "hap": Style(pitch=16, range=22, rate=1.10, volume=104),
    "exc": Style(pitch=21, range=30, rate=1.17, volume=108),
    "ang": Style(pitch=7, range=30, rate=1.18, volume=106),
    "fru": Style(pitch=3, range=15, rate=1.08, volume=103),
    "sad": Style(pitch=-14, range=-30, rate=0.76, volume=98),
}
# Jitter half-widths (uniform): large for volume on purpose, small for the cues that
# carry the emotion.
PITCH_JITTER = 5
RANGE_JITTER = 9
RATE_JITTER = 0.06
VOLUME_JITTER = 28

# Sentiment prosody: a valence v in [-1.5, 1.5] moves pitch, range and rate together.
VALENCE_PITCH = 8
VALENCE_RANGE = 14
VALENCE_RATE = 0.06
VALENCE_BOUND = 1.5

# Expressive reading: a neutral line is read calmly, except this share, which the
# narrator colours with a style the words do not call for (a voice, not the text).
FREE_STYLE_SHARE = 0.2
# An opinion line's valence follows its words: polarity / 2 plus this much (uniform).
OPINION_VALENCE_JITTER = 0.5

def _settings(
    speaker: Speaker, pitch: float, pitch_range: float, rate: float, volume: float
) -> VoiceSettings:
    return VoiceSettings(
        voice=speaker.voice,
        pitch=int(round(speaker.pitch + pitch)),
        range=int(round(speaker.range + pitch_range)),
        rate=int(round(speaker.rate * rate)),
        volume=int(round(volume)),
    )


def read_speech(speaker: Speaker, rng: np.random.Generator) -> VoiceSettings:
    """Calm reading: the speaker's baseline with a little natural variation."""
    return _settings(
        speaker,
        pitch=rng.uniform(-3, 3),
        pitch_range=rng.uniform(-5, 5),
        rate=1 + rng.uniform(-0.04, 0.04),
        volume=100 + rng.uniform(-12, 12),
    )


def emotional_speech(speaker: Speaker, emotion: str, rng: np.random.Generator) -> VoiceSettings:
    """``emotion`` is one of :data:`EMOTION_STYLES` or ``"xxx"`` (annotators disagreed:
    a blend of two random styles)."""
    if emotion == "xxx":
        names = sorted(EMOTION_STYLES)
        a, b = (EMOTION_STYLES[names[i]] for i in rng.choice(len(names), size=2, replace=False))
        w = rng.uniform(0.3, 0.7)
        style = Style(*(w * getattr(a, f) + (1 - w) * getattr(b, f)
                        for f in ("pitch", "range", "rate", "volume")))
    else:
        style = EMOTION_STYLES[emotion]
    return _settings(
        speaker,
        pitch=style.pitch + rng.uniform(-PITCH_JITTER, PITCH_JITTER),
        pitch_range=style.range + rng.uniform(-RANGE_JITTER, RANGE_JITTER),
        rate=style.rate * (1 + rng.uniform(-RATE_JITTER, RATE_JITTER)),
        volume=style.volume + rng.uniform(-VOLUME_JITTER, VOLUME_JITTER),
    )


def sentiment_speech(speaker: Speaker, valence: float, rng: np.random.Generator) -> VoiceSettings:
    """Positive valence: higher, livelier, slightly faster; negative: lower, flatter,
    slower. Volume stays uninformative."""
    return _settings(
        speaker,
        pitch=VALENCE_PITCH * valence + rng.uniform(-3, 3),
        pitch_range=VALENCE_RANGE * valence + rng.uniform(-5, 5),
        rate=(1 + VALENCE_RATE * valence) * (1 + rng.uniform(-0.03, 0.03)),
        volume=100 + rng.uniform(-VOLUME_JITTER, VOLUME_JITTER),
    )


@dataclasses.dataclass(frozen=True)
class Reading:
    """One line of expressive reading: its settings and what was acted."""

    settings: VoiceSettings
    emotion: str | None = None  # an EMOTION_STYLES key when a style was acted
    valence: float | None = None  # in [-VALENCE_BOUND, VALENCE_BOUND] when a sentiment was


def expressive_reading(
    speaker: Speaker, rng: np.random.Generator, polarity: float = 0.0, emotion: str | None = None
) -> Reading:
    """An audiobook narrator acting out the text: an emotional line (``emotion``) in
    that emotion's style, an opinion (``polarity`` != 0) with a valence that follows its
    words, a neutral line calmly or, now and then, in a style of the voice's own.

    The voice then says something about the words, the link between the two streams
    that cross-modal pre-training (MCAM through cross-attention) can learn from, and
    pre-training hears the prosodic range of the downstream sets without their labels.
    """
    if emotion is None and polarity == 0.0 and rng.random() < FREE_STYLE_SHARE:
        if rng.random() < 0.5:
            names = sorted(EMOTION_STYLES)
            emotion = names[int(rng.integers(len(names)))]
        else:
            valence = float(rng.uniform(-VALENCE_BOUND, VALENCE_BOUND))
            return Reading(sentiment_speech(speaker, valence, rng), valence=valence)
    if emotion is not None:
        return Reading(emotional_speech(speaker, emotion, rng), emotion=emotion)
    if polarity != 0.0:
        jitter = rng.uniform(-OPINION_VALENCE_JITTER, OPINION_VALENCE_JITTER)
        valence = float(np.clip(polarity / 2 + jitter, -VALENCE_BOUND, VALENCE_BOUND))
        return Reading(sentiment_speech(speaker, valence, rng), valence=valence)
    return Reading(read_speech(speaker, rng))
