"""Real WebDataset shards made on the fly, in the layout of docs/contracts.md.

Written with ``webdataset.TarWriter`` in the shape the shard writer
(``ctal_ds.data.shards``) produces: ``shard-000000.tar`` ... plus a
``manifest.json`` listing per-shard sample and frame counts and hashes.
Also the damage the loader must survive: truncation, garbage, bad members.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import webdataset as wds

FEAT_DIM = 160
VOCAB_SIZE = 64
FIRST_ORDINARY_ID = 5  # after <s> <pad> </s> <unk> <mask>
BOS, EOS = 0, 2


@dataclasses.dataclass
class SyntheticSample:
    key: str
    feats: np.ndarray  # float16 [T, 160]
    tokens: np.ndarray  # int32 [L], <s> ... </s>
    meta: dict


@dataclasses.dataclass
class ShardFixture:
    directory: Path
    paths: list[Path]
    samples: dict[str, SyntheticSample]
    shard_of: dict[str, Path]

    @property
    def manifest(self) -> Path:
        return self.directory / "manifest.json"


def make_sample(key: str, n_frames: int, n_tokens: int, rng: np.random.Generator, labels: dict | None = None) -> SyntheticSample:
    feats = rng.standard_normal((n_frames, FEAT_DIM)).astype(np.float16)
    body = rng.integers(FIRST_ORDINARY_ID, VOCAB_SIZE, size=n_tokens)
    tokens = np.concatenate([[BOS], body, [EOS]]).astype(np.int32)
    meta = {
        "id": key, "text": f"utterance {key}", "speaker": key.split("-")[0], "split": "train",
        "duration_s": n_frames * 0.0125, "n_frames": n_frames, "source": "synthetic",
        "labels": labels or {},
    }
    return SyntheticSample(key, feats, tokens, meta)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def sample_members(sample: SyntheticSample) -> dict[str, object]:
    return {
        "__key__": sample.key,
        "feats.npy": npy_bytes(sample.feats),
        "tokens.npy": npy_bytes(sample.tokens),
        "json": json.dumps(sample.meta).encode(),
    }


def write_shards(
    directory: Path,
    samples_per_shard: Sequence[int],
    frames: tuple[int, int] = (20, 200),
    tokens: tuple[int, int] = (3, 30),
    seed: int = 0,
    extra_members: dict[str, dict[str, bytes | None]] | None = None,
) -> ShardFixture:
    """Shards with ``samples_per_shard[i]`` samples each, lengths uniform in the given ranges.

    extra_members: key -> {suffix: bytes or None}: members added to, replacing or
        (None) removed from that sample.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    fixture = ShardFixture(directory, [], {}, {})
    entries = []
    for shard_index, count in enumerate(samples_per_shard):
        path = directory / f"shard-{shard_index:06d}.tar"
        total_frames = 0
        with wds.TarWriter(str(path)) as writer:
            for i in range(count):
                key = f"spk{shard_index}-{i:04d}"
                sample = make_sample(
                    key, int(rng.integers(frames[0], frames[1] + 1)),
                    int(rng.integers(tokens[0], tokens[1] + 1)), rng,
                )
                members = sample_members(sample)
                for suffix, payload in (extra_members or {}).get(key, {}).items():
                    if payload is None:
                        members.pop(suffix, None)
                    else:
                        members[suffix] = payload
                writer.write(members)
                fixture.samples[key] = sample
                fixture.shard_of[key] = path
                total_frames += sample.feats.shape[0]
        fixture.paths.append(path)
        entries.append({
            "name": path.name, "samples": count, "frames": total_frames,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        })
    manifest = {
        "shards": entries,
        "totals": {"shards": len(entries), "samples": sum(samples_per_shard),
                   "frames": sum(e["frames"] for e in entries)},
    }
    fixture.manifest.write_text(json.dumps(manifest, indent=1))
    return fixture


def truncate(path: Path, fraction: float = 0.5) -> None:
    """Cut a shard short in the middle of a member, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction) | 1])


def truncate_at_member(path: Path, member_index: int) -> None:
    """Cut a shard exactly before a member's header: tar reads it as a complete, shorter archive."""
    with tarfile.open(path) as archive:
        offset = archive.getmembers()[member_index].offset
    path.write_bytes(path.read_bytes()[:offset])


def overwrite_with_garbage(path: Path, seed: int = 0) -> None:
    path.write_bytes(np.random.default_rng(seed).bytes(path.stat().st_size))
