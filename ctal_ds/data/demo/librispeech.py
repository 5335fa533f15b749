"""The LibriSpeech-layout part of the demo corpus: read speech for pre-training and
speaker verification.

    librispeech/SPEAKERS.TXT
    librispeech/<subset>/<spk>/<ch>/<spk>-<ch>.trans.txt
    librispeech/<subset>/<spk>/<ch>/<spk>-<ch>-<utt>.flac

``train-clean`` (default size: 40 speakers, 960 utterances) is calm reading and the
speaker-verification training set, kept small like the other labelled sets;
``test-clean`` (10 speakers, 300) has speakers unseen in training, as verification
trials need. ``train-other`` (160 speakers, 10,240) is unlabelled pre-training data
of expressive reading: narrators who act out some lines with the emotions and
sentiments of the downstream sets, so pre-training covers their prosody. Every
subset has its own speakers. Each chapter keeps to one topic, as a book chapter
would.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np

from . import prosody
from .espeak import VoiceSettings
from .plan import CorpusSize, Utterance, pick_share, utterance_seed
from .sentences import TOPICS, SentenceGenerator, librispeech_transcript
from .speakers import Speaker, SpeakerPool

ROOT = "librispeech"
SUBSETS = ("train-clean", "test-clean", "train-other")
TRAIN_OTHER = SUBSETS[2]
OPINION_SHARE = 0.25  # the rest is neutral narration
# train-other texts: narration, opinions and lines of dialogue.
OTHER_TEXT_SHARES = (("neutral", 0.5), ("opinion", 0.3), ("emotional", 0.2))
# Of train-other's opinion lines, the share in review style (clauses agreeing in sentiment).
REVIEW_SHARE = 0.5
_SPEAKER_IDS = (10, 9000)  # LibriSpeech ids are small integers; chapters are larger
_CHAPTER_IDS = (1000, 200000)

_FIRST_NAMES = {
    "F": ("Mary", "Helen", "Ruth", "Alice", "Kate", "Nora", "Edith", "Lena", "Ivy", "June",
          "Rose", "Ada", "Vera", "Ella", "Iris", "Maud"),
    "M": ("John", "Frank", "Hugh", "Walter", "Albert", "Leo", "Owen", "Carl", "Felix", "Ray",
          "Simon", "Ernest", "Victor", "Alan", "Ben", "Roy"),
}
_SURNAMES = ("Abbott", "Barker", "Carver", "Dalton", "Ellis", "Fenwick", "Garner", "Hale",
             "Ingram", "Jarvis", "Keane", "Lowry", "Marsh", "Norris", "Oakley", "Pryce",
             "Quill", "Rowe", "Sutton", "Thorne")


@dataclasses.dataclass(frozen=True)
class LibriSpeaker:
    speaker: Speaker
    subset: str
    name: str


@dataclasses.dataclass(frozen=True)
class LibriUtterance:
    utt_id: str  # <spk>-<ch>-<utt>
    chapter_dir: str  # relative to the corpus root
    transcript: str
    utterance: Utterance


@dataclasses.dataclass
class LibriPlan:
    speakers: list[LibriSpeaker]
    utterances: list[LibriUtterance]


def plan(size: CorpusSize, seed: int, rng: np.random.Generator, pool: SpeakerPool) -> LibriPlan:
    """train-clean and test-clean; train-other is added by :func:`add_train_other`."""
    gen = SentenceGenerator(rng)
    n_train, n_test = size.ls_train_speakers, size.ls_test_speakers
    speaker_ids = rng.choice(np.arange(*_SPEAKER_IDS), size=n_train + n_test, replace=False)
    chapter_ids = rng.choice(
        np.arange(*_CHAPTER_IDS), size=(n_train + n_test) * size.ls_chapters_per_speaker,
        replace=False,
    )
    names: set[str] = set()
    speakers, utterances = [], []
    chapters = iter(chapter_ids)
    for k, spk in enumerate(int(s) for s in speaker_ids):
        subset = SUBSETS[0] if k < n_train else SUBSETS[1]
        speaker = pool.draw(str(spk))
        name = _unique_name(rng, speaker.gender, names)
        speakers.append(LibriSpeaker(speaker, subset, name))
        per_chapter = size.ls_train_utts_per_chapter if k < n_train else size.ls_test_utts_per_chapter
        for _ in range(size.ls_chapters_per_speaker):
            ch = int(next(chapters))
            topic = TOPICS[int(rng.integers(len(TOPICS)))]
            chapter_dir = f"{ROOT}/{subset}/{spk}/{ch}"
            for i in range(per_chapter):
                sentence = gen.opinion(topic) if rng.random() < OPINION_SHARE else gen.neutral(topic)
                utterances.append(_utterance(seed, chapter_dir, spk, ch, i, sentence.text,
                                             prosody.read_speech(speaker, rng)))
    return LibriPlan(speakers, utterances)


def add_train_other(
    layout: LibriPlan, size: CorpusSize, seed: int, rng: np.random.Generator, pool: SpeakerPool
) -> LibriPlan:
    """``layout`` plus train-other. Planned after every other layout, from its own
    stream, so its size changes no other speaker, voice or line of the corpus."""
    gen = SentenceGenerator(rng)
    n = size.ls_other_speakers
    if n > pool.free():
        raise ValueError(f"train-other needs {n} voices; the speaker pool has {pool.free()} left")
    speaker_ids = _fresh_ids(rng, _SPEAKER_IDS, n,
                             {int(s.speaker.label) for s in layout.speakers})
    chapter_ids = _fresh_ids(rng, _CHAPTER_IDS, n * size.ls_chapters_per_speaker,
                             {int(Path(u.chapter_dir).name) for u in layout.utterances})
    names = {s.name for s in layout.speakers}
    speakers, utterances = list(layout.speakers), list(layout.utterances)
    chapters = iter(chapter_ids)
    emotions = sorted(prosody.EMOTION_STYLES)
    for spk in speaker_ids:
        speaker = pool.draw(str(spk))
        speakers.append(LibriSpeaker(speaker, TRAIN_OTHER, _unique_name(rng, speaker.gender, names)))
        for _ in range(size.ls_chapters_per_speaker):
            ch = next(chapters)
            topic = TOPICS[int(rng.integers(len(TOPICS)))]
            chapter_dir = f"{ROOT}/{TRAIN_OTHER}/{spk}/{ch}"
            for i in range(size.ls_other_utts_per_chapter):
                kind = pick_share(rng, OTHER_TEXT_SHARES)
                emotion = None
                if kind == "neutral":
                    sentence = gen.neutral(topic)
                elif kind == "opinion":
                    sentence = gen.review(topic) if rng.random() < REVIEW_SHARE else gen.opinion(topic)
                else:
                    emotion = emotions[int(rng.integers(len(emotions)))]
                    sentence = gen.emotional(emotion)
                reading = prosody.expressive_reading(speaker, rng, sentence.polarity, emotion)
                utterances.append(_utterance(seed, chapter_dir, spk, ch, i, sentence.text,
                                             reading.settings))
    return LibriPlan(speakers, utterances)


def _fresh_ids(rng: np.random.Generator, bounds: tuple[int, int], n: int, taken: set[int]) -> list[int]:
    ids = np.arange(*bounds)
    free = np.ones(len(ids), dtype=bool)
    free[np.array(sorted(taken), dtype=int) - bounds[0]] = False
    return [int(x) for x in rng.choice(ids[free], size=n, replace=False)]


def _utterance(seed: int, chapter_dir: str, spk: int, ch: int, i: int, text: str,
               settings: VoiceSettings) -> LibriUtterance:
    utt_id = f"{spk}-{ch}-{i:04d}"
    path = f"{chapter_dir}/{utt_id}.flac"
    return LibriUtterance(
        utt_id=utt_id,
        chapter_dir=chapter_dir,
        transcript=librispeech_transcript(text),
        utterance=Utterance(path, text, settings, utterance_seed(seed, path)),
    )


def _unique_name(rng: np.random.Generator, gender: str, taken: set[str]) -> str:
    while True:
        first = _FIRST_NAMES[gender][int(rng.integers(len(_FIRST_NAMES[gender])))]
        name = f"{first} {_SURNAMES[int(rng.integers(len(_SURNAMES)))]}"
        if name not in taken:
            taken.add(name)
            return name


def write_metadata(out_dir: Path, layout: LibriPlan, seconds: dict[str, float]) -> dict:
    """Transcripts per chapter and SPEAKERS.TXT; returns this layout's summary."""
    by_chapter: dict[str, list[LibriUtterance]] = collections.defaultdict(list)
    for u in layout.utterances:
        by_chapter[u.chapter_dir].append(u)
    for chapter_dir, utts in by_chapter.items():
        spk, ch = Path(chapter_dir).parts[-2:]
        lines = "".join(f"{u.utt_id} {u.transcript}\n" for u in utts)
        (out_dir / chapter_dir / f"{spk}-{ch}.trans.txt").write_text(lines, encoding="utf-8")

    minutes: dict[str, float] = collections.defaultdict(float)
    for u in layout.utterances:
        minutes[u.utt_id.split("-")[0]] += seconds[u.utterance.path] / 60
    rows = [
        "; Speakers of the ctal-ds demo corpus (synthetic voices, espeak-ng).\n",
        "; MINUTES is the audio of the speaker in this corpus.\n",
        ";\n",
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n",
    ]
    for s in sorted(layout.speakers, key=lambda s: int(s.speaker.label)):
        rows.append(f"{s.speaker.label:<5}| {s.speaker.gender} | {s.subset:<17}| "
                    f"{minutes[s.speaker.label]:5.2f} | {s.name}\n")
    (out_dir / ROOT / "SPEAKERS.TXT").write_text("".join(rows), encoding="utf-8")

    subsets = {}
    for subset in SUBSETS:
        if not any(s.subset == subset for s in layout.speakers):
            continue
        utts = [u for u in layout.utterances if f"/{subset}/" in u.chapter_dir]
        subsets[subset] = {
            "utterances": len(utts),
            "speakers": sum(s.subset == subset for s in layout.speakers),
            "chapters": len({u.chapter_dir for u in utts}),
            "seconds": round(sum(seconds[u.utterance.path] for u in utts), 1),
        }
    return {
        "utterances": len(layout.utterances),
        "speakers": len(layout.speakers),
        "gender": dict(collections.Counter(s.speaker.gender for s in layout.speakers)),
        "subsets": subsets,
        "seconds": round(sum(seconds[u.utterance.path] for u in layout.utterances), 1),
    }
