"""Readers for the corpora users have: LibriSpeech, IEMOCAP, CMU-MOSEI (MMSA), JSONL and
lhotse manifests (cuts, or recordings + supervisions).

Each reader returns a :class:`CorpusScan`. Accounting rule, the same for every reader:
an *input* is an utterance named anywhere in the corpus (a transcript line, a label line,
an audio file) or a line that could not be parsed. Each input ends up exactly once, as a
record or as a rejection whose reason starts with one of the classes below, so
``len(records) + len(rejections) == inputs`` and nothing is dropped silently.

Rejection reason classes (text before the first ':'):
  missing audio, empty audio, unreadable audio, missing transcript, empty transcript,
  malformed line, unreadable file, duplicate id, bad label, unlabelled, excluded label,
  bad segment, multi-channel audio, unsupported audio (the last three: lhotse only)
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


# --------------------------------------------------------------------------- lhotse

LHOTSE_ROLES = ("cuts", "recordings", "supervisions")
_LHOTSE_ROLE = re.compile(r"(?:^|[_.-])(cuts|recordings|supervisions)(?=[_.-]|$)")
# How far a segment may end past its recording's duration and be cut at the end instead
# of refused: lhotse's own default tolerance between a manifest's duration and the audio.
LHOTSE_DURATION_TOLERANCE_S = 0.025
# Recording transforms whose effect the reader reproduces: every file is resampled to the
# feature rate anyway, and offsets are in seconds.
_LHOTSE_KEPT_TRANSFORMS = ("Resample",)


def _manifest_stem(path: Path) -> str | None:
    """The name of a ``.jsonl`` / ``.jsonl.gz`` file without that suffix, else None."""
    for suffix in (".jsonl.gz", ".jsonl"):
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def lhotse_role(path: str | os.PathLike) -> str | None:
    """``cuts``, ``recordings`` or ``supervisions`` for a lhotse manifest file named like
    one (``librispeech_supervisions_dev-clean.jsonl.gz``, ``cuts.jsonl``), or None."""
    stem = _manifest_stem(Path(path))
    match = _LHOTSE_ROLE.search(stem) if stem is not None else None
    return match.group(1) if match else None


def _iter_manifest_lines(path: Path, scan: CorpusScan):
    """(line number, text) of a plain or gzipped manifest; a file that cannot be read to
    its end is a rejection naming the last line read (the lines before it are kept)."""
    import gzip

    n = 0
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):  # noqa: B007 - n is reported on failure
                yield n, line
    except (OSError, EOFError, UnicodeDecodeError) as err:
        where = f"after line {n}" if n else "at its start"
        scan.reject(str(path), f"unreadable file: {where}: {type(err).__name__}: {err}")


def _sniff_lhotse(path: Path) -> str | None:
    """The lhotse manifest type of the first object in ``path``; ``""`` for an object of
    another kind (a plain JSONL manifest's has ``audio``); None when there is no object."""
    scratch = CorpusScan(corpus="lhotse", root=str(path))
    for _, line in _iter_manifest_lines(path, scratch):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(obj, dict) or "audio" in obj:
            return ""
        if "supervisions" in obj or obj.get("type") in ("MonoCut", "MultiCut", "MixedCut", "PaddingCut"):
            return "cuts"
        if "sources" in obj and "sampling_rate" in obj:
            return "recordings"
        if "recording_id" in obj and "start" in obj and "duration" in obj:
            return "supervisions"
        return ""
    return None


def _json_objects(path: Path, scan: CorpusScan):
    """(source, object) of each parseable line; the others become malformed-line rejections."""
    for n, line in _iter_manifest_lines(path, scan):
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
        yield source, obj


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _lhotse_audio(recording: dict, manifest: Path) -> tuple[Path, float] | str:
    """(audio file, duration in seconds) of a lhotse Recording, or why it cannot be read.

    A relative source is taken from the working directory, as lhotse takes it, and from
    the manifest's folder when no such file is there."""
    rec_id = recording.get("id")
    sources = recording.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, dict) for s in sources):
        return f"malformed line: recording {rec_id!r} has no sources list"
    kinds = sorted({str(s.get("type")) for s in sources})
    if kinds != ["file"]:
        return f"unsupported audio: recording {rec_id!r} has source type(s) {kinds}; only 'file' is read"
    channels = [c for s in sources for c in (s.get("channels") or [0])]
    if len(channels) > 1 or len(sources) > 1:
        return f"multi-channel audio: recording {rec_id!r} has channels {channels}; one channel is read"
    transforms = [t.get("name") if isinstance(t, dict) else t for t in recording.get("transforms") or []]
    unsupported = [t for t in transforms if t not in _LHOTSE_KEPT_TRANSFORMS]
    if unsupported:
        return f"unsupported audio: recording {rec_id!r} has transforms {unsupported}"
    source = sources[0].get("source")
    if not isinstance(source, str) or not source:
        return f"malformed line: recording {rec_id!r} has no source path"
    duration = recording.get("duration")
    if not _is_number(duration) and _is_number(recording.get("num_samples")) and _is_number(
        recording.get("sampling_rate")
    ):
        duration = recording["num_samples"] / recording["sampling_rate"]
    if not _is_number(duration) or duration <= 0:
        return f"malformed line: recording {rec_id!r} has no positive duration"
    audio = Path(source)
    if not audio.is_absolute():
        audio = Path(os.path.abspath(audio)) if audio.is_file() else manifest.parent / audio
    return audio, float(duration)


def _lhotse_record(
    scan: CorpusScan,
    source: str,
    sup: dict,
    recording: dict,
    offset: float,
    manifest: Path,
    split: str,
    extra_labels: dict,
    probe_audio: bool,
) -> None:
    """The record of one supervision of ``recording``, or its rejection. ``offset`` is
    where the supervision's time 0 lies in the recording (a cut's start)."""
    sup_id = sup["id"]
    text = sup.get("text")
    if text is None:
        scan.reject(source, "missing transcript: the supervision has no text", sup_id)
        return
    if not isinstance(text, str):
        scan.reject(source, f"malformed line: text is a {type(text).__name__}, not a string", sup_id)
        return
    text = " ".join(text.split())
    if not text:
        scan.reject(source, "empty transcript", sup_id)
        return
    found = _lhotse_audio(recording, manifest)
    if isinstance(found, str):
        scan.reject(source, found, sup_id)
        return
    audio, rec_duration = found
    start, duration = offset + float(sup["start"]), float(sup["duration"])
    end = start + duration
    if start < 0 or duration <= 0 or start >= rec_duration or end > rec_duration + LHOTSE_DURATION_TOLERANCE_S:
        scan.reject(source, f"bad segment: {start:g} s to {end:g} s of recording {recording.get('id')!r}, "
                            f"which lasts {rec_duration:g} s", sup_id)  # fmt: skip
        return
    duration = min(duration, rec_duration - start)
    custom = sup.get("custom") if isinstance(sup.get("custom"), dict) else {}
    labels = {k: sup[k] for k in ("language", "gender") if sup.get(k) is not None}
    labels.update(extra_labels)
    labels.update(custom)
    record_split = str(labels.pop("split", None) or split)
    rate = recording.get("sampling_rate") if _is_number(recording.get("sampling_rate")) else 16000
    whole = start == 0 and abs(duration - rec_duration) < 0.5 / rate
    record = Record(
        sup_id, str(audio), text, str(sup.get("speaker") or "unknown"), record_split, labels,
        offset=0.0 if whole else start, duration=None if whole else duration,
    )  # fmt: skip
    problem = _audio_problem(audio, probe_audio)
    if problem:
        scan.reject(source, problem, sup_id)
    else:
        scan.records.append(record)


def _supervision_problem(sup: dict) -> str | None:
    if not isinstance(sup.get("id"), str) or not sup["id"]:
        return "malformed line: supervision without a string id"
    bad = [k for k in ("start", "duration") if not _is_number(sup.get(k))]
    if bad:
        return f"malformed line: supervision {sup['id']!r} has no numeric {bad}"
    return None


def _lhotse_split(path: Path, role: str) -> str:
    """The part of a manifest's name after its role: ``x_cuts_dev-clean.jsonl.gz`` -> ``dev-clean``."""
    stem = _manifest_stem(path) or path.name
    match = _LHOTSE_ROLE.search(stem)
    return stem[match.end():].strip("_.-") if match and match.group(1) == role else ""


def _read_lhotse_pair(scan: CorpusScan, recordings_file: Path, supervisions_file: Path, probe_audio: bool) -> None:
    recordings: dict[str, tuple[dict, str]] = {}
    for source, obj in _json_objects(recordings_file, scan):
        rec_id = obj.get("id")
        if not isinstance(rec_id, str) or not rec_id:
            scan.reject(source, "malformed line: recording without a string id")
        elif rec_id in recordings:
            scan.reject(source, f"duplicate id: recording {rec_id} (also {recordings[rec_id][1]})", rec_id)
        else:
            recordings[rec_id] = (obj, source)
    split = _lhotse_split(supervisions_file, "supervisions")
    seen: set[str] = set()
    used: set[str] = set()
    for source, sup in _json_objects(supervisions_file, scan):
        problem = _supervision_problem(sup)
        if problem:
            scan.reject(source, problem, sup.get("id") if isinstance(sup.get("id"), str) else None)
            continue
        if sup["id"] in seen:
            scan.reject(source, f"duplicate id: {sup['id']}", sup["id"])
            continue
        seen.add(sup["id"])
        rec_id = sup.get("recording_id")
        if rec_id not in recordings:
            scan.reject(source, f"missing audio: no recording {rec_id!r} in {recordings_file}", sup["id"])
            continue
        used.add(rec_id)
        _lhotse_record(scan, source, sup, recordings[rec_id][0], 0.0, supervisions_file, split, {}, probe_audio)
    for rec_id, (_, source) in recordings.items():
        if rec_id not in used:
            scan.reject(source, f"missing transcript: no supervision of recording {rec_id} in {supervisions_file}",
                        rec_id)  # fmt: skip


def _read_lhotse_cuts(scan: CorpusScan, cuts_file: Path, probe_audio: bool) -> None:
    split = _lhotse_split(cuts_file, "cuts")
    seen: set[str] = set()
    for source, cut in _json_objects(cuts_file, scan):
        cut_id = cut.get("id") if isinstance(cut.get("id"), str) else None
        kind = cut.get("type", "MonoCut")
        recording = cut.get("recording")
        if kind == "MultiCut":
            problem = f"multi-channel audio: cut {cut_id!r} is a MultiCut; one channel is read"
        elif kind != "MonoCut":
            problem = f"unsupported audio: cut {cut_id!r} is a {kind}; MonoCut is read"
        elif cut_id is None or not _is_number(cut.get("start")):
            problem = "malformed line: cut without a string id or a numeric start"
        elif not isinstance(recording, dict):
            problem = f"missing audio: cut {cut_id!r} has no recording"
        else:
            problem = None
        sups = cut.get("supervisions") if isinstance(cut.get("supervisions"), list) else []
        if not sups:
            scan.reject(source, problem or f"missing transcript: cut {cut_id!r} has no supervision", cut_id)
            continue
        # Each supervision is an input: a problem of the cut is a rejection of each.
        custom = cut.get("custom") if isinstance(cut.get("custom"), dict) else {}
        for sup in sups:
            sup_problem = _supervision_problem(sup) if isinstance(sup, dict) else "malformed line: supervision not an object"
            sup_id = sup.get("id") if isinstance(sup, dict) and isinstance(sup.get("id"), str) else None
            if sup_problem or problem:
                scan.reject(source, problem or f"{sup_problem} (cut {cut_id!r})", sup_id or cut_id)
            elif sup_id in seen:
                scan.reject(source, f"duplicate id: {sup_id} (cut {cut_id!r})", sup_id)
            else:
                seen.add(sup_id)
                _lhotse_record(scan, source, sup, recording, float(cut["start"]), cuts_file, split, custom, probe_audio)


def _partner(path: Path, role: str, other: str) -> Path:
    stem = _manifest_stem(path)
    match = _LHOTSE_ROLE.search(stem)
    partner_stem = stem[: match.start(1)] + other + stem[match.end(1):]
    for suffix in (".jsonl.gz", ".jsonl"):
        candidate = path.with_name(partner_stem + suffix)
        if candidate.is_file():
            return candidate
    raise CorpusError(f"{path}: a lhotse {role} manifest needs its {other} manifest "
                      f"{partner_stem}.jsonl[.gz] beside it; none found")  # fmt: skip


def lhotse_manifests(path: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """(cut manifests, (recordings, supervisions) pairs) that ``path`` names: one manifest
    file (a recordings or supervisions file brings its partner) or a folder of them."""
    path = Path(path)
    if path.is_file():
        role = _sniff_lhotse(path) or lhotse_role(path)
        if role == "cuts":
            return [path], []
        if role == "recordings":
            return [], [(path, _partner(path, "recordings", "supervisions"))]
        if role == "supervisions":
            return [], [(_partner(path, "supervisions", "recordings"), path)]
        raise CorpusError(f"{path}: not a lhotse cuts, recordings or supervisions manifest")
    if not path.is_dir():
        raise CorpusError(f"{path}: no such file or folder")
    found: dict[str, list[Path]] = {role: [] for role in LHOTSE_ROLES}
    for p in sorted(path.iterdir()):
        role = lhotse_role(p) if p.is_file() else None
        if role:
            found[role].append(p)
    if found["cuts"] and (found["recordings"] or found["supervisions"]):
        raise CorpusError(
            f"{path}: holds both cut manifests {[p.name for p in found['cuts']]} and recording/supervision "
            "manifests, which name the same utterances; point at one manifest file"
        )
    pairs = [(_partner(sup, "supervisions", "recordings"), sup) for sup in found["supervisions"]]
    paired = {rec for rec, _ in pairs}
    lone = [p.name for p in found["recordings"] if p not in paired]
    if lone:
        raise CorpusError(f"{path}: recordings manifest(s) {lone} have no supervisions manifest beside them")
    if not found["cuts"] and not pairs:
        raise CorpusError(f"{path}: no lhotse manifests (*cuts*.jsonl[.gz], *_recordings*/*_supervisions*.jsonl[.gz])")
    return found["cuts"], pairs


def read_lhotse(path: str | os.PathLike, probe_audio: bool = False) -> CorpusScan:
    """lhotse manifests: a CutSet (MonoCuts) or a RecordingSet + SupervisionSet pair, as
    ``.jsonl`` or ``.jsonl.gz``; ``path`` is one manifest or a folder of them.

    Each supervision is an input and becomes a record: id, text and speaker from the
    supervision; its ``language``, ``gender``, the cut's and its own ``custom`` fields
    become labels (``custom["split"]`` is the split, else the manifest name's part after
    ``cuts_`` / ``supervisions_``, e.g. ``dev-clean``). The audio is the supervision's
    span of the recording (a cut's supervision starts at the cut's start), cut out of
    the file when it is not the whole of it. Also inputs: unparseable lines, cuts without
    supervisions and recordings no supervision names. Rejected: a supervision whose
    recording is absent, has several channels, a non-file source or transforms other
    than Resample, or which it does not fit in; a missing audio file; an empty text.
    """
    path = Path(path)
    scan = CorpusScan(corpus="lhotse", root=str(path))
    cuts, pairs = lhotse_manifests(path)
    for recordings_file, supervisions_file in pairs:
        _read_lhotse_pair(scan, recordings_file, supervisions_file, probe_audio)
    for cuts_file in cuts:
        _read_lhotse_cuts(scan, cuts_file, probe_audio)
    return scan


# --------------------------------------------------------------------------- dispatch

READERS = {
    "librispeech": read_librispeech,
    "iemocap": read_iemocap,
    "mosei": read_mosei,
    "jsonl": read_jsonl,
    "lhotse": read_lhotse,
}


def detect_kind(path: str | os.PathLike) -> str:
    path = Path(path)
    if path.is_file():
        if _manifest_stem(path) is not None:
            # The first object decides; a name like x_supervisions.jsonl only where there is none.
            sniffed = _sniff_lhotse(path)
            if sniffed or (sniffed is None and lhotse_role(path)):
                return "lhotse"
        if path.suffix in (".jsonl", ".json"):
            return "jsonl"
        raise CorpusError(f"{path}: a file corpus must be a .jsonl manifest or a lhotse .jsonl[.gz] manifest")
    if not path.is_dir():
        raise CorpusError(f"{path}: no such file or folder")
    if any(path.glob("Session[1-5]")):
        return "iemocap"
    if (path / "label.csv").is_file():
        return "mosei"
    if any(path.glob("*/*/*/*.trans.txt")) or any(path.glob("*/*/*.trans.txt")):
        return "librispeech"
    if any(p.is_file() and lhotse_role(p) for p in path.iterdir()):
        return "lhotse"
    layouts = [p.name for p in sorted(path.iterdir()) if p.is_dir()]
    raise CorpusError(
        f"{path}: not a LibriSpeech, IEMOCAP, MOSEI or lhotse layout; sub-folders: {layouts[:10]}"
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
