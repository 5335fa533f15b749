"""The LibriSpeech-layout part of the demo corpus: read speech for pre-training and
speaker verification.

    librispeech/SPEAKERS.TXT
    librispeech/<subset>/<spk>/<ch>/<spk>-<ch>.trans.txt
    librispeech/<subset>/<spk>/<ch>/<spk>-<ch>-<utt>.flac

``train-clean`` and ``test-clean`` have disjoint speakers, as verification trials
need. Each chapter keeps to one topic, as a book chapter would.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np

from . import prosody
from .plan import CorpusSize, Utterance, utterance_seed
from .sentences import TOPICS, SentenceGenerator, librispeech_transcript
from .speakers import Speaker, SpeakerPool

ROOT = "librispeech"
SUBSETS = ("train-clean", "test-clean")
OPINION_SHARE = 0.25  # the rest is neutral narration

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
    gen = SentenceGenerator(rng)
    n_train, n_test = size.ls_train_speakers, size.ls_test_speakers
    # LibriSpeech ids are small integers; chapters are larger, all unique.
    speaker_ids = rng.choice(np.arange(10, 9000), size=n_train + n_test, replace=False)
    chapter_ids = rng.choice(
        np.arange(1000, 200000), size=(n_train + n_test) * size.ls_chapters_per_speaker,
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
                utt_id = f"{spk}-{ch}-{i:04d}"
                path = f"{chapter_dir}/{utt_id}.flac"
                utterances.append(LibriUtterance(
                    utt_id=utt_id,
                    chapter_dir=chapter_dir,
                    transcript=librispeech_transcript(sentence.text),
                    utterance=Utterance(path, sentence.text, prosody.read_speech(speaker, rng),
                                        utterance_seed(seed, path)),
                ))
    return LibriPlan(speakers, utterances)


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
