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
3. :func:`decode_sample` makes the arrays read-only views of the member bytes (what
   ``np.load(allow_pickle=False)`` would return, without copying) and, for the logmel
   encodings, derives the [T, 160] features from the log-mel.

The tar reading is ours rather than ``webdataset.tarfile_to_samples``: its
handler hears about a truncated shard once per failing member and again for
the stream, with the URL in different places of the exception, whereas here
each failure is attributed to exactly one shard; and a tar cut at a member
boundary reads as a complete shorter archive, which only a comparison with
the manifest's sample count can reveal. An uncompressed tar is parsed here
(:func:`tar_members`) rather than by tarfile, whose per-member cost was most of the
reading cost; compressed shards and member types other than files, directories,
links and pax or GNU long-name headers are read by tarfile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import mmap
import os
import re
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator
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
    # bytes, or memoryviews of a memory-mapped shard (the json member is always bytes)
    members: dict[str, bytes | memoryview] = dataclasses.field(default_factory=dict)
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


# Compressed shards go through tarfile, which detects and decompresses these.
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_BLOCK = tarfile.BLOCKSIZE
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
# Types whose data tarfile does not skip (their size field is not a payload).
_NO_DATA = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE)
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
_ENCODING = sys.getfilesystemencoding()

Member = tuple[str, bool, Callable[[], bytes]]  # name, regular file, read its data


class _Pushback:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(n)
        if n < 0:
            data, self.head = self.head + self.stream.read(), b""
            return data
        data, self.head = self.head[:n], self.head[n:]
        return data + self.stream.read(n - len(data)) if len(data) < n else data


class _MappedStream:
    """read() over a buffer, returning zero-copy memoryview slices of it."""

    def __init__(self, view: memoryview) -> None:
        self.view, self.pos = view, 0

    def read(self, n: int = -1) -> memoryview:
        end = len(self.view) if n < 0 else min(self.pos + n, len(self.view))
        data = self.view[self.pos : end]
        self.pos = end
        return data


def _read_exact(stream: Any, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the stream."""
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _nts(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode(_ENCODING, "surrogateescape")


def _nti(field: bytes) -> int:
    """A tar number field, octal or base-256, as tarfile reads it."""
    if field[0] in (0o200, 0o377):
        return tarfile.nti(field)
    try:
        return int(_nts(field).strip() or "0", 8)
    except ValueError:
        raise tarfile.InvalidHeaderError("invalid header") from None


def _block(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


class _Handover(Exception):
    """A member the fast reader leaves to tarfile; ``head`` holds the bytes read of it."""

    def __init__(self, head: bytes) -> None:
        super().__init__("member for tarfile")
        self.head = head


class _PlainTar:
    """The members of an uncompressed tar stream, read as ``tarfile.open(mode="r|")`` reads
    them (same names, same data, the same points at which a damaged stream ends or fails),
    for a fraction of its per-member cost. ustar, pax (``x`` and ``g``) and GNU long names
    are handled here; a member of any other type (sparse files, long link names, ...) and
    everything after it is handed to tarfile."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.offset = 0  # bytes consumed
        self.skip = 0  # bytes of the current member not consumed yet (data and padding)
        self.size = 0  # data bytes of the current member
        self.global_pax: dict[str, str] = {}

    def _consume(self, n: int) -> bytes:
        data = _read_exact(self.stream, n)
        self.offset += len(data)
        return data

    def _data(self) -> bytes:
        data = self._consume(self.size)
        if len(data) != self.size:
            raise tarfile.ReadError("unexpected end of data")
        self.skip = _block(self.size) - self.size
        return data

    def _header(self, subsequent: bool) -> tuple[bytes, str, bytes, int] | None:
        """(block, name, type, size) of the next header; None at the archive's end."""
        start = self.offset
        block = bytes(self._consume(_BLOCK))
        try:
            if len(block) != _BLOCK:
                raise tarfile.EmptyHeaderError("empty header") if not block else \
                    tarfile.TruncatedHeaderError("truncated header")
            if block.count(0) == _BLOCK:
                raise tarfile.EOFHeaderError("end of file header")
            if _nti(block[148:156]) not in tarfile.calc_chksums(block):
                raise tarfile.InvalidHeaderError("bad checksum")
            size = _nti(block[124:136])
        except tarfile.HeaderError as exc:
            if subsequent:
                raise tarfile.ReadError(str(exc)) from None
            if start == 0 and not isinstance(exc, tarfile.EOFHeaderError):
                raise tarfile.ReadError("empty file" if not block else str(exc)) from None
            return None
        kind = block[156:157]
        name = _nts(block[0:100])
        if kind == tarfile.AREGTYPE and name.endswith("/"):
            kind = tarfile.DIRTYPE
        if kind == tarfile.DIRTYPE:
            name = name.rstrip("/")
        prefix = _nts(block[345:500])
        if prefix and kind not in tarfile.GNU_TYPES:
            name = prefix + "/" + name
        return block, name, kind, size

    def _pax(self, raw: bytes) -> dict[str, str]:
        records: dict[str, str] = {}
        pos = 0
        while (match := _PAX_RECORD.match(raw, pos)) is not None:
            length = int(match.group(1))
            if length == 0:
                raise tarfile.InvalidHeaderError("invalid header")
            value = raw[match.end(2) + 1 : match.start(1) + length - 1]
            records[match.group(2).decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
            pos += length
        return records

    def members(self) -> Iterator[Member]:
        while True:
            if self.skip:
                skipped = self._consume(self.skip)
                if len(skipped) != self.skip:
                    raise tarfile.ReadError("unexpected end of data")
                self.skip = 0
            header = self._header(subsequent=False)
            if header is None:
                return
            pax = dict(self.global_pax)
            head = header[0]
            block, name, kind, size = header
            while kind in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
                extra = bytes(self._consume(_block(size)))
                head += extra
                if kind == tarfile.GNUTYPE_LONGNAME:
                    long_name = _nts(extra)
                else:
                    records = self._pax(extra)
                    if any(k.startswith("GNU.sparse") or k == "hdrcharset" for k in records):
                        raise _Handover(head)
                    if kind == tarfile.XGLTYPE:
                        self.global_pax.update(records)
                    pax.update(records)
                    long_name = None
                header = self._header(subsequent=True)
                assert header is not None  # a subsequent header never ends the archive
                head += header[0]
                block, name, kind, size = header
                if long_name is not None:
                    name = long_name
            if kind not in _REGULAR and kind not in _NO_DATA:
                raise _Handover(head)
            if "path" in pax:
                name = pax["path"].rstrip("/")
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    size = 0
            regular = kind in _REGULAR
            self.size = size if regular else 0
            self.skip = _block(self.size)
            yield name, regular, self._data


def _tarfile_members(stream: Any) -> Iterator[Member]:
    archive = tarfile.open(fileobj=stream, mode="r|*")
    for member in archive:
        def read(member: tarfile.TarInfo = member) -> bytes:
            extracted = archive.extractfile(member)
            return extracted.read() if extracted is not None else b""

        yield member.name, member.isreg(), read


def tar_members(stream: Any) -> Iterator[Member]:
    """(name, is a regular file, read()) for each member of a tar stream; call read() for
    a member's data before advancing. Uncompressed tars are read by :class:`_PlainTar`,
    compressed ones by tarfile; errors are tarfile's (``tarfile.ReadError`` and the like).
    Over a :class:`_MappedStream` the data are memoryview slices of its buffer."""
    head = bytes(_read_exact(stream, _BLOCK))
    if isinstance(stream, _MappedStream):
        stream.pos = 0
        if head.startswith(_COMPRESSED_MAGIC):
            stream = io.BytesIO(stream.view)
    else:
        stream = _Pushback(head, stream)
    if head.startswith(_COMPRESSED_MAGIC):
        yield from _tarfile_members(stream)
        return
    plain = _PlainTar(stream)
    try:
        yield from plain.members()
    except _Handover as handover:
        yield from _tarfile_members(_Pushback(handover.head, plain.stream))


@contextlib.contextmanager
def _open_shard(url: str) -> Iterator[Any]:
    """A local shard file is memory-mapped (read-only): its members are then views of
    the page cache rather than copies, and the map lives as long as the arrays decoded
    from it. Anything else (``pipe:``, URLs) is streamed by ``webdataset.gopen``. A shard
    must not be rewritten in place while it is read (a rename over it is fine)."""
    path = url[len("file:") :] if url.startswith("file:") else url
    if "://" in path or path.startswith("pipe:") or not os.path.isfile(path):
        with wds.gopen(url, "rb") as stream:
            yield stream
        return
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else b""
    yield _MappedStream(memoryview(mapped))


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
        with _open_shard(url) as stream:
            for name, regular, read in tar_members(stream):
                if not regular:
                    continue
                key, suffix = split_member_name(name)
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
                data = read()
                current.members[suffix] = data if isinstance(data, bytes) or suffix != META else bytes(data)
            if current is not None:
                count += 1
                yield current
    except SHARD_READ_ERRORS as exc:
        events.append(ShardDamage(url, f"unreadable after {count} samples: {type(exc).__name__}: {exc}"))
        return
    if expected_samples is not None and count != expected_samples:
        events.append(ShardDamage(url, f"holds {count} samples, the manifest lists {expected_samples}"))


# The header np.save writes: a dict of descr (a plain dtype), fortran_order and shape.
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (False|True), 'shape': \(([\d, ]*)\), \} *\n"
)
_NPY_DTYPES: dict[bytes, np.dtype] = {}


def _npy_layout(data: bytes, name: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, payload offset) of an ``.npy`` payload, checked against
    its byte count, without loading it. The header np.save writes is parsed here; any
    other form goes to numpy's parser (``np.lib.format``), whose errors say what is wrong."""
    layout = None
    if data[:6] == b"\x93NUMPY" and data[6:7] in (b"\x01", b"\x02", b"\x03"):
        start = 10 if data[6] == 1 else 12
        length = int.from_bytes(data[8:start], "little")
        match = _NPY_HEADER.fullmatch(data, start, start + length)
        if match is not None:
            descr = match.group(1)
            dtype = _NPY_DTYPES.get(descr)
            if dtype is None:
                dtype = _NPY_DTYPES[descr] = np.dtype(descr.decode("ascii"))
            dims = [d for d in match.group(3).split(b",") if d.strip()]
            if len(dims) != 1 or match.group(3).rstrip().endswith(b","):
                layout = (tuple(int(d) for d in dims), dtype, match.group(2) == b"True", start + length)
    if layout is None:
        layout = _npy_layout_numpy(data, name)
    shape, dtype, _, offset = layout
    if dtype.hasobject:
        raise SampleError(f"{name}: object arrays need pickle and are refused")
    payload = len(data) - offset
    if payload != int(np.prod(shape)) * dtype.itemsize:
        raise SampleError(f"{name}: header says {shape} {dtype}, payload holds {payload} bytes")
    return layout


def _npy_layout_numpy(data: bytes, name: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buffer)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buffer)
    except ValueError as exc:
        raise SampleError(f"{name}: not a valid .npy file ({exc})") from None
    return shape, dtype, fortran, buffer.tell()


def _npy_header(data: bytes, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an ``.npy`` payload, checked against its byte count, without loading it."""
    shape, dtype, _, _ = _npy_layout(data, name)
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
        tokens = _load(raw.members[TOKENS], TOKENS)
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


def _load(data: bytes, name: str) -> np.ndarray:
    """The array of an ``.npy`` payload: a read-only view of ``data``, the values np.load
    gives (never unpickling: object arrays are refused)."""
    shape, dtype, fortran, offset = _npy_layout(data, name)
    flat = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=offset)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def decode_sample(raw: RawSample, stored: StoredFeatures | None = None) -> ShardSample:
    """Load a sample that :func:`inspect_sample` accepted (with the same ``stored``).
    Its features are [T, feat_dim]: as stored (float16) in float16-160, derived from
    the log-mel and rounded to float16 in the logmel encodings."""
    stored = stored or DEFAULT_STORED
    encoding = sample_encoding(raw, stored)
    arrays = {suffix: _load(raw.members[suffix], suffix) for suffix in feature_members(encoding)}
    return ShardSample(
        key=raw.key,
        shard=raw.shard,
        feats=decode_features(arrays, encoding, stored.features),
        tokens=_load(raw.members[TOKENS], TOKENS),
        meta=json.loads(raw.members[META]),
    )
