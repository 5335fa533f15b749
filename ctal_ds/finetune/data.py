"""A downstream task's shard set, read whole into memory and divided by its TaskSpec.

Task sets are small (IEMOCAP ~10k utterances, MOSEI ~23k, a LibriSpeech speaker
set the size of the training corpus is the largest), so every fine-tune run reads its
shards once and keeps the decoded samples; the TaskSpec divides them by utterance id
(``TaskSpec.splits`` on records rebuilt from the sample JSONs). One process running
several fine-tunes on one shard set (``launch/ablate.py``) reads it once: the reader
is cached by the manifest's path and contents. Samples are kept decoded, float16
[T, 160] in every feature encoding: a set in a logmel encoding derives its features
once, while it is read.

Nothing is dropped silently: a damaged shard or sample stops the run, since a missing
utterance would quietly change a train/dev/test split.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctal_ds.data.damage import DataDamageError
from ctal_ds.data.records import Record
from ctal_ds.data.shard_list import MANIFEST, ShardSet
from ctal_ds.data.shard_reader import (
    SampleError,
    ShardSample,
    decode_sample,
    inspect_sample,
    read_shard,
)
from ctal_ds.tasks.base import Split, TaskSpec
from ctal_ds.tasks.subsets import subsample


@dataclasses.dataclass(frozen=True)
class TaskSamples:
    """Every sample of a shard set, decoded, by utterance id (the JSON's ``id``)."""

    root: Path
    manifest: dict[str, Any]
    samples: Mapping[str, ShardSample]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def tokenizer(self) -> Path:
        return self.root / self.manifest["tokenizer"]["file"]

    def records(self) -> list[Record]:
        """The samples as corpus records, the input of ``TaskSpec.splits``."""
        return [record_of(s.meta) for s in self.samples.values()]

    def meta(self, utt_id: str) -> dict[str, Any]:
        return self.samples[utt_id].meta


def record_of(meta: Mapping[str, Any]) -> Record:
    return Record(
        id=meta["id"], audio=meta.get("source", ""), text=meta.get("text", ""),
        speaker=meta["speaker"], split=meta.get("split", ""), labels=dict(meta.get("labels") or {}),
    )  # fmt: skip


def load_task_samples(shards: str | Path) -> TaskSamples:
    """Read a task shard directory (with its manifest); cached per manifest contents."""
    manifest_path = Path(shards).resolve() / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{shards}: no {MANIFEST}; build the task shards first (launch/prepare_data.py)")
    digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    return _load(str(manifest_path), digest)


@functools.lru_cache(maxsize=4)
def _load(manifest_path: str, digest: str) -> TaskSamples:
    path = Path(manifest_path)
    manifest = json.loads(path.read_text())
    if "tokenizer" not in manifest:
        raise ValueError(f"{path}: the manifest names no tokenizer; fine-tuning needs the shards' vocabulary")
    shard_set = ShardSet.from_manifest(path)  # checks the manifest's feature encoding
    events: list = []
    samples: dict[str, ShardSample] = {}
    for url, expected in zip(shard_set.urls, shard_set.samples):
        for raw in read_shard(url, events, expected):
            try:
                inspect_sample(raw, 160, manifest["tokenizer"]["vocab_size"], shard_set.stored)
            except SampleError as err:
                raise SampleError(f"{url}: sample {raw.key}: {err}") from None
            sample = decode_sample(raw, shard_set.stored)  # float16 [T, 160] in every encoding
            utt_id = sample.meta["id"]
            if utt_id in samples:
                raise ValueError(f"{url}: utterance id {utt_id!r} appears twice in {path.parent}")
            samples[utt_id] = sample
    if events:
        raise DataDamageError(f"{path.parent}: damaged shards, rebuild them: " + "; ".join(map(str, events)))
    ordered = {k: samples[k] for k in sorted(samples)}
    return TaskSamples(path.parent, manifest, ordered)


@dataclasses.dataclass(frozen=True)
class SplitSamples:
    """The samples of one train / dev / test split (one fold), training part subsampled."""

    name: str
    train: tuple[ShardSample, ...]
    dev: tuple[ShardSample, ...]
    test: tuple[ShardSample, ...]
    fraction: float = 1.0

    def part(self, name: str) -> tuple[ShardSample, ...]:
        if name not in ("train", "dev", "test"):
            raise ValueError(f"no split part {name!r}")
        return getattr(self, name)


def select_split(
    data: TaskSamples, spec: TaskSpec, split: Split, fraction: float = 1.0, seed: int = 0
) -> SplitSamples:
    """The samples of ``split``; with ``fraction`` < 1 a nested subset of its training part.

    The subset is stratified by the training label for classification (every class
    keeps utterances at 10 %) and by speaker for the speaker task (every class is a
    speaker); regression draws from one stratum. Dev and test are never subsampled.
    """
    train_ids = list(split.train)
    if fraction < 1.0:
        strata = None if spec.kind == "regression" else [spec.label_of(data.meta(u)) for u in train_ids]
        train_ids = subsample(train_ids, fraction, seed, strata)
    def pick(ids):
        return tuple(data.samples[u] for u in ids)

    return SplitSamples(split.name, pick(train_ids), pick(split.dev), pick(split.test), fraction)
