"""Reading WebDataset tar shards safely: samples out, damage reported, no pickle ever.

A shard holds samples ``<key>.feats.npy`` (float16 [T, 160]), ``<key>.tokens.npy``
(int32 [L]) and ``<key>.json`` (docs/contracts.md); shards in a logmel encoding hold
``<key>.logmel.npy`` (and ``<key>.logmel_affine.npy``) in place of ``feats.npy``
(:mod:`ctal_ds.data.feature_encoding`). Reading happens in three steps so that the
loader can plan batches and skip consumed ones before paying for decoding:

1. :func:`read_shard` streams a tar and groups members into :class:`RawSample`
   (bytes only). Members other than those above, such as ``.pyd`` or
   ``.pickle``, are never read into a sample, so nothing can unpickle them.
2. :func:`inspect_sample` checks a raw sample from the ``.npy`` headers and the
   JSON alone and returns its frame count; a sample that fails is reported as
   damaged with its key and shard instead of failing later in a worker.
3. :func:`decode_sample` loads the arrays with ``np.load(allow_pickle=False)`` and,
   for the logmel encodings, derives the [T, 160] features from the log-mel.

The tar reading is ours rather than ``webdataset.tarfile_to_samples``: its
handler hears about a truncated shard once per failing member and again for
the stream, with the URL in different places of the exception, whereas here
each failure is attributed to exactly one shard; and a tar cut at a member
boundary reads as a complete shorter archive, which only a comparison with
the manifest's sample count can reveal.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import webdataset as wds

from ctal_ds.data.damage import DamageEvent, ShardDamage
from ctal_ds.data.feature_encoding import (
    ALL_FEATURE_MEMBERS,
    FEATS,
    FLOAT16_160,
    LOGMEL,
    LOGMEL_AFFINE,
    UINT8_LOGMEL,
    StoredFeatures,
    encoding_of_members,
    feature_members,
    member_dtypes,
)
from ctal_ds.data.feature_encoding import decode as decode_features

TOKENS, META = "tokens.npy", "json"
SAMPLE_MEMBERS = (FEATS, TOKENS, META)  # a float16-160 sample, in writing order
KNOWN_MEMBERS = (*ALL_FEATURE_MEMBERS, TOKENS, META)
DEFAULT_STORED = StoredFeatures()


def sample_members(encoding: str) -> tuple[str, ...]:
    """Member suffixes of a sample in ``encoding``, in writing order."""
    return (*feature_members(encoding), TOKENS, META)

# Errors that mean "this shard cannot be read further" rather than a bug:
# tarfile's format errors, I/O errors (a missing file, a failing pipe: command),
# and compressed shards cut short.
SHARD_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


@dataclasses.dataclass
class RawSample:
    """The undecoded members of one sample, plus anything wrong seen while grouping."""

    key: str
    shard: str
    members: dict[str, bytes] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ShardSample:
    """A decoded sample, as the collators receive it."""

    key: str
    shard: str
    feats: np.ndarray  # float16 [T, feat_dim], whatever the shard's feature encoding
    tokens: np.ndarray  # int32 [L]
    meta: dict[str, Any]

    @property
    def n_frames(self) -> int:
        return int(self.feats.shape[0])


class SampleError(ValueError):
    """A sample whose members do not match the shard contract."""


def split_member_name(name: str) -> tuple[str | None, str]:
    """``dir/abc.feats.npy`` -> (``dir/abc``, ``feats.npy``): the key ends at the basename's first dot."""
    head, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    if not dot or not stem:
        return None, ""
    return (f"{head}/{stem}" if head else stem), suffix.lower()


def read_shard(
    url: str, events: list[DamageEvent], expected_samples: int | None = None
) -> Iterator[RawSample]:
    """Yield the samples of one shard in tar order; append damage to ``events``.

    Samples read intact before a read error are yielded; the sample being read
    when it happens and the rest of the shard are dropped. ``expected_samples``
    (from the manifest) catches shards cut at a member boundary.
    """
    count = 0
    current: RawSample | None = None
    try:
        with wds.gopen(url, "rb") as stream:
            archive = tarfile.open(fileobj=stream, mode="r|*")
            for member in archive:
                if not member.isreg():
                    continue
                key, suffix = split_member_name(member.name)
                if key is None:
                    continue
                if current is None or key != current.key:
                    if current is not None:
                        count += 1
                        yield current
                    current = RawSample(key=key, shard=url)
                if suffix not in KNOWN_MEMBERS:
                    continue
                if suffix in current.members:
                    current.problems.append(f"duplicate member {suffix}")
                    continue
                extracted = archive.extractfile(member)
                current.members[suffix] = extracted.read() if extracted is not None else b""
            if current is not None:
                count += 1
                yield current
    except SHARD_READ_ERRORS as exc:
        events.append(ShardDamage(url, f"unreadable after {count} samples: {type(exc).__name__}: {exc}"))
        return
    if expected_samples is not None and count != expected_samples:
        events.append(ShardDamage(url, f"holds {count} samples, the manifest lists {expected_samples}"))


def _npy_header(data: bytes, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an ``.npy`` payload, checked against its byte count, without loading it."""
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(buffer)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(buffer)
    except ValueError as exc:
        raise SampleError(f"{name}: not a valid .npy file ({exc})") from None
    if dtype.hasobject:
        raise SampleError(f"{name}: object arrays need pickle and are refused")
    payload = len(data) - buffer.tell()
    if payload != int(np.prod(shape)) * dtype.itemsize:
        raise SampleError(f"{name}: header says {shape} {dtype}, payload holds {payload} bytes")
    return shape, dtype


def sample_encoding(raw: RawSample, stored: StoredFeatures | None = None) -> str:
    """The feature encoding ``raw`` is read in: the shard set's, else the one its members show."""
    stored = stored or DEFAULT_STORED
    if stored.encoding:
        return stored.encoding
    dtype = _npy_header(raw.members[LOGMEL], LOGMEL)[1] if LOGMEL in raw.members else None
    return encoding_of_members(raw.members, dtype)


def _feature_frames(raw: RawSample, encoding: str, feat_dim: int, stored: StoredFeatures) -> int:
    """Frames of the sample's feature members, checked from their headers."""
    if encoding == FLOAT16_160:
        shape, dtype = _npy_header(raw.members[FEATS], FEATS)
        if dtype.kind != "f" or len(shape) != 2 or shape[1] != feat_dim or shape[0] < 1:
            raise SampleError(f"{FEATS}: expected float [T>=1, {feat_dim}], got {dtype} {shape}")
        return int(shape[0])
    n_mels = stored.features.n_mels
    if 2 * n_mels != feat_dim:
        raise SampleError(f"{encoding}: {n_mels} mel bands derive {2 * n_mels} dims, not feat_dim {feat_dim}")
    shape, dtype = _npy_header(raw.members[LOGMEL], LOGMEL)
    wanted = "uint8" if encoding == UINT8_LOGMEL else "float"
    right_type = dtype == np.uint8 if encoding == UINT8_LOGMEL else dtype.kind == "f"
    if not right_type or len(shape) != 2 or shape[1] != n_mels or shape[0] < 1:
        raise SampleError(f"{LOGMEL}: expected {wanted} [T>=1, {n_mels}] ({encoding}), got {dtype} {shape}")
    affine_shape, affine_dtype = _npy_header(raw.members[LOGMEL_AFFINE], LOGMEL_AFFINE)
    if affine_dtype.kind != "f" or affine_shape != (2, n_mels):
        raise SampleError(f"{LOGMEL_AFFINE}: expected float [2, {n_mels}], got {affine_dtype} {affine_shape}")
    return int(shape[0])


def stored_dtypes(raw: RawSample, stored: StoredFeatures | None = None) -> str | None:
    """None when the feature members have the exact dtypes the builder writes, else
    what differs (a sample :func:`inspect_sample` accepted)."""
    encoding = sample_encoding(raw, stored)
    for suffix, want in member_dtypes(encoding).items():
        _, dtype = _npy_header(raw.members[suffix], suffix)
        if dtype != want:
            return f"{suffix} is {dtype}, the builder writes {want} ({encoding})"
    return None


def inspect_sample(
    raw: RawSample, feat_dim: int, vocab_size: int | None = None, stored: StoredFeatures | None = None
) -> int:
    """Check ``raw`` against the contract from headers only; returns its number of frames.

    stored: the shard set's feature encoding and settings (``ShardSet.stored``);
    without, the sample's members decide its encoding. Token ids are range-checked
    when ``vocab_size`` is given: an id outside the vocabulary would otherwise
    surface as a device-side assert in the embedding.
    """
    stored = stored or DEFAULT_STORED
    if raw.problems:
        raise SampleError("; ".join(raw.problems))
    encoding = sample_encoding(raw, stored)
    expected = sample_members(encoding)
    missing = [m for m in expected if m not in raw.members]
    if missing:
        raise SampleError(f"missing member(s) {', '.join(missing)}")
    foreign = [m for m in ALL_FEATURE_MEMBERS if m in raw.members and m not in expected]
    if foreign:
        raise SampleError(f"member(s) {', '.join(foreign)} do not belong to feature encoding {encoding}")
    n_frames = _feature_frames(raw, encoding, feat_dim, stored)
    token_shape, token_dtype = _npy_header(raw.members[TOKENS], TOKENS)
    if token_dtype.kind not in "iu" or len(token_shape) != 1 or token_shape[0] < 1:
        raise SampleError(f"{TOKENS}: expected int [L>=1], got {token_dtype} {token_shape}")
    if vocab_size is not None:
        tokens = np.load(io.BytesIO(raw.members[TOKENS]), allow_pickle=False)
        if tokens.min() < 0 or tokens.max() >= vocab_size:
            raise SampleError(f"{TOKENS}: ids outside [0, {vocab_size})")
    try:
        meta = json.loads(raw.members[META])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SampleError(f"{META}: {exc}") from None
    if not isinstance(meta, dict):
        raise SampleError(f"{META}: expected an object, got {type(meta).__name__}")
    declared = meta.get("n_frames")
    if declared is not None and declared != n_frames:
        raise SampleError(f"{META} says n_frames={declared}, {feature_members(encoding)[0]} has {n_frames}")
    return n_frames


def _load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_sample(raw: RawSample, stored: StoredFeatures | None = None) -> ShardSample:
    """Load a sample that :func:`inspect_sample` accepted (with the same ``stored``).
    Its features are [T, feat_dim]: as stored (float16) in float16-160, derived from
    the log-mel and rounded to float16 in the logmel encodings."""
    stored = stored or DEFAULT_STORED
    encoding = sample_encoding(raw, stored)
    arrays = {suffix: _load(raw.members[suffix]) for suffix in feature_members(encoding)}
    return ShardSample(
        key=raw.key,
        shard=raw.shard,
        feats=decode_features(arrays, encoding, stored.features),
        tokens=_load(raw.members[TOKENS]),
        meta=json.loads(raw.members[META]),
    )
