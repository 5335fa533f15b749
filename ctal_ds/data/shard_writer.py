"""Writing one WebDataset shard: the unit of work of a shard-building worker process.

A shard's bytes depend only on its :class:`ShardTask` (records, token ids, feature
settings): members are written in a fixed order with fixed tar metadata, and nothing
records when or where it was built. The tar is written to ``<name>.tar.tmp``, fsynced
and renamed; only then is the sidecar ``<name>.json`` written (also atomically). A shard
counts as done when its sidecar exists and matches, so a build killed at any point
leaves no shard that looks complete and is not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from ctal_ds.data import feature_encoding
from ctal_ds.data.audio import AudioRejected, load_audio
from ctal_ds.data.feature_encoding import DEFAULT_ENCODING, FEATS
from ctal_ds.data.features import FeatureConfig, extract_batch, extract_logmel_batch
from ctal_ds.data.records import Record, Rejection

# Member suffixes of a sample (docs/contracts.md), written in this order: the feature
# members of the encoding (MEMBERS: float16-160), then the tokens and the metadata. The
# loader's reader (shard_reader) names the same; it is not imported here because it
# pulls in webdataset and torch, which a librosa-backend worker does not need.
TOKENS, META = "tokens.npy", "json"
MEMBERS = (FEATS, TOKENS, META)


def sample_members(encoding: str) -> tuple[str, ...]:
    """Member suffixes of a sample written in ``encoding``, in writing order."""
    return (*feature_encoding.feature_members(encoding), TOKENS, META)


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sample_key(record_id: str) -> str:
    """Tar key for a record id: WebDataset ends a key at its first dot, so ids with
    characters outside ``[A-Za-z0-9_-]`` get them replaced by ``_`` and a hash of the
    original id appended, which keeps ``a.b`` and ``a_b`` apart. Clean ids stay as
    they are."""
    key = _KEY_UNSAFE.sub("_", record_id)
    if key != record_id or not key:
        key = f"{key}_{hashlib.sha1(record_id.encode('utf-8')).hexdigest()[:8]}"
    return key


@dataclasses.dataclass(frozen=True)
class ShardItem:
    """One planned sample: the record, its key, token ids and corpus-relative source."""

    key: str
    record: Record
    tokens: tuple[int, ...]
    source: str


@dataclasses.dataclass(frozen=True)
class ShardTask:
    index: int
    out_dir: str
    items: tuple[ShardItem, ...]
    features: FeatureConfig
    backend: str
    device: str | None
    batch_size: int
    fingerprint: str  # hash of everything that changes the bytes
    encoding: str = DEFAULT_ENCODING  # how the features are stored (feature_encoding)

    @property
    def name(self) -> str:
        return shard_name(self.index)


@dataclasses.dataclass(frozen=True)
class ShardSummary:
    """What a finished shard holds; stored as its sidecar and in the manifest."""

    name: str  # file name of the tar, beside the manifest
    samples: int
    frames: int
    seconds: float
    bytes: int
    sha256: str
    fingerprint: str
    rejections: tuple[Rejection, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rejections"] = [r.to_dict() for r in self.rejections]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardSummary:
        d = dict(d)
        d["rejections"] = tuple(Rejection(**r) for r in d.get("rejections", ()))
        return cls(**d)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def sidecar_path(out_dir: str | os.PathLike, index: int) -> Path:
    return Path(out_dir) / f"{shard_name(index)}.json"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``path`` so that it holds either its old content or all of ``text``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable (a crash after it cannot undo the rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingWriter:
    """File wrapper that hashes and counts the bytes tarfile writes through it."""

    def __init__(self, f) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self.bytes


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    # Fixed metadata: the bytes must not depend on the clock or the user who built them.
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def sample_meta(item: ShardItem, n_samples: int, n_frames: int, sample_rate: int) -> dict[str, Any]:
    r = item.record
    return {
        "id": r.id,
        "text": r.text,
        "speaker": r.speaker,
        "split": r.split,
        "duration_s": n_samples / sample_rate,
        "n_frames": n_frames,
        "source": item.source,
        "labels": r.labels,
        # Only for a segment of a longer file, so whole-file samples keep their bytes.
        **({"segment": r.segment} if r.segment else {}),
    }


# Set in each worker process by the pool initializer: utterance counts go to the parent's
# progress bar through it.
_progress_queue = None


def init_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _batches(items, size):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _featurise(batch, task: ShardTask, rejections: list[Rejection]):
    """(item, n_samples, feature members) for each usable item of ``batch``; the others
    are appended to ``rejections``."""
    loaded: list[tuple[ShardItem, np.ndarray]] = []
    for item in batch:
        try:
            r = item.record
            loaded.append((item, load_audio(r.audio, task.features, r.offset, r.duration)))
        except AudioRejected as err:
            rejections.append(Rejection(item.record.audio, err.reason, item.record.id))
    extract = extract_logmel_batch if feature_encoding.stores_logmel(task.encoding) else extract_batch
    try:
        feats = extract([w for _, w in loaded], task.features, task.backend, task.device)
    except Exception as err:  # a bug or a device failure: stop, naming the inputs
        audio = [item.record.audio for item, _ in loaded]
        raise RuntimeError(f"{task.name}: feature extraction failed on {audio}") from err
    usable = []
    for (item, wave), f in zip(loaded, feats):
        arrays = feature_encoding.encode(f, task.encoding) if np.isfinite(f).all() else {}
        # float16 overflows to infinity where float32 does not.
        if arrays and all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f"):
            usable.append((item, len(wave), arrays))
        else:
            rejections.append(Rejection(item.record.audio, "non-finite features", item.record.id))
    return usable


def _add_sample(
    tar: tarfile.TarFile, item: ShardItem, n_samples: int, arrays: dict[str, np.ndarray], sample_rate: int
) -> int:
    """The sample's members, together and always in the order of sample_members();
    returns its frame count."""
    n_frames = len(next(iter(arrays.values())))
    meta = sample_meta(item, n_samples, n_frames, sample_rate)
    for suffix, array in arrays.items():
        _add_member(tar, f"{item.key}.{suffix}", _npy_bytes(array))
    _add_member(tar, f"{item.key}.{TOKENS}", _npy_bytes(np.asarray(item.tokens, dtype=np.int32)))
    _add_member(tar, f"{item.key}.{META}", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return n_frames


def write_shard(task: ShardTask) -> ShardSummary:
    """Load, featurise and write every item of ``task``; rejected items are reported in
    the summary instead. Runs in a worker process (module-level, so spawn can pickle it)."""
    out_dir = Path(task.out_dir)
    final = out_dir / f"{task.name}.tar"
    tmp = out_dir / f"{task.name}.tar.tmp"
    rate = task.features.sample_rate
    rejections: list[Rejection] = []
    samples = frames = total_samples = 0
    with open(tmp, "wb") as raw:
        writer = _HashingWriter(raw)
        with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for batch in _batches(task.items, task.batch_size):
                for item, n_samples, arrays in _featurise(batch, task, rejections):
                    frames += _add_sample(tar, item, n_samples, arrays, rate)
                    samples += 1
                    total_samples += n_samples
                if _progress_queue is not None:
                    _progress_queue.put(len(batch))
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, final)
    fsync_dir(out_dir)
    summary = ShardSummary(
        name=final.name,
        samples=samples,
        frames=frames,
        seconds=total_samples / rate,
        bytes=writer.bytes,
        sha256=writer.sha256.hexdigest(),
        fingerprint=task.fingerprint,
        rejections=tuple(rejections),
    )
    write_json_atomic(sidecar_path(out_dir, task.index), summary.to_dict())
    return summary
