"""Damaged shards and samples: what the readers report and how a job keeps count.

Workers append :class:`ShardDamage` / :class:`SampleDamage` events to the items
they send; the loader feeds them to one :class:`DamageLog` in the main process,
which warns once per damaged shard or sample and stops the job with
:class:`DataDamageError` once a limit is passed. Damage is counted by name (a
shard by its URL, a sample by shard and key), so the same broken shard met
again in a later epoch, or again while a resumed job fast-forwards, counts once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ShardDamage:
    """A shard that could not be read to its end, or holds the wrong number of samples."""

    shard: str
    reason: str


@dataclasses.dataclass(frozen=True)
class SampleDamage:
    """A sample dropped because a member is missing, duplicated or malformed."""

    shard: str
    key: str
    reason: str


DamageEvent = ShardDamage | SampleDamage


class DataDamageError(RuntimeError):
    """More damaged shards or samples than the job was configured to tolerate."""


class DamageLog:
    """Distinct damaged shards and samples seen by one rank, with limits.

    The limits are per rank: ranks read disjoint shards and the first rank over
    its limit stops the whole job, which is what a limit is for.
    """

    def __init__(self, max_bad_shards: int, max_bad_samples: int) -> None:
        self.max_bad_shards = max_bad_shards
        self.max_bad_samples = max_bad_samples
        self.bad_shards: dict[str, str] = {}
        self.bad_samples: dict[tuple[str, str], str] = {}

    def record(self, events: Iterable[DamageEvent]) -> None:
        """Count new damage, warn about it, and raise when a limit is passed."""
        for event in events:
            if isinstance(event, ShardDamage):
                if event.shard in self.bad_shards:
                    continue
                self.bad_shards[event.shard] = event.reason
                logger.warning(
                    "skipped damaged shard %s: %s (%d damaged shard(s) so far, limit %d)",
                    event.shard, event.reason, len(self.bad_shards), self.max_bad_shards,
                )
            else:
                if (event.shard, event.key) in self.bad_samples:
                    continue
                self.bad_samples[(event.shard, event.key)] = event.reason
                logger.warning(
                    "skipped damaged sample %s in %s: %s (%d damaged sample(s) so far, limit %d)",
                    event.key, event.shard, event.reason, len(self.bad_samples), self.max_bad_samples,
                )
        self.check()

    def check(self) -> None:
        if len(self.bad_shards) > self.max_bad_shards:
            listing = "\n".join(f"  {shard}: {why}" for shard, why in self.bad_shards.items())
            raise DataDamageError(
                f"{len(self.bad_shards)} damaged shards, more than max_bad_shards="
                f"{self.max_bad_shards}; rebuild or remove them:\n{listing}"
            )
        if len(self.bad_samples) > self.max_bad_samples:
            listing = "\n".join(
                f"  {key} in {shard}: {why}" for (shard, key), why in list(self.bad_samples.items())[:20]
            )
            raise DataDamageError(
                f"{len(self.bad_samples)} damaged samples, more than max_bad_samples="
                f"{self.max_bad_samples}; the first ones:\n{listing}"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "bad_shards": dict(self.bad_shards),
            "bad_samples": [[shard, key, why] for (shard, key), why in self.bad_samples.items()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad_shards = dict(state["bad_shards"])
        self.bad_samples = {(shard, key): why for shard, key, why in state["bad_samples"]}
