"""The IEMOCAP-layout part of the demo corpus: acted dialogues with emotion labels.

    iemocap/Session{n}/dialog/EmoEvaluation/<dialog>.txt
    iemocap/Session{n}/dialog/transcriptions/<dialog>.txt
    iemocap/Session{n}/sentences/wav/<dialog>/<utt>.wav

Five sessions of two speakers (one F, one M). Labels follow the release: ang, hap,
exc (merged into hap by the 4-class protocol), neu, sad, plus fru and xxx, which the
protocol drops. Words give a line's valence at most; arousal is in the voice.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np

from . import prosody
from .plan import CorpusSize, Utterance, largest_remainder, utterance_seed
from .sentences import SentenceGenerator
from .speakers import Speaker, SpeakerPool

ROOT = "iemocap"
SESSIONS = (1, 2, 3, 4, 5)
# Label shares; fru and xxx are there to be dropped by the reader.
EMOTION_SHARES = {"ang": 0.18, "hap": 0.12, "exc": 0.12, "neu": 0.25, "sad": 0.18,
                  "fru": 0.09, "xxx": 0.06}
EMOTIONAL_TEXT_SHARE = 0.55  # the other lines are emotionally neutral in their words

# Mean (valence, activation, dominance) per label on the release's 1-5 scale.
_VAD = {"neu": (3.0, 2.5, 2.8), "hap": (3.9, 3.0, 3.1), "exc": (4.0, 3.6, 3.4),
        "ang": (1.8, 3.8, 3.9), "sad": (2.0, 2.2, 2.3), "fru": (2.1, 3.2, 3.3),
        "xxx": (2.8, 2.9, 3.0)}
_CATEGORY = {"neu": "Neutral", "hap": "Happiness", "exc": "Excited", "ang": "Anger",
             "sad": "Sadness", "fru": "Frustration"}
_EVALUATORS = ("C-E1", "C-E2", "C-E3")
_ATTRIBUTE_EVALUATORS = ("A-E1", "A-E2")


@dataclasses.dataclass(frozen=True)
class Turn:
    utt_id: str
    dialog: str
    session: int
    gender: str
    emotion: str
    gap_s: float  # silence before the turn, to lay out the dialogue's time line
    categories: tuple[str, ...]  # one categorical label per evaluator
    attributes: tuple[tuple[int, int, int], ...]  # (val, act, dom) per attribute evaluator
    utterance: Utterance


@dataclasses.dataclass
class IemocapPlan:
    speakers: dict[str, Speaker]  # "Ses01_F" -> speaker
    turns: list[Turn]


def _dialog_names(session: int, n: int) -> list[str]:
    """Ses01F_impro01, Ses01M_impro01, Ses01F_script01_1, Ses01M_script01_1, ..."""
    names = []
    for k in range(n):
        index = k // 4 + 1
        marker = "FM"[k % 2]
        kind = "impro" if (k // 2) % 2 == 0 else "script"
        suffix = "_1" if kind == "script" else ""
        names.append(f"Ses0{session}{marker}_{kind}{index:02d}{suffix}")
    return names


def _annotations(emotion: str, rng: np.random.Generator):
    if emotion == "xxx":  # no majority: every evaluator saw something else
        picks = rng.choice(sorted(_CATEGORY.values()), size=len(_EVALUATORS), replace=False)
        categories = tuple(str(c) for c in picks)
    else:
        others = [c for c in _CATEGORY.values() if c != _CATEGORY[emotion]]
        third = _CATEGORY[emotion] if rng.random() < 0.5 else others[int(rng.integers(len(others)))]
        categories = (_CATEGORY[emotion], _CATEGORY[emotion], third)
    attributes = tuple(
        tuple(int(np.clip(np.rint(m + rng.normal(0, 0.6)), 1, 5)) for m in _VAD[emotion])
        for _ in _ATTRIBUTE_EVALUATORS
    )
    return categories, attributes


def plan(size: CorpusSize, seed: int, rng: np.random.Generator, pool: SpeakerPool) -> IemocapPlan:
    gen = SentenceGenerator(rng)
    speakers = {
        f"Ses0{s}_{g}": pool.draw(f"Ses0{s}_{g}", gender=g) for s in SESSIONS for g in "FM"
    }
    total = size.iemocap_utts_per_session * len(SESSIONS)
    counts = largest_remainder(EMOTION_SHARES, total)
    # Deal the labels to sessions round-robin, so every fold of leave-one-session-out
    # sees every class.
    schedule = [e for e in sorted(counts) for _ in range(counts[e])]
    per_session: dict[int, list[str]] = {s: [] for s in SESSIONS}
    for i, emotion in enumerate(schedule):
        per_session[SESSIONS[i % len(SESSIONS)]].append(emotion)

    turns = []
    for session in SESSIONS:
        labels = [per_session[session][i] for i in rng.permutation(len(per_session[session]))]
        dialogs = _dialog_names(session, size.iemocap_dialogs_per_session)
        for d, chunk in enumerate(np.array_split(np.array(labels), len(dialogs))):
            dialog = dialogs[d]
            topic = gen.topic()
            gender = "FM"[int(rng.integers(2))]
            counter = collections.Counter()
            for emotion in (str(e) for e in chunk):
                # Speakers mostly take turns; sometimes one says two lines in a row.
                gender = gender if rng.random() < 0.2 else ("M" if gender == "F" else "F")
                speaker = speakers[f"Ses0{session}_{gender}"]
                utt_id = f"{dialog}_{gender}{counter[gender]:03d}"
                counter[gender] += 1
                text_emotion = emotion
                if emotion == "xxx":
                    text_emotion = sorted(_CATEGORY)[int(rng.integers(len(_CATEGORY)))]
                if rng.random() < EMOTIONAL_TEXT_SHARE:
                    text = gen.emotional(text_emotion).text
                elif rng.random() < 0.5:  # small talk, said in any mood
                    text = gen.emotional("neu").text
                else:
                    text = gen.neutral(topic).text
                path = f"{ROOT}/Session{session}/sentences/wav/{dialog}/{utt_id}.wav"
                categories, attributes = _annotations(emotion, rng)
                turns.append(Turn(
                    utt_id=utt_id, dialog=dialog, session=session, gender=gender,
                    emotion=emotion, gap_s=float(rng.uniform(0.3, 1.8)),
                    categories=categories, attributes=attributes,
                    utterance=Utterance(path, text, prosody.emotional_speech(speaker, emotion, rng),
                                        utterance_seed(seed, path)),
                ))
    return IemocapPlan(speakers, turns)


def _vad_line(attributes) -> str:
    means = np.mean(np.array(attributes, dtype=float), axis=0)
    return "[" + ", ".join(f"{m:.4f}" for m in means) + "]"


def write_metadata(out_dir: Path, layout: IemocapPlan, seconds: dict[str, float]) -> dict:
    """EmoEvaluation and transcription files per dialogue, with times laid out from the
    real durations; returns this layout's summary."""
    by_dialog: dict[tuple[int, str], list[Turn]] = collections.defaultdict(list)
    for t in layout.turns:
        by_dialog[(t.session, t.dialog)].append(t)
    for (session, dialog), turns in by_dialog.items():
        base = out_dir / ROOT / f"Session{session}" / "dialog"
        evaluation = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n", "\n"]
        transcript = []
        clock = 0.0
        for t in turns:
            start = clock + t.gap_s
            end = start + seconds[t.utterance.path]
            clock = end
            evaluation.append(f"[{start:.4f} - {end:.4f}]\t{t.utt_id}\t{t.emotion}\t{_vad_line(t.attributes)}\n")
            for who, category in zip(_EVALUATORS, t.categories):
                evaluation.append(f"{who}:\t{category};\t()\n")
            for who, (v, a, d) in zip(_ATTRIBUTE_EVALUATORS, t.attributes):
                evaluation.append(f"{who}:\tval {v}; act {a}; dom  {d};\t()\n")
            evaluation.append("\n")
            transcript.append(f"{t.utt_id} [{start:08.4f}-{end:08.4f}]: {t.utterance.text}\n")
        for sub, lines in (("EmoEvaluation", evaluation), ("transcriptions", transcript)):
            (base / sub).mkdir(parents=True, exist_ok=True)
            (base / sub / f"{dialog}.txt").write_text("".join(lines), encoding="utf-8")

    return {
        "utterances": len(layout.turns),
        "speakers": len(layout.speakers),
        "sessions": len(SESSIONS),
        "dialogs": len(by_dialog),
        "emotions": dict(sorted(collections.Counter(t.emotion for t in layout.turns).items())),
        "seconds": round(sum(seconds[t.utterance.path] for t in layout.turns), 1),
    }
