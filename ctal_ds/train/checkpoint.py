"""Resumable checkpoints: DeepSpeed's ZeRO files plus what the engine does not keep.

One tag directory per save, `<root>/global_step<N>/`:

    mp_rank_00_model_states.pt, *_optim_states.pt   DeepSpeed (every rank writes its part)
    rank_state_<r>.pt      this rank's loader position and RNG states (they differ per rank)
    tokenizer.json, model_config.json, feature_config.json, run_config.json, ds_config.json
    complete.json          written last, by rank 0, after a barrier that follows every save

A tag without `complete.json` was interrupted mid-write and is never resumed from.
`<root>/latest` names the newest complete tag, for DeepSpeed's own tools
(`zero_to_fp32.py`, `ds_to_universal`); DeepSpeed's writer of that file is turned off
because it runs before our marker.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

MARKER = "complete.json"
TAG_RE = re.compile(r"^global_step(\d+)$")


def tag_for(step: int) -> str:
    return f"global_step{step}"


def rank_state_file(rank: int) -> str:
    return f"rank_state_{rank}.pt"


def is_complete(tag_dir: Path) -> bool:
    return (tag_dir / MARKER).is_file()


def is_universal(tag_dir: Path) -> bool:
    return bool(json.loads((tag_dir / MARKER).read_text()).get("universal"))


def list_tags(root: Path) -> list[tuple[int, Path]]:
    """Tag directories under root, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = TAG_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_complete(root: Path) -> Path | None:
    complete = [path for _, path in list_tags(root) if is_complete(path)]
    return complete[-1] if complete else None


def resolve_resume(spec: str, root: Path) -> Path | None:
    """`auto`: newest complete tag under root (None on a fresh run); `none`; or a tag dir."""
    if spec == "none":
        return None
    if spec == "auto":
        return latest_complete(root)
    path = Path(spec)
    if path.is_dir() and not TAG_RE.match(path.name):
        # A checkpoint root was given: take its newest complete tag.
        newest = latest_complete(path)
        if newest is None:
            raise FileNotFoundError(f"--resume {spec}: no complete checkpoint under it")
        return newest
    if not is_complete(path):
        raise FileNotFoundError(
            f"--resume {spec}: not a complete checkpoint (no {MARKER}); it may have been "
            "interrupted while being written"
        )
    return path


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(tag_dir: Path) -> dict[str, dict[str, Any]]:
    return {
        str(p.relative_to(tag_dir)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(tag_dir.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


class Checkpointer:
    """Saves and restores the engine, the per-rank state and the run's side files.

    `barrier` is injected so the logic can be driven by one process in tests; in a
    job it is `torch.distributed.barrier`.
    """

    def __init__(
        self,
        root: Path,
        rank: int,
        world_size: int,
        keep_last: int,
        barrier: Callable[[], None],
        side_files: dict[str, Path] | None = None,
        side_json: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.rank = rank
        self.world_size = world_size
        self.keep_last = keep_last
        self.barrier = barrier
        self.side_files = side_files or {}
        self.side_json = side_json or {}

    def save(self, engine: Any, step: int, client_state: dict[str, Any], rank_state: dict[str, Any]) -> Path:
        tag = tag_for(step)
        tag_dir = self.root / tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists():
                # Left over from an interrupted save of this step (a complete one is never
                # re-saved: a resumed run starts after it); stale shards must not mix in.
                shutil.rmtree(tag_dir)
        self.barrier()
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
        torch.save({**rank_state, "rng": rng_state()}, tag_dir / rank_state_file(self.rank))
        if self.rank == 0:
            for name, src in self.side_files.items():
                shutil.copyfile(src, tag_dir / name)
            for name, value in self.side_json.items():
                (tag_dir / name).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
        self.barrier()
        if self.rank == 0:
            self._mark_complete(tag_dir, step)
            self.prune()
        self.barrier()
        return tag_dir

    def _mark_complete(self, tag_dir: Path, step: int) -> None:
        marker = {
            "tag": tag_dir.name,
            "step": step,
            "world_size": self.world_size,
            "time": time.time(),
            "files": file_manifest(tag_dir),
        }
        tmp = tag_dir / (MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=2) + "\n")
        # rename is atomic on POSIX: the marker is either absent or whole.
        tmp.replace(tag_dir / MARKER)
        latest_tmp = self.root / "latest.tmp"
        latest_tmp.write_text(tag_dir.name)
        latest_tmp.replace(self.root / "latest")

    def prune(self) -> None:
        """Keep the newest `keep_last` complete tags; drop incomplete ones older than them."""
        tags = list_tags(self.root)
        complete = [path for _, path in tags if is_complete(path)]
        keep = set(complete[-self.keep_last :])
        newest_kept = min((int(TAG_RE.match(p.name).group(1)) for p in keep), default=None)
        for step, path in tags:
            stale_incomplete = not is_complete(path) and newest_kept is not None and step < newest_kept
            if (is_complete(path) and path not in keep) or stale_incomplete:
                shutil.rmtree(path, ignore_errors=True)

    def load(self, engine: Any, tag_dir: Path, load_optimizer: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the engine; return (client state, this rank's state).

        On the world size that wrote it, everything is restored exactly. A universal
        checkpoint (`launch/export.py --universal`) also loads on another world size:
        weights, optimizer and schedule are exact, but the per-rank loader positions
        and RNG streams have no counterpart, so the returned rank state is marked
        `elastic` and the RNG keeps this job's seeds.
        """
        marker = json.loads((tag_dir / MARKER).read_text())
        elastic = marker["world_size"] != self.world_size
        if elastic and not marker.get("universal"):
            raise RuntimeError(
                f"{tag_dir} was written by {marker['world_size']} ranks, this job has "
                f"{self.world_size}. Convert it first (launch/export.py CHECKPOINT --universal DIR, "
                "then --resume DIR), or export the weights and start with --init-from, or run "
                "on the same world size"
            )
        load_path, client_state = engine.load_checkpoint(
            str(tag_dir.parent),
            tag=tag_dir.name,
            load_optimizer_states=load_optimizer,
            load_lr_scheduler_states=load_optimizer,
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load {tag_dir}")
        # Written by this class (RNG states hold numpy arrays and tuples, which
        # weights_only loading refuses).
        path = tag_dir / rank_state_file(self.rank)
        rank_state = torch.load(path, weights_only=False) if path.is_file() else {}
        rng = rank_state.pop("rng", None)
        if elastic:
            rank_state["elastic"] = True
        elif rng is not None:
            set_rng_state(rng)
        return client_state or {}, rank_state
