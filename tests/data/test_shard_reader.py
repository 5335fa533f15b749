"""The shard reader's own tar parser and .npy decoding against tarfile and np.load.

The reference here is the reader as it was built on the standard library: members from
``tarfile.open(mode="r|*")``, arrays from ``np.load``. On real shards, on tars of every
header kind the parser handles (pax, GNU long names, ustar prefixes, directories,
links) or hands to tarfile, and on shards cut at every block, both must give the same
samples and report damage in the same cases.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ctal_ds.data import shard_reader
from ctal_ds.data.shard_reader import (
    KNOWN_MEMBERS,
    RawSample,
    SampleError,
    decode_sample,
    inspect_sample,
    read_shard,
    split_member_name,
    tar_members,
)
from tests.data.shard_factory import npy_bytes, write_shards


def reference_read(data: bytes) -> tuple[list[tuple[str, dict[str, bytes]]], bool]:
    """(key, members) of each sample and whether reading failed, via tarfile."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r|*")
        for member in archive:
            if not member.isreg():
                continue
            key, suffix = split_member_name(member.name)
            if key is None:
                continue
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            if suffix in KNOWN_MEMBERS and suffix not in samples[-1][1]:
                extracted = archive.extractfile(member)
                samples[-1][1][suffix] = extracted.read() if extracted is not None else b""
    except shard_reader.SHARD_READ_ERRORS:
        return samples[:-1] if samples else samples, True
    return samples, False


def our_read(path: Path, url: str | None = None) -> tuple[list[tuple[str, dict[str, bytes]]], bool]:
    events: list = []
    samples = [(raw.key, {k: bytes(v) for k, v in raw.members.items()})
               for raw in read_shard(url or str(path), events)]
    return samples, any("unreadable" in e.reason for e in events)


def tar_bytes(entries, format=tarfile.PAX_FORMAT, compress=False) -> bytes:
    """entries: (TarInfo, data or None)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as archive:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buffer.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def file_entry(name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = 1_700_000_000.5  # a float mtime makes tarfile write a pax header
    return info, data


def sample_entries(key: str, rng: np.random.Generator, frames: int = 30) -> list:
    feats = rng.standard_normal((frames, 160)).astype(np.float16)
    tokens = np.arange(5, 12, dtype=np.int32)
    meta = json.dumps({"id": key, "n_frames": frames}).encode()
    return [file_entry(f"{key}.feats.npy", npy_bytes(feats)),
            file_entry(f"{key}.tokens.npy", npy_bytes(tokens)),
            file_entry(f"{key}.json", meta)]


def special_members(rng: np.random.Generator) -> list:
    """Samples among every header kind: ustar prefix, GNU long name, directory, links."""
    long_key = "d" * 60 + "/" + "k" * 120  # longer than the 100-byte name field
    entries = sample_entries("plain", rng)
    directory = tarfile.TarInfo("somedir")
    directory.type = tarfile.DIRTYPE
    entries.append((directory, None))
    entries += sample_entries("somedir/inner", rng)
    link = tarfile.TarInfo("alink")
    link.type = tarfile.SYMTYPE
    link.linkname = "plain.json"
    entries.append((link, None))
    entries += sample_entries(long_key, rng)
    entries.append(file_entry("notes.txt", b"not a sample member"))
    entries += sample_entries("ünïcode-key", rng)
    return entries


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("reader"), [6, 5], frames=(20, 90))


def test_webdataset_shards_read_like_tarfile(shards):
    for path in shards.paths:
        ours, failed = our_read(path)
        reference, reference_failed = reference_read(path.read_bytes())
        assert (ours, failed) == (reference, reference_failed)
        assert len(ours) == len([k for k in shards.samples if shards.shard_of[k] == path])


@pytest.mark.parametrize("format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_every_header_kind_reads_like_tarfile(tmp_path, format):
    rng = np.random.default_rng(format)
    entries = special_members(rng)
    if format == tarfile.USTAR_FORMAT:  # ustar has no long names beyond its prefix field
        entries = [e for e in entries if len(e[0].name.rpartition("/")[2]) <= 100 and e[0].name.isascii()]
    path = tmp_path / "shard.tar"
    path.write_bytes(tar_bytes(entries, format))
    ours, failed = our_read(path)
    assert not failed
    assert (ours, failed) == reference_read(path.read_bytes())
    assert {"plain", "somedir/inner"} <= {key for key, _ in ours}


def test_a_member_type_it_does_not_parse_goes_to_tarfile_with_the_rest(tmp_path):
    rng = np.random.default_rng(3)
    link = tarfile.TarInfo("longlink")
    link.type = tarfile.SYMTYPE
    link.linkname = "x" * 150  # a GNU long link name header ('K'), which tarfile reads
    entries = sample_entries("before", rng) + [(link, None)] + sample_entries("after", rng)
    path = tmp_path / "shard.tar"
    path.write_bytes(tar_bytes(entries, tarfile.GNU_FORMAT))
    ours, failed = our_read(path)
    assert [key for key, _ in ours] == ["before", "after"]
    assert (ours, failed) == reference_read(path.read_bytes())


def test_compressed_and_piped_shards_read_the_same_samples(shards, tmp_path):
    path = shards.paths[0]
    expected, _ = our_read(path)
    packed = tmp_path / "shard.tar.gz"
    packed.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
    assert our_read(packed) == (expected, False)
    assert our_read(path, f"pipe:cat {path}") == (expected, False)
    assert our_read(path, f"file:{path}") == (expected, False)


def test_shards_cut_anywhere_yield_what_tarfile_yields_and_report_the_same(shards, tmp_path):
    data = shards.paths[1].read_bytes()
    cuts = sorted(set(range(0, len(data), 512)) | set(range(7, len(data), 1531)) | {len(data) - 1})
    for cut in cuts:
        path = tmp_path / "cut.tar"
        path.write_bytes(data[:cut])
        ours, failed = our_read(path)
        reference, reference_failed = reference_read(data[:cut])
        assert ours == reference, f"cut at {cut} of {len(data)} bytes"
        assert failed == reference_failed, f"cut at {cut}: ours failed={failed}, tarfile failed={reference_failed}"


def test_garbage_and_empty_files_are_unreadable(tmp_path):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    for path in (garbage, empty):
        events: list = []
        assert list(read_shard(str(path), events)) == []
        assert len(events) == 1 and "unreadable after 0 samples" in events[0].reason


def test_tar_members_reads_a_stream_in_small_pieces(shards):
    """A pipe may return fewer bytes than asked for; every read must still be exact."""

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def read(self, n: int = -1) -> bytes:
            n = len(self.data) - self.pos if n < 0 else min(n, 700)
            chunk = self.data[self.pos : self.pos + n]
            self.pos += len(chunk)
            return chunk

    data = shards.paths[0].read_bytes()
    names = [(name, regular, read()) for name, regular, read in tar_members(Trickle(data))]
    archive = tarfile.open(fileobj=io.BytesIO(data), mode="r|")
    reference = [(m.name, m.isreg(), archive.extractfile(m).read()) for m in archive]
    assert names == reference


# --------------------------------------------------------------------------- .npy


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float16).reshape(3, 4),
    np.arange(7, dtype=np.int32),
    np.arange(7, dtype=">i4"),
    np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    np.zeros((0, 160), dtype=np.float16),
    np.array(3.5),
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),  # a structured dtype: numpy's parser
])
def test_npy_members_decode_to_what_np_load_gives(array):
    data = npy_bytes(array)
    got = shard_reader._load(data, "x.npy")
    want = np.load(io.BytesIO(data), allow_pickle=False)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want) and got.tobytes() == want.tobytes()
    assert shard_reader._npy_header(data, "x.npy") == (want.shape, want.dtype)


def test_npy_headers_in_other_spellings_and_versions_go_to_numpys_parser():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=(2, 0))
    v2 = buffer.getvalue()
    header = b"{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}"  # other key order
    header += b" " * (64 - 10 - len(header) - 1) + b"\n"
    reordered = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + array.tobytes()
    for data in (v2, reordered):
        assert np.array_equal(shard_reader._load(data, "x.npy"), array)


def test_bad_npy_members_are_refused_with_the_member_named():
    good = npy_bytes(np.arange(10, dtype=np.int32))
    with pytest.raises(SampleError, match="tokens.npy: header says"):
        shard_reader._npy_header(good[:-4], "tokens.npy")
    with pytest.raises(SampleError, match="tokens.npy: not a valid .npy"):
        shard_reader._npy_header(b"garbage" * 20, "tokens.npy")
    with pytest.raises(SampleError, match="feats.npy: object arrays"):
        shard_reader._npy_header(npy_bytes(np.array([{}, 1], dtype=object), allow_pickle=True), "feats.npy")


def test_decoded_samples_of_a_mapped_shard_equal_np_load_and_outlive_the_reader(shards):
    decoded = []
    for raw in read_shard(str(shards.paths[0]), []):
        assert isinstance(raw.members["feats.npy"], memoryview)  # a view of the mapped file
        assert isinstance(raw.members["json"], bytes)
        inspect_sample(raw, 160)
        decoded.append(decode_sample(raw))
    for sample in decoded:  # the map stays valid as long as the arrays need it
        want = shards.samples[sample.key]
        assert sample.feats.dtype == np.float16 and np.array_equal(sample.feats, want.feats)
        assert np.array_equal(sample.tokens, want.tokens) and sample.meta == want.meta


def test_a_sample_is_grouped_from_its_members_in_tar_order(shards):
    raws = list(read_shard(str(shards.paths[0]), []))
    assert [r.key for r in raws] == sorted(k for k in shards.samples if shards.shard_of[k] == shards.paths[0])
    assert all(isinstance(r, RawSample) and set(r.members) == {"feats.npy", "tokens.npy", "json"} for r in raws)
