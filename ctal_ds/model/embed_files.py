"""Embeddings of many audio files with a model directory (the work of launch/embed.py).

Inputs are a folder of audio files (searched recursively; the id of ``a/b.wav`` is
``a/b``; ``a/b.txt`` beside it, when present, is its transcript), a JSONL manifest of
``{"id", "audio", "text"}`` objects (``text`` optional; relative audio paths are taken
from the manifest's folder) or lhotse manifests (a CutSet, or a RecordingSet +
SupervisionSet pair, read by ``ctal_ds.data.corpora.read_lhotse``: one input per
supervision, its span of the recording with its text). Without a transcript the text is
``""`` (``<s> </s>``, see ``ctal_ds.model.processor``).

Every input ends up once: embedded, or rejected with its reason (missing audio,
unreadable audio, empty audio, non-finite audio, duplicate id, malformed line,
unreadable transcript, failed; for lhotse also the reader's classes, e.g. bad segment,
multi-channel audio). Recordings longer than the model's ``max_frames`` and
transcripts longer than ``max_tokens`` are cropped, with a warning naming the id.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctal_ds.data.audio import AudioRejected

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")
# Per-utterance vectors and values an output can hold; per-frame / per-token states
# are not written (their lengths differ between utterances).
VECTOR_FIELDS = ("audio_pooled", "text_pooled", "embedding", "speaker_embedding", "probs", "logits")
SCALAR_FIELDS = ("label", "label_name", "score")


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    audio: str
    text: str
    # The segment of ``audio`` in seconds (a lhotse supervision); 0.0 and None: the whole file.
    offset: float = 0.0
    duration: float | None = None


@dataclasses.dataclass(frozen=True)
class Reject:
    id: str | None
    audio: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def folder_items(root: str | os.PathLike) -> tuple[list[Item], list[Reject]]:
    """The audio files under ``root`` with their same-stem ``.txt`` transcripts."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    items: list[Item] = []
    rejects: list[Reject] = []
    seen: dict[str, str] = {}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    for path in files:
        utt_id = path.relative_to(root).with_suffix("").as_posix()
        if utt_id in seen:
            rejects.append(Reject(utt_id, str(path), f"duplicate id: {utt_id} (also {seen[utt_id]})"))
            continue
        seen[utt_id] = str(path)
        text = ""
        transcript = path.with_suffix(".txt")
        if transcript.is_file():
            try:
                text = transcript.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                rejects.append(Reject(utt_id, str(path), f"unreadable transcript: {transcript}: {err}"))
                continue
        items.append(Item(utt_id, str(path), text))
    return items, rejects


def manifest_items(manifest: str | os.PathLike) -> tuple[list[Item], list[Reject]]:
    """The lines of a JSONL manifest: ``id`` and ``audio`` (strings) required, ``text`` optional."""
    manifest = Path(manifest)
    lines = manifest.read_text(encoding="utf-8").splitlines()
    items: list[Item] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{manifest}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            rejects.append(Reject(None, None, f"malformed line: {where}: invalid JSON ({err.msg})"))
            continue
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) and obj[k] for k in ("id", "audio")):
            rejects.append(Reject(None, None, f"malformed line: {where}: needs string fields id and audio"))
            continue
        text = obj.get("text") or ""
        if not isinstance(text, str):
            rejects.append(Reject(obj["id"], obj["audio"], f"malformed line: {where}: text is not a string"))
            continue
        audio = Path(obj["audio"])
        audio = audio if audio.is_absolute() else manifest.parent / audio
        if obj["id"] in seen:
            rejects.append(Reject(obj["id"], str(audio), f"duplicate id: {obj['id']} ({where})"))
            continue
        seen.add(obj["id"])
        items.append(Item(obj["id"], str(audio), text))
    return items, rejects


def is_lhotse(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a lhotse manifest or a folder holding lhotse manifests."""
    from ctal_ds.data.corpora import CorpusError, detect_kind

    try:
        return detect_kind(path) == "lhotse"
    except CorpusError:
        return False


def lhotse_items(path: str | os.PathLike) -> tuple[list[Item], list[Reject]]:
    """One item per supervision of lhotse manifests (a cuts, recordings or supervisions
    file, or a folder of them); the reader's rejections name the manifest file and line."""
    from ctal_ds.data.corpora import read_lhotse

    scan = read_lhotse(path)
    items = [Item(r.id, r.audio, r.text, r.offset, r.duration) for r in scan.records]
    rejects = [Reject(r.id, None, f"{r.reason} ({r.source})") for r in scan.rejections]
    return items, rejects


def available_fields(model: torch.nn.Module) -> list[str]:
    """The fields ``model.embed`` returns per utterance, in output order."""
    fields = ["audio_pooled", "text_pooled"]
    task = getattr(model, "task_config", None)
    if task is None:
        return fields
    fields.append("embedding")
    if task.task == "regression":
        return [*fields, "score"]
    fields += ["probs", "label"]
    if getattr(model, "label_names", None):
        fields.append("label_name")
    if task.task == "speaker":
        fields.append("speaker_embedding")
    return fields


@dataclasses.dataclass
class EmbedResult:
    ids: list[str]
    audio: list[str]
    texts: list[str]
    segments: list[tuple[float, float | None]]
    columns: dict[str, list[Any]]
    rejects: list[Reject]
    warnings: list[str]


def embed_items(
    model: Any,
    items: Sequence[Item],
    fields: Sequence[str],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    report: Callable[[str], None] | None = None,
) -> EmbedResult:
    """``model.embed`` over ``items`` in batches; unusable inputs are rejected, not fatal.

    ``progress(n)`` is called with the number of inputs done after each batch;
    ``report(line)`` with each rejection and crop as it happens.
    """
    processor = model.processor
    result = EmbedResult([], [], [], [], {f: [] for f in fields}, [], [])
    say = report or (lambda line: None)

    def reject(item: Item, reason: str) -> None:
        result.rejects.append(Reject(item.id, item.audio, reason))
        say(f"rejected {item.id} ({item.audio}): {reason}")

    def note(line: str) -> None:
        result.warnings.append(line)
        say(line)

    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        loaded: list[tuple[Item, np.ndarray]] = []
        for item in chunk:
            if not Path(item.audio).is_file():
                reject(item, f"missing audio: {item.audio}")
                continue
            try:
                loaded.append((item, processor.load(item.audio, item.offset, item.duration)))
            except AudioRejected as err:
                reject(item, err.reason)
        for item, wave in loaded:
            _note_crops(processor, item, wave, note)
        groups = [loaded] if loaded else []
        while groups:
            group = groups.pop(0)
            try:
                out = _embed_group(model, processor, group)
            except Exception as err:  # one bad input must not cost the others their embedding
                if len(group) == 1:
                    reject(group[0][0], f"failed: {type(err).__name__}: {err}")
                else:
                    groups = [[pair] for pair in group] + groups
                continue
            for i, (item, _) in enumerate(group):
                result.ids.append(item.id)
                result.audio.append(item.audio)
                result.texts.append(item.text)
                result.segments.append((item.offset, item.duration))
                for f in fields:
                    value = out[f][i]
                    if isinstance(value, torch.Tensor):
                        value = value.item() if value.ndim == 0 else value.float().cpu().numpy()
                    result.columns[f].append(value)
        if progress is not None:
            progress(len(chunk))
    return result


def _embed_group(model: Any, processor: Any, group: list[tuple[Item, np.ndarray]]) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # crops were reported by id already
        return model.embed(
            audio=[wave for _, wave in group], text=[item.text for item, _ in group],
            sampling_rate=processor.sample_rate,
        )  # fmt: skip


def _note_crops(processor: Any, item: Item, wave: np.ndarray, note: Callable[[str], None]) -> None:
    frames = processor.feature_config.n_frames(len(wave))
    if processor.max_frames is not None and frames > processor.max_frames:
        note(f"{item.id}: {len(wave) / processor.sample_rate:.2f} s is {frames} frames, more than the model's "
             f"max_frames={processor.max_frames}: only the start is embedded")  # fmt: skip
    if item.text and processor.tokenizer is not None and processor.max_tokens is not None:
        n = len(processor.tokenizer.encode(item.text))
        if n > processor.max_tokens:
            note(f"{item.id}: the transcript is {n} tokens, more than the model's max_tokens="
                 f"{processor.max_tokens}: only its start is read")  # fmt: skip


# --------------------------------------------------------------------------- writing


def side_path(out: Path, suffix: str) -> Path:
    """``emb.npy`` -> ``emb<suffix>``, e.g. ``emb.ids.txt``, ``emb.rejects.jsonl``."""
    return out.with_name(out.stem + suffix)


def write_rejects(out: Path, rejects: Iterable[Reject]) -> Path:
    path = side_path(out, ".rejects.jsonl")
    path.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rejects), encoding="utf-8")
    return path


def write_npy(out: Path, result: EmbedResult, field: str) -> list[Path]:
    """One float32 array [N, D] of ``field`` and the ids, one per line, in its rows' order."""
    array = np.stack(result.columns[field]).astype(np.float32)
    np.save(out, array, allow_pickle=False)
    ids = side_path(out, ".ids.txt")
    ids.write_text("".join(i + "\n" for i in result.ids), encoding="utf-8")
    return [out, ids]


def write_parquet(out: Path, result: EmbedResult) -> list[Path]:
    """One row per embedded utterance: id, audio, text, ``offset`` and ``duration`` (seconds;
    only when some input is a segment of its file, null for a whole file) and one column
    per field."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, Any] = {
        "id": pa.array(result.ids, pa.string()),
        "audio": pa.array(result.audio, pa.string()),
        "text": pa.array(result.texts, pa.string()),
    }
    if any(segment != (0.0, None) for segment in result.segments):
        whole = [segment == (0.0, None) for segment in result.segments]
        columns["offset"] = pa.array([None if w else o for w, (o, _) in zip(whole, result.segments)], pa.float64())
        columns["duration"] = pa.array([None if w else d for w, (_, d) in zip(whole, result.segments)], pa.float64())
    for name, values in result.columns.items():
        if name in VECTOR_FIELDS:
            width = len(values[0])
            flat = pa.array(np.concatenate(values).astype(np.float32), pa.float32())
            columns[name] = pa.FixedSizeListArray.from_arrays(flat, width)
        elif name == "label":
            columns[name] = pa.array([int(v) for v in values], pa.int64())
        elif name == "score":
            columns[name] = pa.array([float(v) for v in values], pa.float32())
        else:
            columns[name] = pa.array([str(v) for v in values], pa.string())
    pq.write_table(pa.table(columns), out)
    return [out]
