"""Readers for the corpora users have: LibriSpeech, IEMOCAP, CMU-MOSEI (MMSA) and JSONL.

Each reader returns a :class:`CorpusScan`. Accounting rule, the same for every reader:
an *input* is an utterance named anywhere in the corpus (a transcript line, a label line,
an audio file) or a line that could not be parsed. Each input ends up exactly once, as a
record or as a rejection whose reason starts with one of the classes below, so
``len(records) + len(rejections) == inputs`` and nothing is dropped silently.

Rejection reason classes (text before the first ':'):
  missing audio, empty audio, unreadable audio, missing transcript, empty transcript,
  malformed line, unreadable file, duplicate id, bad label, unlabelled, excluded label
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

from ctal_ds.data.records import CorpusScan, Record

AUDIO_EXTENSIONS = (".flac", ".wav")

# IEMOCAP 4-class protocol (paper section 4.2): excited is merged into happy; every other
# category (frustrated, surprised, fear, disgust, other, no agreement "xxx") is excluded.
IEMOCAP_EMOTIONS = {"ang": "ang", "hap": "hap", "exc": "hap", "neu": "neu", "sad": "sad"}

MOSEI_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
MOSEI_MODES = ("train", "valid", "test")


class CorpusError(ValueError):
    """The corpus as a whole cannot be read (wrong layout, missing label file)."""


def _read_lines(path: Path, scan: CorpusScan) -> list[str] | None:
    """Lines of a text file, or None after recording why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        scan.reject(str(path), f"unreadable file: {type(err).__name__}: {err}")
        return None


def _audio_problem(path: Path, probe_audio: bool) -> str | None:
    """Why an audio file cannot be used, or None. Stat is cheap; probing reads the header."""
    if not path.is_file():
        return f"missing audio: {path}"
    if path.stat().st_size == 0:
        return f"empty audio: {path} has 0 bytes"
    if probe_audio:
        import soundfile

        try:
            info = soundfile.info(str(path))
        except Exception as err:  # soundfile raises several types for broken files
            return f"unreadable audio: {path}: {err}"
        if info.frames == 0:
            return f"empty audio: {path} has no samples"
    return None


def _finish(scan: CorpusScan, candidate: Record, probe_audio: bool) -> None:
    problem = _audio_problem(Path(candidate.audio), probe_audio)
    if problem:
        scan.reject(candidate.audio, problem, candidate.id)
    else:
        scan.records.append(candidate)


# --------------------------------------------------------------------------- LibriSpeech


def _librispeech_speakers(root: Path, scan: CorpusScan) -> dict[str, dict[str, str]]:
    """SPEAKERS.TXT: ``ID |SEX| SUBSET |MINUTES| NAME``; optional, metadata only."""
    for candidate in (root / "SPEAKERS.TXT", root.parent / "SPEAKERS.TXT"):
        if candidate.is_file():
            lines = _read_lines(candidate, scan)
            break
    else:
        return {}
    speakers: dict[str, dict[str, str]] = {}
    for n, line in enumerate(lines or [], start=1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 3 or not fields[0].isdigit() or fields[1] not in ("M", "F"):
            scan.warnings.append(f"{candidate}:{n}: not a speaker line, ignored: {line!r}")
            continue
        speakers[fields[0]] = {"gender": fields[1], "subset": fields[2]}
    return speakers


def read_librispeech(root: str | os.PathLike, probe_audio: bool = False) -> CorpusScan:
    """``<subset>/<speaker>/<chapter>/<spk>-<ch>-<utt>.flac`` with ``<spk>-<ch>.trans.txt``.

    ``root`` is the folder holding the subsets (``LibriSpeech/``) or one subset folder.
    """
    root = Path(root)
    scan = CorpusScan(corpus="librispeech", root=str(root))
    trans_files = sorted(root.glob("*/*/*/*.trans.txt"))
    subset_of = lambda p: p.relative_to(root).parts[0]  # noqa: E731
    if not trans_files:
        trans_files = sorted(root.glob("*/*/*.trans.txt"))
        subset_of = lambda p: root.name  # noqa: E731
    audio_files = sorted(
        p for ext in AUDIO_EXTENSIONS for p in root.glob(f"**/*-*-*{ext}") if p.is_file()
    )
    if not trans_files and not audio_files:
        raise CorpusError(f"{root}: no LibriSpeech transcripts (*.trans.txt) or audio found")
    speakers = _librispeech_speakers(root, scan)

    audio_by_id = {p.stem: p for p in audio_files}
    seen: set[str] = set()
    for trans in trans_files:
        chapter_dir = trans.parent
        expected_prefix = f"{chapter_dir.parent.name}-{chapter_dir.name}-"
        lines = _read_lines(trans, scan)
        if lines is None:
            # Utterances of this chapter are reported below as missing their transcript.
            continue
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            source = f"{trans}:{n}"
            utt_id, _, text = line.strip().partition(" ")
            if not utt_id.startswith(expected_prefix) or not re.fullmatch(r"\d+-\d+-\d+", utt_id):
                scan.reject(source, f"malformed line: expected '{expected_prefix}<utt> TEXT'")
                continue
            if utt_id in seen:
                scan.reject(source, f"duplicate id: {utt_id}", utt_id)
                continue
            seen.add(utt_id)
            if not text.strip():
                scan.reject(source, "empty transcript", utt_id)
                continue
            audio = audio_by_id.get(utt_id, chapter_dir / f"{utt_id}.flac")
            spk = utt_id.split("-")[0]
            labels = {"gender": speakers[spk]["gender"]} if spk in speakers else {}
            _finish(
                scan,
                Record(utt_id, str(audio), " ".join(text.split()), spk, subset_of(trans), labels),
                probe_audio,
            )
    for utt_id, path in audio_by_id.items():
        if utt_id not in seen:
            scan.reject(str(path), "missing transcript: no line in the chapter's .trans.txt", utt_id)
    return scan


# --------------------------------------------------------------------------- IEMOCAP

_IEMOCAP_EVAL = re.compile(r"^\[(\d+\.?\d*) - (\d+\.?\d*)\]\t(\S+)\t(\S+)\t\[")
_IEMOCAP_TRANS = re.compile(r"^(\S+) \[[\d.]+-[\d.]+\]:\s*(.*)$")
_IEMOCAP_ID = re.compile(r"^Ses0(\d)[FM]_\w+_([FM])\d+$")


def read_iemocap(root: str | os.PathLike, probe_audio: bool = False) -> CorpusScan:
    """The IEMOCAP release: ``Session{1..5}/dialog/{EmoEvaluation,transcriptions}/*.txt``
    and ``Session{n}/sentences/wav/<dialog>/<utt>.wav``; 4-class labels, session = fold."""
    root = Path(root)
    scan = CorpusScan(corpus="iemocap", root=str(root))
    sessions = sorted(p for p in root.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise CorpusError(f"{root}: no Session1..Session5 folders (IEMOCAP release layout)")
    for session_dir in sessions:
        session = int(session_dir.name[-1])
        dialog = session_dir / "dialog"
        emotions: dict[str, tuple[str, str]] = {}  # utt id -> (raw label, source)
        # Top-level *.txt only: the release's Categorical/ and Attribute/ subfolders hold
        # per-annotator files, and macOS copies leave "._*" resource forks beside them.
        for path in sorted((dialog / "EmoEvaluation").glob("[!._]*.txt")):
            for n, line in enumerate(_read_lines(path, scan) or [], start=1):
                if not line.startswith("["):
                    continue  # header, annotator (C-E1:, A-F2:) and blank lines
                m = _IEMOCAP_EVAL.match(line)
                if not m:
                    scan.reject(f"{path}:{n}", "malformed line: expected '[start - end]\\tid\\tlabel\\t[v, a, d]'")
                    continue
                utt_id, label = m.group(3), m.group(4)
                if utt_id in emotions:
                    scan.reject(f"{path}:{n}", f"duplicate id: {utt_id}", utt_id)
                    continue
                emotions[utt_id] = (label, f"{path}:{n}")
        texts: dict[str, tuple[str, str]] = {}
        for path in sorted((dialog / "transcriptions").glob("[!._]*.txt")):
            for n, line in enumerate(_read_lines(path, scan) or [], start=1):
                if not line.strip():
                    continue
                m = _IEMOCAP_TRANS.match(line.strip())
                if not m:
                    scan.reject(f"{path}:{n}", "malformed line: expected 'id [start-end]: text'")
                    continue
                if m.group(1) in texts:
                    scan.reject(f"{path}:{n}", f"duplicate id: {m.group(1)}", m.group(1))
                    continue
                texts[m.group(1)] = (m.group(2).strip(), f"{path}:{n}")
        wavs = {
            p.stem: p
            for p in sorted((session_dir / "sentences" / "wav").glob("*/[!._]*.wav"))
        }
        for utt_id in sorted(set(emotions) | set(texts) | set(wavs)):
            label, label_src = emotions.get(utt_id, (None, None))
            text, text_src = texts.get(utt_id, (None, None))
            where = label_src or text_src or str(wavs[utt_id])
            id_match = _IEMOCAP_ID.match(utt_id)
            if label is None:
                scan.reject(where, "unlabelled: no EmoEvaluation line", utt_id)
            elif label not in IEMOCAP_EMOTIONS:
                scan.reject(where, f"excluded label: {label} (4-class protocol keeps ang, hap+exc, neu, sad)", utt_id)
            elif text is None:
                scan.reject(where, "missing transcript: no transcriptions line", utt_id)
            elif not text:
                scan.reject(text_src, "empty transcript", utt_id)
            elif not id_match:
                scan.reject(where, f"malformed line: utterance id {utt_id!r} does not name session and speaker", utt_id)
            else:
                dialog_name = utt_id.rsplit("_", 1)[0]
                audio = wavs.get(utt_id, session_dir / "sentences" / "wav" / dialog_name / f"{utt_id}.wav")
                gender = id_match.group(2)
                labels = {
                    "emotion": IEMOCAP_EMOTIONS[label],
                    "raw_emotion": label,
                    "session": session,
                    "gender": gender,
                    "dialog": dialog_name,
                }
                speaker = f"Ses0{session}_{gender}"
                _finish(scan, Record(utt_id, str(audio), text, speaker, session_dir.name, labels), probe_audio)
    return scan


# --------------------------------------------------------------------------- CMU-MOSEI


def read_mosei(root: str | os.PathLike, probe_audio: bool = False) -> CorpusScan:
    """MMSA-style CMU-MOSEI: ``label.csv`` (video_id, clip_id, text, label, ..., mode) and
    ``wav/<video_id>/<clip_id>.wav``. Sentiment labels are floats in [-3, 3]."""
    root = Path(root)
    scan = CorpusScan(corpus="mosei", root=str(root))
    label_file = root / "label.csv"
    if not label_file.is_file():
        raise CorpusError(f"{root}: no label.csv (MMSA CMU-MOSEI layout)")
    try:
        with label_file.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CorpusError(f"{label_file}: unreadable: {err}") from err
    if header is None:
        raise CorpusError(f"{label_file}: empty file, expected a header row")
    missing = [c for c in MOSEI_COLUMNS if c not in header]
    if missing:
        raise CorpusError(f"{label_file}: header lacks column(s) {missing}; found {header}")
    col = {name: header.index(name) for name in header}
    wavs = {(p.parent.name, p.stem): p for p in sorted(root.glob("wav/*/*.wav"))}
    seen: set[tuple[str, str]] = set()
    for n, row in enumerate(rows, start=2):
        source = f"{label_file}:{n}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            scan.reject(source, f"malformed line: {len(row)} fields, header has {len(header)}")
            continue
        video, clip = row[col["video_id"]].strip(), row[col["clip_id"]].strip()
        utt_id = f"{video}_{clip}"
        if not video or not clip:
            scan.reject(source, "malformed line: empty video_id or clip_id")
            continue
        if (video, clip) in seen:
            scan.reject(source, f"duplicate id: {utt_id}", utt_id)
            continue
        seen.add((video, clip))
        text = " ".join(row[col["text"]].split())
        mode = row[col["mode"]].strip()
        try:
            label = float(row[col["label"]])
        except ValueError:
            label = math.nan
        if not text:
            scan.reject(source, "empty transcript", utt_id)
        elif not math.isfinite(label) or not -3.0 <= label <= 3.0:
            scan.reject(source, f"bad label: sentiment {row[col['label']]!r} is not a number in [-3, 3]", utt_id)
        elif mode not in MOSEI_MODES:
            scan.reject(source, f"bad label: mode {mode!r} is not one of {MOSEI_MODES}", utt_id)
        else:
            audio = wavs.get((video, clip), root / "wav" / video / f"{clip}.wav")
            labels = {"sentiment": label, "video_id": video, "clip_id": clip}
            _finish(scan, Record(utt_id, str(audio), text, video, mode, labels), probe_audio)
    for key, path in wavs.items():
        if key not in seen:
            scan.reject(str(path), "missing transcript: no label.csv row", f"{key[0]}_{key[1]}")
    return scan


# --------------------------------------------------------------------------- JSONL


def read_jsonl(path: str | os.PathLike, probe_audio: bool = False) -> CorpusScan:
    """One JSON object per line: ``{"id", "audio", "text"}`` required; ``speaker`` and
    ``split`` optional; ``labels`` (an object) and any other keys become labels. Relative
    audio paths are taken from the manifest's folder."""
    path = Path(path)
    scan = CorpusScan(corpus="jsonl", root=str(path))
    lines = _read_lines(path, scan)
    if lines is None:
        raise CorpusError(scan.rejections[-1].reason)
    seen: set[str] = set()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            scan.reject(source, f"malformed line: invalid JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(obj, dict):
            scan.reject(source, f"malformed line: expected an object, got {type(obj).__name__}")
            continue
        absent = [k for k in ("id", "audio", "text") if not isinstance(obj.get(k), str)]
        if absent:
            scan.reject(source, f"malformed line: missing or non-string field(s) {absent}", obj.get("id"))
            continue
        utt_id = obj["id"]
        if utt_id in seen:
            scan.reject(source, f"duplicate id: {utt_id}", utt_id)
            continue
        seen.add(utt_id)
        text = " ".join(obj["text"].split())
        if not text:
            scan.reject(source, "empty transcript", utt_id)
            continue
        labels = dict(obj.get("labels") or {})
        labels.update({k: v for k, v in obj.items() if k not in ("id", "audio", "text", "speaker", "split", "labels")})
        audio = Path(obj["audio"])
        if not audio.is_absolute():
            audio = path.parent / audio
        speaker = str(obj.get("speaker") or "unknown")
        _finish(scan, Record(utt_id, str(audio), text, speaker, str(obj.get("split") or ""), labels), probe_audio)
    return scan


# --------------------------------------------------------------------------- dispatch

READERS = {
    "librispeech": read_librispeech,
    "iemocap": read_iemocap,
    "mosei": read_mosei,
    "jsonl": read_jsonl,
}


def detect_kind(path: str | os.PathLike) -> str:
    path = Path(path)
    if path.is_file():
        if path.suffix in (".jsonl", ".json"):
            return "jsonl"
        raise CorpusError(f"{path}: a file corpus must be a .jsonl manifest")
    if not path.is_dir():
        raise CorpusError(f"{path}: no such file or folder")
    if any(path.glob("Session[1-5]")):
        return "iemocap"
    if (path / "label.csv").is_file():
        return "mosei"
    if any(path.glob("*/*/*/*.trans.txt")) or any(path.glob("*/*/*.trans.txt")):
        return "librispeech"
    layouts = [p.name for p in sorted(path.iterdir()) if p.is_dir()]
    raise CorpusError(
        f"{path}: not a LibriSpeech, IEMOCAP or MOSEI layout; sub-folders: {layouts[:10]}"
        " (point at one corpus, e.g. <demo>/librispeech)"
    )


def read_corpus(path: str | os.PathLike, kind: str = "auto", probe_audio: bool = False) -> CorpusScan:
    """Read a corpus of the given layout (``auto`` detects it)."""
    kind = detect_kind(path) if kind == "auto" else kind
    if kind not in READERS:
        raise CorpusError(f"unknown corpus kind {kind!r}; expected one of {sorted(READERS)} or 'auto'")
    return READERS[kind](path, probe_audio=probe_audio)


def filter_split(scan: CorpusScan, splits: Iterable[str]) -> CorpusScan:
    """The records whose split is one of ``splits``. All rejections are kept: a rejected
    input's split is often unknown (a malformed line), and none may go unreported."""
    wanted = set(splits)
    known = {r.split for r in scan.records}
    unknown = wanted - known
    if unknown:
        raise CorpusError(f"{scan.root}: no split(s) {sorted(unknown)}; splits present: {sorted(known)}")
    out = CorpusScan(corpus=scan.corpus, root=scan.root, rejections=list(scan.rejections))
    out.records = [r for r in scan.records if r.split in wanted]
    out.warnings = list(scan.warnings)
    return out
