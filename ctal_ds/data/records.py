"""The one record type every corpus reader yields, and the rejection that replaces it.

A reader never drops an input silently: each utterance it finds becomes either a
:class:`Record` or a :class:`Rejection` naming the file (and line) and the reason.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Record:
    """One utterance: audio on disk plus its transcript and metadata.

    id:       unique within the corpus (e.g. ``103-1240-0000``, ``Ses01F_impro01_F000``).
    audio:    path of the audio file.
    text:     transcript, non-empty.
    speaker:  speaker label, unique across the corpus.
    split:    where the corpus puts it (LibriSpeech subset, IEMOCAP ``Session1``,
              MOSEI ``train``/``valid``/``test``, manifest value or ``""``).
    labels:   task labels, e.g. ``{"emotion": "ang", "session": 1}``,
              ``{"sentiment": -1.2}``, ``{"gender": "F"}``.
    offset, duration: the segment of ``audio`` the utterance is, in seconds (a lhotse
              supervision inside a longer recording); ``0.0`` and ``None``: the whole file.
    """

    id: str
    audio: str
    text: str
    speaker: str
    split: str = ""
    labels: dict[str, Any] = dataclasses.field(default_factory=dict)
    offset: float = 0.0
    duration: float | None = None

    @property
    def segment(self) -> list[float] | None:
        """``[offset, duration]`` of a segment, None for a whole file."""
        if self.offset == 0.0 and self.duration is None:
            return None
        return [self.offset, self.duration]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Rejection:
    """An input that did not become a record: where it is and why."""

    source: str  # file path, with ":<line>" where the input was a line
    reason: str
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CorpusScan:
    """What a reader found: every input is in exactly one of the two lists."""

    corpus: str
    root: str
    records: list[Record] = dataclasses.field(default_factory=list)
    rejections: list[Rejection] = dataclasses.field(default_factory=list)
    # Problems in metadata that is not an utterance (e.g. a bad SPEAKERS.TXT line).
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def inputs(self) -> int:
        return len(self.records) + len(self.rejections)

    def reject(self, source: str, reason: str, id: str | None = None) -> None:
        self.rejections.append(Rejection(source=str(source), reason=reason, id=id))

    def rejection_counts(self) -> dict[str, int]:
        """Rejections grouped by reason class (the text before the first ':')."""
        return dict(collections.Counter(r.reason.split(":")[0] for r in self.rejections))

    def summary(self) -> str:
        lines = [
            f"{self.corpus} corpus at {self.root}: {self.inputs} inputs -> "
            f"{len(self.records)} records, {len(self.rejections)} rejected"
        ]
        for reason, n in sorted(self.rejection_counts().items(), key=lambda kv: -kv[1]):
            lines.append(f"  rejected {n:>6}  {reason}")
        if self.warnings:
            lines.append(f"  {len(self.warnings)} metadata warning(s), first: {self.warnings[0]}")
        return "\n".join(lines)
