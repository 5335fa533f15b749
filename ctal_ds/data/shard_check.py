"""Verify a built shard set against its manifest (``prepare_data.py --check``).

Samples are read with the training loader's own reader (``shard_reader``), so a set
that passes is a set the loader accepts. Every problem is reported with the file it
concerns; nothing stops at the first one, so one run lists all bad shards of a set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from ctal_ds.data.feature_encoding import StoredFeatures
from ctal_ds.data.shard_reader import (
    SampleError,
    ShardSample,
    decode_sample,
    inspect_sample,
    read_shard,
    sample_members,
    stored_dtypes,
)
from ctal_ds.data.shards import MANIFEST, REJECTS, read_manifest
from ctal_ds.data.tokenizer import SPECIAL_TOKENS


@dataclasses.dataclass
class ShardCheck:
    out_dir: Path
    shards: int = 0
    samples: int = 0
    encoding: str | None = None  # the manifest's feature encoding, once read
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _builder_contract(sample: ShardSample) -> str | None:
    """What the builder promises beyond what the loader checks (exact dtypes, finite
    features, ``<s> ... </s>``), or None when the sample keeps it. ``sample`` is
    decoded: for the logmel encodings its features are the derived ones."""
    bos, eos = SPECIAL_TOKENS.index("<s>"), SPECIAL_TOKENS.index("</s>")
    if sample.feats.dtype != np.float16 or sample.tokens.dtype != np.int32:
        return f"dtypes {sample.feats.dtype}/{sample.tokens.dtype}, expected float16/int32"
    if not np.isfinite(sample.feats).all():
        return "feats hold NaN or infinity"
    if len(sample.tokens) < 3 or sample.tokens[0] != bos or sample.tokens[-1] != eos:
        return "tokens are not <s> ... </s> around at least one token"
    return None


def _check_tar(
    path: Path, entry: dict, dim: int, vocab_size: int, stored: StoredFeatures
) -> tuple[int, int, list[str]]:
    """(samples, frames, problems) of one tar, read with the training loader's reader."""
    samples = frames = 0
    problems: list[str] = []
    events: list = []
    members = list(sample_members(stored.encoding))
    for raw in read_shard(str(path), events, expected_samples=entry["samples"]):
        try:
            n_frames = inspect_sample(raw, dim, vocab_size, stored)
            why = stored_dtypes(raw, stored) or _builder_contract(decode_sample(raw, stored))
            if list(raw.members) != members:
                why = f"members in order {list(raw.members)}, expected {members}"
        except (SampleError, ValueError) as err:
            why = str(err)
        if why:
            problems.append(f"{path.name}: sample {raw.key}: {why}")
        else:
            samples += 1
            frames += n_frames
    problems += [f"{path.name}: {event.reason}" for event in events]
    return samples, frames, problems


def check_shards(out_dir: str | os.PathLike) -> ShardCheck:
    out_dir = Path(out_dir)
    report = ShardCheck(out_dir)
    try:
        manifest = read_manifest(out_dir)
    except (OSError, ValueError) as err:
        report.problems.append(f"{MANIFEST}: unreadable ({err}); the build did not finish")
        return report
    try:
        stored = StoredFeatures.from_manifest(manifest, MANIFEST)
    except ValueError as err:
        report.problems.append(str(err))
        return report
    report.encoding = stored.encoding
    dim = 2 * stored.features.n_mels
    tok = manifest["tokenizer"]
    tok_path = out_dir / tok["file"]
    if not tok_path.is_file():
        report.problems.append(f"{tok_path.name}: missing")
    elif _sha256(tok_path) != tok["sha256"]:
        report.problems.append(f"{tok_path.name}: sha256 differs from the manifest")

    listed = set()
    for entry in manifest["shards"]:
        path = out_dir / entry["name"]
        listed.add(entry["name"])
        report.shards += 1
        if not path.is_file():
            report.problems.append(f"{path.name}: missing")
            continue
        if path.stat().st_size != entry["bytes"]:
            report.problems.append(f"{path.name}: {path.stat().st_size} bytes, manifest says {entry['bytes']}")
        if _sha256(path) != entry["sha256"]:
            report.problems.append(f"{path.name}: sha256 differs from the manifest (corrupt or rewritten)")
        samples, frames, problems = _check_tar(path, entry, dim, tok["vocab_size"], stored)
        report.problems += problems
        report.samples += samples
        if not problems and (samples, frames) != (entry["samples"], entry["frames"]):
            report.problems.append(
                f"{path.name}: {samples} samples / {frames} frames, manifest says "
                f"{entry['samples']} / {entry['frames']}"
            )
    for path in sorted(out_dir.glob("shard-*.tar")):
        if path.name not in listed:
            report.problems.append(f"{path.name}: not in the manifest (left from another build?)")

    totals = manifest["totals"]
    rejects = out_dir / REJECTS
    n_rejects = len(rejects.read_text(encoding="utf-8").splitlines()) if rejects.is_file() else None
    if n_rejects != totals["rejected"]:
        report.problems.append(f"{REJECTS}: {n_rejects} lines, manifest says {totals['rejected']} rejected")
    if totals["samples"] != sum(e["samples"] for e in manifest["shards"]):
        report.problems.append(f"{MANIFEST}: total samples differ from the sum over shards")
    if totals["samples"] + totals["rejected"] != totals["inputs"]:
        report.problems.append(
            f"{MANIFEST}: {totals['samples']} samples + {totals['rejected']} rejected "
            f"!= {totals['inputs']} inputs"
        )
    return report
