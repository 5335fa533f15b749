"""Build WebDataset shards of (features, token ids, metadata) from a corpus scan.

``build_shards`` turns a :class:`CorpusScan` into ``out_dir`` holding
``shard-000000.tar ...``, ``tokenizer.json``, ``rejects.jsonl`` and, written last,
``manifest.json``; the format is described in ``shards/README.md``.

The order of work, and why:

1. plan (main process): records are de-duplicated, tokenised, sorted by id, shuffled
   with ``seed`` and cut into shards of ``samples_per_shard``. A shard's content then
   depends only on the record list, never on worker count or timing; shuffling mixes
   speakers and chapters so that each shard looks like the whole corpus.
2. extract and write (worker processes, one shard per task): see ``shard_writer``.
   Inputs rejected here (unreadable, too long, ...) leave their shard short; the
   manifest holds the true counts.
3. finish (main process): every input is now in a shard or in ``rejects.jsonl``; the
   manifest is written last, so a directory with a manifest is a complete build.

A build that stops part way resumes: shards whose sidecar matches the plan are kept,
the others are written again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import queue
import random
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ctal_ds.data import feature_encoding, shard_writer
from ctal_ds.data.feature_encoding import DEFAULT_ENCODING, ENCODINGS
from ctal_ds.data.features import BACKENDS, FeatureConfig
from ctal_ds.data.records import CorpusScan, Record, Rejection
from ctal_ds.data.shard_writer import ShardItem, ShardSummary, ShardTask, sample_key, sidecar_path
from ctal_ds.data.tokenizer import CTALTokenizer, TokenizerConfig

# Bump when the bytes a build writes change for the same inputs: old sidecars then no
# longer match and a resumed build rewrites their shards.
BUILDER_VERSION = "ctal-ds-shards/1"
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
TOKENIZER = "tokenizer.json"


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    # ~500 LibriSpeech utterances (12.3 s mean, ~1000 frames x 160 x fp16) make ~160 MB:
    # big enough for sequential reads, small enough that 960 h gives ~560 shards to
    # spread over ranks x loader workers.
    samples_per_shard: int = 500
    workers: int = 1  # extraction processes
    backend: str = "librosa"  # feature backend, see ctal_ds.data.features
    device: str | None = None  # torch backend only, e.g. "cuda"
    batch_size: int = 16  # utterances per feature batch (the torch backend pads them)
    shuffle: bool = True
    seed: int = 0
    max_tokens: int = 512  # longer transcripts are rejected: the text stream's positions
    # How samples store their features (ctal_ds.data.feature_encoding): the 160-dim
    # features, or the 80 log-mel dims from which the reader derives them.
    feature_encoding: str = DEFAULT_ENCODING

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected one of {BACKENDS}")
        if self.feature_encoding not in ENCODINGS:
            raise ValueError(f"unknown feature encoding {self.feature_encoding!r}; expected one of {ENCODINGS}")
        if self.samples_per_shard < 1 or self.workers < 1 or self.batch_size < 1:
            raise ValueError("samples_per_shard, workers and batch_size must be >= 1")


@dataclasses.dataclass
class BuildResult:
    out_dir: Path
    manifest: dict[str, Any]
    written: list[int]  # shard indices written by this call
    reused: list[int]  # shard indices kept from an earlier, interrupted or finished, build


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a finished build (raises OSError if the build did not finish)."""
    return json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))


def shard_paths(out_dir: str | os.PathLike) -> list[Path]:
    """The shard files of a finished build, in manifest order."""
    return [Path(out_dir) / s["name"] for s in read_manifest(out_dir)["shards"]]


# --------------------------------------------------------------------------- plan


def _source(audio: str, root: str) -> str:
    """Audio path relative to the corpus root, so metadata does not depend on where the
    corpus is mounted; absolute when the file lies outside the root."""
    base = Path(root) if Path(root).is_dir() else Path(root).parent
    try:
        return str(Path(audio).relative_to(base))
    except ValueError:
        return str(audio)


def plan_items(
    scan: CorpusScan, tokenizer: CTALTokenizer, config: ShardConfig
) -> tuple[list[ShardItem], list[Rejection]]:
    """The samples to write, in shard order, and the records refused before extraction."""
    rejected: list[Rejection] = []
    seen_ids: set[str] = set()
    unique: list[Record] = []
    for r in scan.records:
        if r.id in seen_ids:
            rejected.append(Rejection(r.audio, f"duplicate id: {r.id}", r.id))
        else:
            seen_ids.add(r.id)
            unique.append(r)
    unique.sort(key=lambda r: r.id)
    token_lists = tokenizer.encode_batch([r.text for r in unique])
    items: list[ShardItem] = []
    keys: dict[str, str] = {}
    for r, tokens in zip(unique, token_lists):
        key = sample_key(r.id)
        try:
            json.dumps(r.labels, allow_nan=False)
        except (TypeError, ValueError) as err:
            rejected.append(Rejection(r.audio, f"bad label: not JSON: {err}", r.id))
            continue
        if len(tokens) <= 2:
            rejected.append(Rejection(r.audio, "empty transcript: nothing left after normalisation", r.id))
        elif len(tokens) > config.max_tokens:
            rejected.append(
                Rejection(r.audio, f"too many tokens: {len(tokens)} > max_tokens {config.max_tokens}", r.id)
            )
        elif key in keys:
            rejected.append(Rejection(r.audio, f"duplicate key: {key} (also id {keys[key]})", r.id))
        else:
            keys[key] = r.id
            items.append(ShardItem(key, r, tuple(tokens), _source(r.audio, scan.root)))
    if config.shuffle:
        random.Random(config.seed).shuffle(items)
    return items, rejected


def split_holdout(scan: CorpusScan, fraction: float, seed: int = 0) -> tuple[CorpusScan, CorpusScan]:
    """(train, valid) scans: a record goes to valid when a hash of (seed, id) falls below
    ``fraction``, so the split is stable when records are added or reordered. The
    reader's rejections stay with train, so each input is still counted exactly once."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    train = CorpusScan(scan.corpus, scan.root, rejections=list(scan.rejections), warnings=list(scan.warnings))
    valid = CorpusScan(scan.corpus, scan.root)
    for r in scan.records:
        digest = hashlib.sha256(f"{seed}:{r.id}".encode()).digest()
        held_out = int.from_bytes(digest[:8], "big") / 2**64 < fraction
        (valid if held_out else train).records.append(r)
    return train, valid


def _fingerprint(items, features: FeatureConfig, config: ShardConfig) -> str:
    """Hash of everything that decides a shard's bytes."""
    payload = {
        "builder": BUILDER_VERSION,
        "features": features.to_dict(),
        "backend": config.backend,
        # Same device kind, same bytes; CPU and GPU FFTs differ in the last bits.
        "device": str(config.device or "cpu").split(":")[0],
        # Padding in a batch leaves the torch backend's valid frames alone, but batch shape
        # may change float rounding; librosa works one utterance at a time.
        "batch_size": config.batch_size if config.backend == "torch" else None,
        "items": [
            [i.key, i.record.audio, i.record.text, i.record.speaker, i.record.split,
             i.record.labels, i.source, list(i.tokens)]
            # A segment only where there is one: whole-file shards keep their fingerprint.
            + ([i.record.segment] if i.record.segment else [])
            for i in items
        ],
    }
    # Only when it is not the default: shards built before encodings existed keep their
    # fingerprint, so a resumed build of them keeps them.
    if config.feature_encoding != DEFAULT_ENCODING:
        payload["feature_encoding"] = config.feature_encoding
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def plan_tasks(
    items: list[ShardItem], out_dir: Path, features: FeatureConfig, config: ShardConfig
) -> list[ShardTask]:
    n = config.samples_per_shard
    tasks = []
    for index, start in enumerate(range(0, len(items), n)):
        chunk = tuple(items[start : start + n])
        tasks.append(
            ShardTask(
                index=index,
                out_dir=str(out_dir),
                items=chunk,
                features=features,
                backend=config.backend,
                device=config.device,
                batch_size=config.batch_size,
                fingerprint=_fingerprint(chunk, features, config),
                encoding=config.feature_encoding,
            )
        )
    return tasks


# --------------------------------------------------------------------------- resume


def _finished(task: ShardTask) -> ShardSummary | None:
    """The shard's summary if an earlier run completed exactly this task."""
    try:
        summary = ShardSummary.from_dict(json.loads(sidecar_path(task.out_dir, task.index).read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    tar = Path(task.out_dir) / summary.name
    if summary.fingerprint != task.fingerprint or not tar.is_file() or tar.stat().st_size != summary.bytes:
        return None
    return summary


def _clear_stale(out_dir: Path, n_shards: int) -> None:
    """Remove what could be mistaken for this build's output: the old manifest (the build
    is incomplete until the new one is written), partial files, and shards past the
    end of the plan (left by an earlier build of more shards)."""
    for name in (MANIFEST, REJECTS):
        (out_dir / name).unlink(missing_ok=True)
    for path in out_dir.glob("*.tmp"):
        path.unlink()
    for path in out_dir.glob("shard-*"):
        index = path.name[len("shard-") :].split(".")[0]
        if index.isdigit() and int(index) >= n_shards:
            path.unlink()


# --------------------------------------------------------------------------- run


@contextlib.contextmanager
def _single_threaded_children():
    """Workers are spawned with one BLAS/OpenMP thread: the build parallelises over
    processes, and a fixed thread count keeps float reductions, hence bytes, the same
    for any number of workers."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({k: "1" for k in names})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_tasks(tasks: list[ShardTask], workers: int, bar: tqdm) -> dict[int, ShardSummary]:
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch/tokenizers thread state
    progress = ctx.Queue()
    done: dict[int, ShardSummary] = {}

    def drain() -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                bar.update(progress.get_nowait())

    with _single_threaded_children(), concurrent.futures.ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=ctx,
        initializer=shard_writer.init_worker,
        initargs=(progress,),
    ) as pool:
        pending = {pool.submit(shard_writer.write_shard, t): t.index for t in tasks}
        try:
            while pending:
                finished, _ = concurrent.futures.wait(
                    pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
                )
                drain()
                for future in finished:
                    done[pending.pop(future)] = future.result()
        except BaseException:
            # Finished shards stay (a rerun keeps them); queued ones are not started.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    drain()
    return done


def _tokenizer_for(tokenizer, scan: CorpusScan) -> CTALTokenizer:
    if isinstance(tokenizer, CTALTokenizer):
        return tokenizer
    if tokenizer is None or isinstance(tokenizer, TokenizerConfig):
        tokenizer = tokenizer or TokenizerConfig()
        return CTALTokenizer.train(
            (r.text for r in scan.records), tokenizer.vocab_size, tokenizer.min_frequency
        )
    return CTALTokenizer.load(tokenizer)


def build_shards(
    scan: CorpusScan,
    out_dir: str | os.PathLike,
    tokenizer: CTALTokenizer | str | os.PathLike | TokenizerConfig | None = None,
    features: FeatureConfig | None = None,
    config: ShardConfig | None = None,
    provenance: dict[str, Any] | None = None,
    progress: bool = True,
) -> BuildResult:
    """Write (or finish writing) the shard set of ``scan`` in ``out_dir``.

    tokenizer: a trained tokenizer or its JSON file (so dev/test shards share the
        training set's ids), or a :class:`TokenizerConfig` (default: ``TokenizerConfig()``)
        to train one on the transcripts of ``scan``. Either way it is saved as
        ``out_dir/tokenizer.json``.
    features, config: default ``FeatureConfig()`` and ``ShardConfig()``.
    provenance: recorded in the manifest under ``corpus`` (e.g. the splits selected).
    """
    features = features or FeatureConfig()
    config = config or ShardConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer_for(tokenizer, scan)
    items, plan_rejections = plan_items(scan, tok, config)
    tasks = plan_tasks(items, out_dir, features, config)
    _clear_stale(out_dir, len(tasks))
    tok.save(out_dir / TOKENIZER)

    summaries = {t.index: s for t in tasks if (s := _finished(t)) is not None}
    todo = [t for t in tasks if t.index not in summaries]
    reused_samples = sum(len(t.items) for t in tasks if t.index in summaries)
    with tqdm(
        total=len(items), initial=reused_samples, unit="utt", desc=f"shards {out_dir.name}",
        disable=not progress, dynamic_ncols=True,
    ) as bar:
        if todo:
            summaries.update(_run_tasks(todo, config.workers, bar))

    ordered = [summaries[t.index] for t in tasks]
    rejections = list(scan.rejections) + plan_rejections + [r for s in ordered for r in s.rejections]
    manifest = _manifest(scan, tok, features, config, ordered, rejections, provenance)
    shard_writer.write_text_atomic(
        out_dir / REJECTS,
        "".join(json.dumps(r.to_dict(), sort_keys=True, ensure_ascii=False) + "\n" for r in rejections),
    )
    shard_writer.write_json_atomic(out_dir / MANIFEST, manifest)
    return BuildResult(
        out_dir=out_dir,
        manifest=manifest,
        written=sorted(t.index for t in todo),
        reused=sorted(set(summaries) - {t.index for t in todo}),
    )


def _manifest(scan, tok, features, config, summaries, rejections, provenance) -> dict[str, Any]:
    samples = sum(s.samples for s in summaries)
    if samples + len(rejections) != scan.inputs:
        raise RuntimeError(
            f"accounting error: {samples} samples + {len(rejections)} rejections != {scan.inputs} inputs"
        )
    return {
        "builder_version": BUILDER_VERSION,
        **feature_encoding.manifest_fields(config.feature_encoding),
        "corpus": {"name": scan.corpus, "root": scan.root, **(provenance or {})},
        "features": features.to_dict(),
        # Worker count is left out: it does not change a byte of the output; the
        # encoding is the manifest's own field.
        "shard_config": {
            k: v for k, v in dataclasses.asdict(config).items() if k not in ("workers", "feature_encoding")
        },
        "tokenizer": {"file": TOKENIZER, "vocab_size": tok.vocab_size, "sha256": tok.sha256()},
        "shards": [
            {k: v for k, v in s.to_dict().items() if k not in ("rejections", "fingerprint")}
            for s in summaries
        ],
        "totals": {
            "inputs": scan.inputs,
            "samples": samples,
            "frames": sum(s.frames for s in summaries),
            "hours": sum(s.seconds for s in summaries) / 3600,
            "rejected": len(rejections),
            "rejected_by_reason": dict(sorted(Counter(r.reason.split(":")[0] for r in rejections).items())),
            "shards": len(summaries),
        },
        "rejects": REJECTS,
    }
