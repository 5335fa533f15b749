"""Reading WebDataset tar shards safely: samples out, damage reported, no pickle ever.

A shard holds samples ``<key>.feats.npy`` (float16 [T, 160]), ``<key>.tokens.npy``
(int32 [L]) and ``<key>.json`` (docs/contracts.md). Reading happens in three steps
so that the loader can plan batches and skip consumed ones before paying for
decoding:

1. :func:`read_shard` streams a tar and groups members into :class:`RawSample`
   (bytes only). Members other than the three above, such as ``.pyd`` or
   ``.pickle``, are never read into a sample, so nothing can unpickle them.
2. :func:`inspect_sample` checks a raw sample from the ``.npy`` headers and the
   JSON alone and returns its frame count; a sample that fails is reported as
   damaged with its key and shard instead of failing later in a worker.
3. :func:`decode_sample` loads the arrays with ``np.load(allow_pickle=False)``.

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

FEATS, TOKENS, META = "feats.npy", "tokens.npy", "json"
SAMPLE_MEMBERS = (FEATS, TOKENS, META)

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
    feats: np.ndarray  # float16 [T, feat_dim]
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
                if suffix not in SAMPLE_MEMBERS:
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


def inspect_sample(raw: RawSample, feat_dim: int, vocab_size: int | None = None) -> int:
    """Check ``raw`` against the contract from headers only; returns its number of frames.

    Token ids are range-checked when ``vocab_size`` is given: an id outside the
    vocabulary would otherwise surface as a device-side assert in the embedding.
    """
    if raw.problems:
        raise SampleError("; ".join(raw.problems))
    missing = [m for m in SAMPLE_MEMBERS if m not in raw.members]
    if missing:
        raise SampleError(f"missing member(s) {', '.join(missing)}")
    shape, dtype = _npy_header(raw.members[FEATS], FEATS)
    if dtype.kind != "f" or len(shape) != 2 or shape[1] != feat_dim or shape[0] < 1:
        raise SampleError(f"{FEATS}: expected float [T>=1, {feat_dim}], got {dtype} {shape}")
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
    if declared is not None and declared != shape[0]:
        raise SampleError(f"{META} says n_frames={declared}, {FEATS} has {shape[0]}")
    return int(shape[0])


def decode_sample(raw: RawSample) -> ShardSample:
    """Load a sample that :func:`inspect_sample` accepted."""
    return ShardSample(
        key=raw.key,
        shard=raw.shard,
        feats=np.load(io.BytesIO(raw.members[FEATS]), allow_pickle=False),
        tokens=np.load(io.BytesIO(raw.members[TOKENS]), allow_pickle=False),
        meta=json.loads(raw.members[META]),
    )
