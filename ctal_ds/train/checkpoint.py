"""Resumable checkpoints: DeepSpeed's ZeRO files plus what the engine does not keep.

One tag directory per save, `<root>/global_step<N>/`:

    mp_rank_00_model_states.pt, *_optim_states.pt   DeepSpeed (every rank writes its part)
    rank_state_<r>.pt      this rank's loader position and RNG states (they differ per rank)
    tokenizer.json, model_config.json, feature_config.json, run_config.json, ds_config.json
    complete.json          written last, by rank 0, after a barrier that follows every save

Every file is fsynced, then the directory, before `complete.json` is written; the
marker and the directory are fsynced after it, so a marker never survives a crash
that lost the data it lists. A tag without `complete.json` was interrupted mid-write
and is never resumed from. The marker lists every file's size and sha256, among them
the rank state of every rank that saved (no marker is written without them all): a
tag is verified against it before it is resumed from or exported (`verify_tag`), and
`--resume auto` falls back to the newest older tag that verifies. A rank state missing
at load is an error, not a fresh loader and RNG for that rank.

`<root>/latest` names the newest complete tag, for DeepSpeed's own tools
(`zero_to_fp32.py`, `ds_to_universal`); DeepSpeed's writer of that file is turned off
because it runs before our marker.

Rank states hold tensors, ints, floats, strings, lists and dicts only, and load with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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


# Exit status of the launch scripts when a checkpoint could not be written.
CHECKPOINT_FAILED = 5


class CheckpointError(RuntimeError):
    """A checkpoint whose files do not match its marker's manifest: it must not be loaded."""


def verify_tag(tag_dir: Path, check_hash: bool = True) -> list[str]:
    """How the files of a complete tag differ from its marker's manifest; [] if they match.

    Every listed file must exist with the listed size; with `check_hash` its sha256
    must match too. Hashes are only computed when every size matched. The manifest must
    list the rank state of every rank the checkpoint was written by.
    """
    tag_dir = Path(tag_dir)
    try:
        marker = json.loads((tag_dir / MARKER).read_text())
        listed, world_size = marker["files"], int(marker["world_size"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{MARKER}: unreadable ({type(err).__name__}: {err})"]
    problems = [
        f"{name}: not listed in {MARKER} (the checkpoint was written by {world_size} ranks)"
        for name in missing_rank_states(listed, world_size)
    ]
    for name, entry in sorted(listed.items()):
        path = tag_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry["bytes"]:
            problems.append(f"{name}: size {path.stat().st_size} bytes, {MARKER} lists {entry['bytes']}")
    if problems or not check_hash:
        return problems
    for name, entry in sorted(listed.items()):
        digest = _sha256(tag_dir / name)
        if digest != entry["sha256"]:
            problems.append(f"{name}: sha256 {digest[:16]}..., {MARKER} lists {entry['sha256'][:16]}...")
    return problems


def missing_rank_states(names: Any, world_size: int) -> list[str]:
    """The `rank_state_<r>.pt` of ranks 0 .. world_size-1 that are not among `names`."""
    return [rank_state_file(r) for r in range(world_size) if rank_state_file(r) not in names]


def require_verified(tag_dir: Path, check_hash: bool = True, what: str = "") -> None:
    """Raise CheckpointError naming every file of `tag_dir` that does not match its manifest."""
    problems = verify_tag(tag_dir, check_hash)
    if problems:
        raise CheckpointError(f"{what}{tag_dir} failed verification: {'; '.join(problems)}")


@dataclass
class Rejected:
    """A complete tag skipped on resume, and how its files differ from its manifest."""

    tag_dir: Path
    problems: list[str]

    def describe(self) -> str:
        return f"{self.tag_dir.name}: {'; '.join(self.problems)}"


@dataclass
class ResumeChoice:
    """The tag to resume from (None: a fresh run) and the newer complete tags that failed."""

    tag_dir: Path | None
    rejected: list[Rejected] = field(default_factory=list)

    def tracking_tags(self) -> dict[str, str]:
        """MLflow tags: `resume_fallback` names the rejected tags, `.problems` says why."""
        if not self.rejected:
            return {}
        return {
            "resume_fallback": ",".join(r.tag_dir.name for r in self.rejected),
            "resume_fallback.problems": " | ".join(r.describe() for r in self.rejected)[:5000],
        }


def newest_verified(root: Path, check_hash: bool = True, what: str = "") -> ResumeChoice:
    """The newest complete tag under root that verifies, with the newer ones that did not.

    No complete tag: `ResumeChoice(None)`. Complete tags of which none verifies:
    CheckpointError, since starting afresh beside them would mix two runs' tags.
    Each rejected tag is reported on stderr as it is skipped.
    """
    rejected = []
    complete = [path for _, path in list_tags(root) if is_complete(path)]
    for tag_dir in reversed(complete):
        problems = verify_tag(tag_dir, check_hash)
        if not problems:
            return ResumeChoice(tag_dir, rejected)
        rejected.append(Rejected(tag_dir, problems))
        print(f"[ctal-ds] WARNING: checkpoint {tag_dir} failed verification and is skipped: "
              f"{'; '.join(problems)}", file=sys.stderr, flush=True)  # fmt: skip
    if not complete:
        return ResumeChoice(None)
    listing = "\n".join(f"  {r.describe()}" for r in rejected)
    raise CheckpointError(
        f"{what}no checkpoint under {root} passes verification:\n{listing}\n"
        f"Not starting afresh beside them: move them out of {root} to start afresh, or "
        "--resume a copy that verifies"
    )


def resume_spec_problem(spec: str, flag: str = "--resume") -> str | None:
    """Why `spec` cannot name a checkpoint, judged from the directory layout alone (no
    file is read or hashed); None for `auto`, `none` and a path `choose_resume` can use.

    The launch scripts check this before any process group starts; verification of the
    files stays with `choose_resume`.
    """
    if spec in ("auto", "none"):
        return None
    path = Path(spec)
    what = f"{flag} {spec}: "
    expected = (f"give a checkpoint tag directory (global_step<N>/ with {MARKER}), a checkpoints root "
                "holding such tags, auto or none")  # fmt: skip
    if not path.exists():
        return f"{what}no such file or directory; {expected}"
    if not path.is_dir():
        return f"{what}not a directory; {expected}"
    if TAG_RE.match(path.name):
        if not is_complete(path):
            return f"{what}not a complete checkpoint (no {MARKER}); it may have been interrupted while being written"
        return None
    if latest_complete(path) is None:
        if is_complete(path):
            return f"{what}holds {MARKER}, but a checkpoint tag directory is named global_step<N>"
        return f"{what}not a checkpoint: no complete global_step<N>/ tag under it; {expected}"
    return None


def choose_resume(spec: str, root: Path, check_hash: bool = True, what: str | None = None) -> ResumeChoice:
    """`auto`: newest complete tag under root that verifies (None on a fresh run); `none`;
    a checkpoints root (its newest tag that verifies); or a tag dir, which must verify.

    `what` starts every error message (default: `--resume SPEC: `).
    """
    if spec == "none":
        return ResumeChoice(None)
    what = f"--resume {spec}: " if what is None else what
    if spec == "auto":
        return newest_verified(root, check_hash, what)
    path = Path(spec)
    if path.is_dir() and not TAG_RE.match(path.name):
        # A checkpoint root was given: take its newest complete tag that verifies.
        choice = newest_verified(path, check_hash, what)
        if choice.tag_dir is None:
            raise FileNotFoundError(f"{what}no complete checkpoint under it")
        return choice
    if not is_complete(path):
        raise FileNotFoundError(
            f"{what}not a complete checkpoint (no {MARKER}); it may have been "
            "interrupted while being written"
        )
    problems = verify_tag(path, check_hash)
    if problems:
        raise CheckpointError(
            f"{what}failed verification: {'; '.join(problems)}. A named tag is not replaced by "
            "another: name one that verifies, or give its checkpoints root to take the newest "
            "tag there that verifies"
        )
    return ResumeChoice(path)


def resolve_resume(spec: str, root: Path, check_hash: bool = True, what: str | None = None) -> Path | None:
    """The tag directory `choose_resume` picks."""
    return choose_resume(spec, root, check_hash, what).tag_dir


def agree_on_resume(spec: str, root: Path, check_hash: bool = True) -> ResumeChoice:
    """`choose_resume` run by rank 0, its answer (or its error) on every rank.

    Every rank must load the same tag, and one reader of the files is enough; without a
    process group (or with one rank) this is `choose_resume` itself.
    """
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return choose_resume(spec, root, check_hash)
    box: list[Any] = [None]
    error: Exception | None = None
    if tdist.get_rank() == 0:
        try:
            box[0] = choose_resume(spec, root, check_hash)
        except Exception as err:
            error = err
            kind = type(err) if isinstance(err, (FileNotFoundError, CheckpointError)) else RuntimeError
            box[0] = (kind, f"rank 0: {type(err).__name__}: {err}")
    tdist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if isinstance(box[0], tuple):
        kind, message = box[0]
        raise kind(message)
    return box[0]


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) RNG states as tensors and plain values."""
    version, internal, gauss_next = random.getstate()
    algorithm, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"algorithm": str(algorithm), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned, or the tuples that rank states held before."""
    py, npy = state["python"], state["numpy"]
    if isinstance(py, dict):
        py = (py["version"], tuple(py["internal"].tolist()), py["gauss_next"])
    if isinstance(npy, dict):
        key = npy["key"].numpy().astype(np.uint32)
        npy = (npy["algorithm"], key, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Rank states written before RNG states were stored as tensors hold one numpy array,
# the uint32 key of numpy's RNG. Its reconstruction and dtype are the only globals
# besides torch's such a file needs; allowing them keeps it on weights_only loading.
# The reconstruction function is named under numpy 1's and numpy 2's module.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_LEGACY_RANK_STATE_GLOBALS = [
    (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
    (_RECONSTRUCT, "numpy._core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]


def load_rank_state(path: Path) -> dict[str, Any]:
    """A rank state file, loaded with `weights_only=True` (numpy arrays allowed)."""
    with torch.serialization.safe_globals(_LEGACY_RANK_STATE_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def fsync_path(path: Path) -> None:
    """fsync one file or directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(tag_dir: Path) -> None:
    """fsync every file under tag_dir, whichever process wrote it."""
    for path in sorted(Path(tag_dir).rglob("*")):
        if path.is_file():
            fsync_path(path)


def fsync_dirs(tag_dir: Path) -> None:
    """fsync tag_dir's subdirectories, deepest first, then tag_dir."""
    subdirs = [p for p in Path(tag_dir).rglob("*") if p.is_dir()]
    for path in sorted(subdirs, key=lambda p: len(p.parts), reverse=True):
        fsync_path(path)
    fsync_path(tag_dir)


def write_durably(path: Path, text: str) -> None:
    """Write a text file whole or not at all: a temporary file, fsynced, renamed into
    place (atomic on POSIX), then the directory fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_path(path.parent)


def write_marker(tag_dir: Path, marker: dict[str, Any]) -> None:
    """fsync the tag's directories, then write `complete.json` durably; the files must
    have been fsynced already (`fsync_files`)."""
    fsync_dirs(tag_dir)
    write_durably(tag_dir / MARKER, json.dumps(marker, indent=2) + "\n")


def write_failure(root: Path, tag_dir: Path, rank: int, what: str, err: BaseException) -> str:
    """The message of a save that failed: what failed, the free space and file size limit
    of the checkpoints folder, and the newest complete tag, which a resume uses."""
    detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
    space = []
    try:
        space.append(f"{shutil.disk_usage(root).free / 2**20:.1f} MiB free on its file system")
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        space.append(f"file size limit (RLIMIT_FSIZE) {soft} bytes")
    previous = [path for _, path in list_tags(root) if is_complete(path) and path != tag_dir]
    kept = f"the newest complete checkpoint, {previous[-1]}, is kept" if previous else "no complete checkpoint exists yet"
    return (
        f"could not save checkpoint {tag_dir} (rank {rank}, {what}): {type(err).__name__}: {detail}"
        f"{' (' + '; '.join(space) + ')' if space else ''}. The tag is left without {MARKER} and is never "
        f"resumed from; {kept}, and --resume auto continues from it once there is space"
    )


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
    job it is `torch.distributed.barrier`. `resumed_from` is the tag this job loaded,
    verified when it was chosen: `prune` keeps it whatever `keep_last` says.
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
        self.resumed_from: Path | None = None

    def save(self, engine: Any, step: int, client_state: dict[str, Any], rank_state: dict[str, Any]) -> Path:
        tag = tag_for(step)
        tag_dir = self.root / tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists():
                # Left over from an interrupted save of this step, or a complete tag that
                # failed verification and was skipped on resume; stale shards must not mix in.
                shutil.rmtree(tag_dir)
        self.barrier()
        with self._writing(tag_dir, "writing its files"):
            engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
            torch.save({**rank_state, "rng": rng_state()}, tag_dir / rank_state_file(self.rank))
            if self.rank == 0:
                for name, src in self.side_files.items():
                    shutil.copyfile(src, tag_dir / name)
                for name, value in self.side_json.items():
                    (tag_dir / name).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
        self.barrier()
        # Every rank, after every rank has written: on a shared file system the files of
        # a rank on another node may be flushed only by an fsync from that node.
        with self._writing(tag_dir, "fsyncing its files"):
            fsync_files(tag_dir)
        self.barrier()
        if self.rank == 0:
            with self._writing(tag_dir, f"writing {MARKER}"):
                self._mark_complete(tag_dir, step)
            self.prune()
        self.barrier()
        return tag_dir

    @contextmanager
    def _writing(self, tag_dir: Path, what: str) -> Iterator[None]:
        """Turn a failed write (a full disk, a file size limit, an I/O error) into a
        CheckpointError that names the tag, the rank, the space left and the checkpoint
        a resume would use; torch's own message for a short write names no file."""
        try:
            yield
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(write_failure(self.root, tag_dir, self.rank, what, err)) from err

    def _mark_complete(self, tag_dir: Path, step: int) -> None:
        files = file_manifest(tag_dir)
        missing = missing_rank_states(files, self.world_size)
        if missing:
            # Without the marker the tag stays incomplete: it is never resumed from, and
            # pruning, which runs after a marker only, keeps the older tags.
            raise CheckpointError(
                f"{tag_dir}: {', '.join(missing)} not found after every rank saved; the tag is "
                f"left without {MARKER}"
            )
        marker = {
            "tag": tag_dir.name,
            "step": step,
            "world_size": self.world_size,
            "time": time.time(),
            "files": files,
        }
        write_marker(tag_dir, marker)
        write_durably(self.root / "latest", tag_dir.name)

    def prune(self) -> None:
        """Keep the newest `keep_last` complete tags and `resumed_from`; drop incomplete
        tags older than the kept ones."""
        tags = list_tags(self.root)
        complete = [path for _, path in tags if is_complete(path)]
        newest = complete[-self.keep_last :]
        newest_kept = min((int(TAG_RE.match(p.name).group(1)) for p in newest), default=None)
        keep = {p.resolve() for p in newest}
        if self.resumed_from is not None:
            keep.add(self.resumed_from.resolve())
        for step, path in tags:
            stale_incomplete = not is_complete(path) and newest_kept is not None and step < newest_kept
            if (is_complete(path) and path.resolve() not in keep) or stale_incomplete:
                shutil.rmtree(path, ignore_errors=True)

    def load(self, engine: Any, tag_dir: Path, load_optimizer: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the engine; return (client state, this rank's state).

        `tag_dir` is one `choose_resume` picked (and so verified). On the world size
        that wrote it, everything is restored exactly. A universal checkpoint
        (`launch/export.py --universal`) also loads on another world size: weights,
        optimizer and schedule are exact, but the per-rank loader positions and RNG
        streams have no counterpart, so the returned rank state is marked `elastic`
        and the RNG keeps this job's seeds.

        The rank state of this rank must be there if the checkpoint's world size
        includes this rank (CheckpointError otherwise): without it the loader would
        start at its first batch and the RNG streams from the seed. Only ranks beyond
        that world size, on an elastic resume, start without one.
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
        path = tag_dir / rank_state_file(self.rank)
        if self.rank < marker["world_size"]:
            if not path.is_file():
                raise CheckpointError(
                    f"{path}: missing; {tag_dir} was written by {marker['world_size']} ranks and must hold "
                    "the rank state (loader position, RNG states) of each. Resume from another checkpoint"
                )
            rank_state = load_rank_state(path)
        else:
            rank_state = {}
        load_path, client_state = engine.load_checkpoint(
            str(tag_dir.parent),
            tag=tag_dir.name,
            load_optimizer_states=load_optimizer,
            load_lr_scheduler_states=load_optimizer,
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load {tag_dir}")
        self.resumed_from = Path(tag_dir)
        rng = rank_state.pop("rng", None)
        if elastic:
            rank_state["elastic"] = True
        elif rng is not None:
            set_rng_state(rng)
        return client_state or {}, rank_state
