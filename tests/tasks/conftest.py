"""Tiny corpora of records for the task tests, shaped like the corpus readers' output."""

from __future__ import annotations

import pytest

from ctal_ds.data.records import Record
from ctal_ds.tasks.emotion import EMOTIONS


def make_iemocap(sessions=(1, 2, 3, 4, 5), dialogues: int = 3, turns: int = 8) -> list[Record]:
    """IEMOCAP-like records: per session ``dialogues`` dialogues of ``turns`` turns, the
    two speakers alternating, emotions cycling so every dialogue has every class."""
    records = []
    for s in sessions:
        for d in range(1, dialogues + 1):
            dialogue = f"Ses0{s}F_impro0{d}"
            for t in range(turns):
                gender = "FM"[t % 2]
                records.append(
                    Record(
                        id=f"{dialogue}_{gender}{t:03d}",
                        audio=f"/iemocap/Session{s}/sentences/wav/{dialogue}/{dialogue}_{gender}{t:03d}.wav",
                        text="words",
                        speaker=f"Ses0{s}_{gender}",
                        split=f"Session{s}",
                        labels={"emotion": EMOTIONS[(t + d) % 4], "session": s},
                    )
                )
    return records


def make_librispeech(
    subset: str, speakers: list[str], utts: int = 5, chapter: int = 100
) -> list[Record]:
    return [
        Record(
            id=f"{spk}-{chapter}-{u:04d}",
            audio=f"/libri/{subset}/{spk}/{chapter}/{spk}-{chapter}-{u:04d}.flac",
            text="words",
            speaker=spk,
            split=subset,
            labels={"gender": "F"},
        )
        for spk in speakers
        for u in range(utts)
    ]


@pytest.fixture
def iemocap():
    return make_iemocap


@pytest.fixture
def librispeech():
    return make_librispeech
