"""Which shards a job reads, and which of them each rank and worker gets in an epoch.

The shard writer (:mod:`ctal_ds.data.shards`) leaves ``shard-000000.tar`` ...
beside a ``manifest.json`` listing each shard's sample count; the count lets the
reader notice a shard cut short at a member boundary, which tar itself cannot.

Splitting follows the WebDataset lessons (DESIGN.md section 4): the shard order
is shuffled with (seed, epoch) BEFORE it is split, so each epoch deals the
shards afresh, and every rank and worker computes its share from the same
permutation, so the shares of one epoch are disjoint and cover all shards.
webdataset's ``split_by_node`` / ``split_by_worker`` are not used because they
read the rank from ``torch.distributed`` and the worker from the DataLoader at
iteration time; here the rank is explicit and the worker is a logical index
that the loader rotates on resume (see :mod:`ctal_ds.data.loader`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import webdataset as wds

from ctal_ds.data.feature_encoding import StoredFeatures

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARD_GLOB = "shard-*.tar*"

# Random stream of the per-epoch shard permutation (other streams: masking, batch order).
SHARD_ORDER_STREAM = 3


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """Shard URLs in manifest order, with their sample and frame counts when known, and
    how their samples store the features (the manifest's feature encoding; without a
    manifest, each sample's members tell)."""

    urls: tuple[str, ...]
    samples: tuple[int | None, ...]
    frames: tuple[int | None, ...]
    stored: StoredFeatures = StoredFeatures()

    def __len__(self) -> int:
        return len(self.urls)

    @property
    def total_samples(self) -> int | None:
        return None if None in self.samples else sum(self.samples)  # type: ignore[arg-type]

    @classmethod
    def from_urls(cls, urls: Sequence[str]) -> ShardSet:
        return cls(tuple(urls), (None,) * len(urls), (None,) * len(urls))

    @classmethod
    def from_manifest(cls, path: str | os.PathLike[str]) -> ShardSet:
        path = Path(path)
        manifest = json.loads(path.read_text())
        stored = StoredFeatures.from_manifest(manifest, str(path))
        entries = manifest.get("shards")
        if not entries:
            raise ValueError(f"{path} lists no shards")
        urls = tuple(str(path.parent / e["name"]) for e in entries)
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} lists {len(missing)} shard(s) not on disk: {missing[:5]}")
        return cls(
            urls,
            tuple(int(e["samples"]) for e in entries),
            tuple(int(e["frames"]) if "frames" in e else None for e in entries),
            stored,
        )

    @classmethod
    def resolve(cls, source: str | os.PathLike[str] | Sequence[str]) -> ShardSet:
        """A shard directory (its manifest, else ``shard-*.tar*``), a manifest file, or URLs.

        A URL string may use webdataset's brace and ``::`` notation
        (``pipe:curl -s https://host/shard-{000000..000099}.tar``).
        """
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            if path.is_dir() and (path / MANIFEST).is_file():
                return cls.from_manifest(path / MANIFEST)
            if path.is_file() and path.suffix == ".json":
                return cls.from_manifest(path)
            if path.is_dir():
                urls = sorted(str(p) for p in path.glob(SHARD_GLOB))
                if not urls:
                    raise ValueError(f"{path} holds neither {MANIFEST} nor {SHARD_GLOB} files")
                logger.warning(
                    "%s has no %s: shards cut short at a member boundary will go unnoticed", path, MANIFEST
                )
                return cls.from_urls(urls)
            return cls.from_urls(wds.shardlists.expand_urls(str(source)))
        if not source:
            raise ValueError("no shards given")
        return cls.from_urls([str(u) for u in source])


def check_enough_shards(num_shards: int, world_size: int, num_workers: int) -> None:
    """A rank or worker without a shard hangs the job (DESIGN.md section 4): refuse to start."""
    needed = world_size * max(1, num_workers)
    if num_shards < needed:
        raise ValueError(
            f"{num_shards} shard(s) cannot feed {world_size} rank(s) x {max(1, num_workers)} "
            f"loader worker(s): at least {needed} shards are needed so that every worker "
            f"reads one. Use fewer loader workers (num_workers), run on fewer ranks, or "
            f"rebuild the shards smaller so there are more of them (--samples-per-shard)."
        )


def shards_for_worker(
    num_shards: int, seed: int, epoch: int, rank: int, world_size: int, worker: int, num_workers: int
) -> list[int]:
    """Indices of the shards that (rank, worker) reads in ``epoch``, in reading order."""
    order = np.random.default_rng([seed, epoch, SHARD_ORDER_STREAM]).permutation(num_shards)
    return [int(i) for i in order[rank::world_size][worker :: max(1, num_workers)]]
