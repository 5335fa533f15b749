"""Streaming-loader speed with MLM/MCAM masking, and padding with and without bucketing.

    python benchmarks/loader.py                      # ~2000 utterances, 2 workers
    python benchmarks/loader.py --samples 4000 --workers 4
    python benchmarks/loader.py --profile            # + the cost of each stage of a worker
    python benchmarks/loader.py --per-core-only --encodings uint8-logmel

Writes synthetic shards in the contract's format (docs/contracts.md) to a temporary
directory: utterance lengths drawn log-normally around 7.5 s (600 frames at the
12.5 ms hop, clipped to 1-20 s), about 3.5 BPE tokens per second. Then, each on a
fresh loader over the same shards:

  bucketed      one epoch of the training stream (build_pretrain_loader) with masking,
                frame budget and bucketing as configured
  unbucketed    the same with bucketing off: batches cut in stream order under the
                same budget
  collate only  PretrainCollator alone in this process on the bucketed batches:
                what masking + padding cost per batch, without reading
  fast-forward  reading + header checks alone, what a resumed worker does for each
                batch it skips (shards are in the page cache here: real disks are slower)
  resume        a loader restored at 3/4 of an epoch: time to its first batch

batches/s and frames/s count real frames of one rank; padding is the share of padded
positions in audio_feats (and input_ids) over the epoch.

Then, per feature encoding (--encodings; the same utterances stored each way):

  per worker core  frames/s of one training-stream worker on one core, after --warmup
                   seconds, in 3 windows of --seconds each (min / median / max), with the
                   load average beside each window: the machine may be shared. "worker":
                   one DataLoader worker pinned to one core (os.sched_setaffinity), the
                   batches received by this process on another core; "main": the stream
                   in this process (num_workers=0) pinned to one core, one torch thread.
  H100 demand      frames/s one H100 consumes at 45 % MFU (989 TFLOP/s dense bf16 peak)
                   training the base model on these batches: 0.45 x peak / training
                   FLOPs per real frame (ctal_ds.model.flops, MLM and MCAM heads on the
                   masked positions), and the worker cores that takes at the rate above
  KB/audio s       shard bytes (tar files) per second of audio
  --profile        a worker's stages timed one after the other in this process, one
                   torch thread: CPU microseconds per real frame and share of the total
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from ctal_ds.data import feature_encoding
from ctal_ds.data.collate import PretrainCollator
from ctal_ds.data.feature_encoding import DEFAULT_ENCODING, ENCODINGS, FLOAT16_160
from ctal_ds.data.features import FeatureConfig
from ctal_ds.data.loader import BatchConfig, LoaderConfig, build_pretrain_loader
from ctal_ds.data.masking import MASK_ID, PAD_ID
from ctal_ds.data.shard_reader import decode_sample, inspect_sample, read_shard
from ctal_ds.model.config import CTALConfig
from ctal_ds.model.flops import training_flops

FRAMES_PER_SECOND = 80  # 12.5 ms hop
VOCAB = 30000
H100_PEAK_FLOPS = 989e12  # dense bf16
MFU = 0.45
COMPACT_ENCODING = "uint8-logmel"


def synthetic_logmel(frames: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [T, 80] with the level and spread of speech log-mel: bands between the
    floor (-23) and ~0, varying slowly over time."""
    level = rng.uniform(-14.0, -4.0, 80).astype(np.float32)
    steps = rng.standard_normal((frames, 80), dtype=np.float32)
    return level + 0.3 * np.cumsum(steps, axis=0) / np.sqrt(np.arange(1, frames + 1, dtype=np.float32))[:, None] \
        + 0.5 * rng.standard_normal((frames, 80), dtype=np.float32)


def write_synthetic_shards(out: Path, samples: int, shards: int, seed: int, encoding: str = DEFAULT_ENCODING) -> int:
    """Shards plus manifest.json; returns the total number of frames. The utterance
    lengths and tokens depend on ``seed`` only, so every encoding holds the same ones."""
    rng = np.random.default_rng(seed)
    feat_rng, token_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    seconds = np.clip(rng.lognormal(np.log(7.5), 0.5, samples), 1.0, 20.0)
    frames = (seconds * FRAMES_PER_SECOND).astype(int)
    entries = []
    for s, chunk in enumerate(np.array_split(np.arange(samples), shards)):
        path = out / f"shard-{s:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for i in chunk:
                t = int(frames[i])
                n_tokens = max(1, int(seconds[i] * 3.5))
                if encoding == FLOAT16_160:
                    feats = {"feats.npy": feat_rng.standard_normal((t, 160), dtype=np.float32).astype(np.float16)}
                else:
                    feats = feature_encoding.encode(synthetic_logmel(t, feat_rng), encoding)
                tokens = np.concatenate([[0], token_rng.integers(5, VOCAB, n_tokens), [2]]).astype(np.int32)
                writer.write({
                    "__key__": f"utt{i:06d}",
                    **feats,
                    "tokens.npy": tokens,
                    "json": {"id": f"utt{i:06d}", "n_frames": t, "labels": {}},
                })
        entries.append({"name": path.name, "samples": len(chunk), "frames": int(frames[chunk].sum())})
    manifest = {
        **feature_encoding.manifest_fields(encoding), "features": FeatureConfig().to_dict(),
        "shards": entries, "totals": {"samples": samples},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return int(frames.sum())


def run_epoch(shards: Path, config: LoaderConfig, collator: PretrainCollator) -> dict:
    """One epoch of every worker of a single-rank training stream."""
    loader = build_pretrain_loader(shards, config, collator)
    start = time.perf_counter()
    first = None
    batches, frames, audio_slots, tokens, text_slots = 0, 0, 0, 0, 0
    kept = []
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
        batches += 1
        frames += int(batch["audio_mask"].sum())
        audio_slots += batch["audio_mask"].numel()
        tokens += int(batch["text_mask"].sum())
        text_slots += batch["text_mask"].numel()
        kept.append(batch["keys"])
        if loader.epoch >= 1:
            break
    elapsed = time.perf_counter() - start
    loader.close()
    return {
        "batches": batches, "seconds": elapsed, "first_batch_s": first,
        "batches_per_s": batches / elapsed, "frames_per_s": frames / elapsed,
        "audio_padding": 1 - frames / audio_slots, "text_padding": 1 - tokens / text_slots,
        "mean_batch": sum(len(k) for k in kept) / batches, "keys": kept,
    }


def time_collation(shards: Path, key_batches: list[list[str]], collator: PretrainCollator) -> float:
    """Seconds per batch for masking + padding alone, on the given batches."""
    samples = {}
    for url in sorted(str(p) for p in shards.glob("shard-*.tar")):
        for raw in read_shard(url, []):
            samples[raw.key] = decode_sample(raw)
    start = time.perf_counter()
    for keys in key_batches:
        collator([samples[k] for k in keys], 0)
    return (time.perf_counter() - start) / len(key_batches)


def fast_forward_rate(shards: Path) -> tuple[float, float]:
    """Utterances/s and MiB/s of what a resuming worker does for each consumed sample."""
    paths = sorted(shards.glob("shard-*.tar"))
    start = time.perf_counter()
    count = 0
    for path in paths:
        for raw in read_shard(str(path), []):
            inspect_sample(raw, 160)
            count += 1
    elapsed = time.perf_counter() - start
    return count / elapsed, sum(p.stat().st_size for p in paths) / 2**20 / elapsed


def time_resume(shards: Path, config: LoaderConfig, collator: PretrainCollator, consumed: int) -> tuple[float, float]:
    """(seconds to the first batch of a fresh loader, of one resumed after ``consumed`` batches)."""
    loader = build_pretrain_loader(shards, config, collator)
    iterator = iter(loader)
    start = time.perf_counter()
    next(iterator)
    fresh = time.perf_counter() - start
    for _ in range(consumed - 1):
        next(iterator)
    state = loader.state_dict()
    loader.close()
    resumed = build_pretrain_loader(shards, config, collator)
    resumed.load_state_dict(state)
    start = time.perf_counter()
    next(iter(resumed))
    elapsed = time.perf_counter() - start
    resumed.close()
    return fresh, elapsed


# --------------------------------------------------------------------------- per worker core


def _pin_to(core: int):
    def pin(worker_id: int) -> None:
        os.sched_setaffinity(0, {core})
        torch.set_num_threads(1)

    return pin


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` (None: this process)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_core_rate(
    shards: Path, config: LoaderConfig, collator: PretrainCollator, mode: str, warmup: float, seconds: float
) -> list[tuple[float, float, float]]:
    """(frames per wall second, frames per CPU second of the worker, 1-minute load average)
    of 3 windows of one training-stream worker on one core. On a shared core the wall
    rate drops with the load; the CPU-time rate is what the worker's core delivers for
    the time it gets."""
    cores = sorted(os.sched_getaffinity(0))
    saved = torch.get_num_threads()
    stream = build_pretrain_loader(shards, config, collator).dataset()
    pid = None
    if mode == "main":
        os.sched_setaffinity(0, {cores[-1]})
        torch.set_num_threads(1)
        batches = (item.batch for item in stream)
    else:
        os.sched_setaffinity(0, {cores[0]})
        data = torch.utils.data.DataLoader(
            stream, batch_size=None, collate_fn=_passthrough, num_workers=1, prefetch_factor=4,
            worker_init_fn=_pin_to(cores[-1]),
        )
        iterator = iter(data)
        pid = iterator._workers[0].pid
        batches = (item.batch for item in iterator)
    try:
        end = time.perf_counter() + warmup
        while time.perf_counter() < end:
            next(batches)
        windows = []
        for _ in range(3):
            frames, start, cpu = 0, time.perf_counter(), _cpu_seconds(pid)
            while time.perf_counter() - start < seconds:
                frames += int(next(batches)["audio_mask"].sum())
            wall, cpu = time.perf_counter() - start, _cpu_seconds(pid) - cpu
            windows.append((frames / wall, frames / cpu, os.getloadavg()[0]))
    finally:
        batches.close()
        os.sched_setaffinity(0, set(cores))
        torch.set_num_threads(saved)
    return windows


def _passthrough(item):
    return item


def h100_demand(shards: Path, config: LoaderConfig, collator: PretrainCollator, batches: int = 64) -> tuple[float, float]:
    """(training FLOPs per real frame of the base model, frames/s of one H100 at MFU)
    over the first ``batches`` batches of the training stream."""
    model = CTALConfig.preset("base")
    flops = frames = 0
    for i, item in enumerate(build_pretrain_loader(shards, config, collator).dataset()):
        b = item.batch
        audio = b["audio_mask"].sum(1).tolist()
        flops += training_flops(
            model, b["text_mask"].sum(1).tolist(), audio,
            mlm_tokens=int((b["mlm_labels"] != -100).sum()), mcam_frames=int(b["mcam_mask"].sum()),
        )
        frames += sum(audio)
        if i + 1 == batches:
            break
    per_frame = flops / frames
    return per_frame, MFU * H100_PEAK_FLOPS / per_frame


# --------------------------------------------------------------------------- profile


def profile_stages(shards: Path, config: LoaderConfig, collator: PretrainCollator, repeats: int = 3) -> dict:
    """Seconds per stage over all shards (best of ``repeats``), stages run one after the
    other in this process on one torch thread, the way a worker runs them per batch."""
    from ctal_ds.data import collate as collate_module
    from ctal_ds.data import shard_reader
    from ctal_ds.data.shard_list import ShardSet
    from ctal_ds.data.streams import BucketBatches

    shard_set = ShardSet.resolve(shards)
    stored = shard_set.stored
    members = feature_encoding.feature_members(stored.encoding or DEFAULT_ENCODING)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    best: dict[str, float] = {}
    try:
        for _ in range(repeats):
            lap = _Laps()

            raws = []
            for url in shard_set.urls:
                with shard_reader._open_shard(url) as stream:
                    raws.extend(_samples_of(shard_reader.tar_members(stream), url))
            lap("map + tar parse")
            planned = [(raw, inspect_sample(raw, 160, None, stored)) for raw in raws]
            lap("check (npy headers, json)")
            plan = list(BucketBatches(config.batch, (0, 0, 0, 0, 4))(planned))
            lap("plan batches")
            for batch in plan:
                arrays = [
                    ({m: shard_reader._load(raw.members[m], m) for m in members},
                     shard_reader._load(raw.members["tokens.npy"], "tokens.npy"),
                     json.loads(raw.members["json"]))
                    for raw, _ in batch
                ]
                lap("npy views + json")
                feats = [feature_encoding.decode(a, stored.encoding or DEFAULT_ENCODING, stored.features)
                         for a, _, _ in arrays]
                lap("derive (logmel encodings)")
                samples = [shard_reader.ShardSample(raw.key, raw.shard, f, tok, meta)
                           for (raw, _), f, (_, tok, meta) in zip(batch, feats, arrays)]
                targets = collate_module._pad_frames([x.feats for x in samples])
                frames = collate_module._frame_tensor(tuple(targets.shape)).copy_(targets)
                lap("pad frames (float16 -> float32, copy)")
                collator.mlm_batch(samples, 0)
                lap("MLM masks + token padding")
                collator.mcam_batch(samples, 0, frames.numpy(), targets.numpy())
                lap("MCAM plans + corruption")
                collate_module._lengths_mask([x.n_frames for x in samples])
                collate_module._lengths_mask([len(x.tokens) for x in samples])
                lap("length masks")
                if torch.cuda.is_available():
                    frames.pin_memory()
                    targets.pin_memory()
                    lap("pin (2 frame tensors)")
            for name, value in lap.totals.items():
                best[name] = min(best.get(name, value), value)
    finally:
        torch.set_num_threads(saved)
    best["frames"] = sum(n for _, n in planned)
    return best


class _Laps:
    """Calling it with a stage name adds the CPU time of this process (one torch thread:
    of this thread) since the previous call to that stage."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.clock = time.process_time()

    def __call__(self, name: str) -> None:
        now = time.process_time()
        self.totals[name] = self.totals.get(name, 0.0) + now - self.clock
        self.clock = now


def _samples_of(members, url: str):
    """read_shard's grouping of members into RawSamples, on an in-memory tar."""
    from ctal_ds.data.shard_reader import KNOWN_MEMBERS, RawSample, split_member_name

    current = None
    for name, regular, read in members:
        if not regular:
            continue
        key, suffix = split_member_name(name)
        if current is None or key != current.key:
            if current is not None:
                yield current
            current = RawSample(key=key, shard=url)
        if suffix in KNOWN_MEMBERS:
            data = read()
            current.members[suffix] = bytes(data) if suffix == "json" else data
    if current is not None:
        yield current


def print_profile(rows: dict[str, dict]) -> None:
    names = [n for n in next(iter(rows.values())) if n != "frames"]
    for r in rows.values():
        names += [n for n in r if n not in names and n != "frames"]
    encodings = list(rows)
    print("\nprofile, one process, one torch thread, best of 3 (CPU us per real frame, share of total)")
    print(f"{'stage':40}" + "".join(f"{e:>22}" for e in encodings))
    totals = {e: sum(v for k, v in rows[e].items() if k != "frames") for e in encodings}
    for name in names:
        cells = []
        for e in encodings:
            value = rows[e].get(name)
            cells.append(f"{'-':>22}" if value is None else
                         f"{value / rows[e]['frames'] * 1e6:13.3f} {value / totals[e]:7.1%}")
        print(f"{name:40}" + "".join(cells))
    print(f"{'total':40}" + "".join(f"{totals[e] / rows[e]['frames'] * 1e6:13.3f} {'':7}" for e in encodings))
    print(f"{'= frames/s':40}" + "".join(f"{rows[e]['frames'] / totals[e]:13.0f} {'':7}" for e in encodings))
    if not torch.cuda.is_available():
        print("pin_memory: not measured (no CUDA device)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-frames", type=int, default=16000)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--buffer", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encodings", default=f"{DEFAULT_ENCODING},{COMPACT_ENCODING}",
                        help=f"comma-separated, of {', '.join(ENCODINGS)}")
    parser.add_argument("--mode", choices=("worker", "main"), default="worker",
                        help="per worker core: a pinned DataLoader worker, or this process")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the measured windows")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured window")
    parser.add_argument("--profile", action="store_true", help="time each stage of a worker")
    parser.add_argument("--per-core-only", action="store_true",
                        help="skip the multi-worker epochs, collate-only, fast-forward and resume")
    args = parser.parse_args()
    encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
    unknown = [e for e in encodings if e not in ENCODINGS]
    if unknown:
        parser.error(f"--encodings: unknown {', '.join(unknown)}; choose from {', '.join(ENCODINGS)}")

    collator = PretrainCollator(pad_id=PAD_ID, mask_id=MASK_ID, vocab_size=VOCAB, seed=args.seed)
    batching = BatchConfig(args.max_frames, args.max_batch, args.buffer, True)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, {len(os.sched_getaffinity(0))} usable; "
          f"load average {os.getloadavg()[0]:.2f} at start; torch {torch.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory(prefix="ctal-loader-bench-") as tmp:
        sets = {}
        for encoding in encodings:
            shards = Path(tmp) / encoding
            shards.mkdir()
            start = time.perf_counter()
            total_frames = write_synthetic_shards(shards, args.samples, args.shards, args.seed, encoding)
            size = sum(p.stat().st_size for p in shards.glob("*.tar"))
            sets[encoding] = shards
            print(f"shards {encoding}: {args.shards} x ~{args.samples // args.shards} utterances, "
                  f"{total_frames} frames ({total_frames / FRAMES_PER_SECOND / 3600:.2f} h), "
                  f"{size / 2**20:.0f} MiB = {size / 1000 / (total_frames / FRAMES_PER_SECOND):.2f} KB/audio s, "
                  f"written in {time.perf_counter() - start:.1f} s")

        if not args.per_core_only:
            epochs_and_resume(sets[encodings[0]], encodings[0], args, collator)

        config = LoaderConfig(batch=batching, num_workers=1, seed=args.seed)
        per_frame, demand = h100_demand(sets[encodings[0]], config, collator)
        print(f"\nH100 demand: base model, {per_frame / 1e6:.0f} MFLOP per real frame per training step "
              f"at this batch shape (budget {args.max_frames} padded frames); {MFU:.0%} MFU of "
              f"{H100_PEAK_FLOPS / 1e12:.0f} TFLOP/s = {demand:,.0f} frames/s per GPU")
        where = ("one DataLoader worker pinned to one core" if args.mode == "worker"
                 else "this process pinned to one core, num_workers=0")
        print(f"per worker core ({where}; warm-up {args.warmup:.0f} s, 3 windows of {args.seconds:.0f} s; "
              f"frames per wall second and per CPU second of the worker, min / median / max):")
        print(f"{'encoding':16} {'KB/audio s':>10} {'frames/s, wall':>30} {'frames/s, CPU':>30} "
              f"{'load avg':>15} {'H100/core':>9}")
        for encoding, shards in sets.items():
            size = sum(p.stat().st_size for p in shards.glob("*.tar"))
            entries = json.loads((shards / "manifest.json").read_text())["shards"]
            seconds_audio = sum(e["frames"] for e in entries) / FRAMES_PER_SECOND
            windows = per_core_rate(shards, config, collator, args.mode, args.warmup, args.seconds)
            wall = sorted(w for w, _, _ in windows)
            cpu = sorted(c for _, c, _ in windows)
            loads = "/".join(f"{load:.1f}" for _, _, load in windows)
            print(f"{encoding:16} {size / 1000 / seconds_audio:10.2f} "
                  f"{wall[0]:9,.0f} /{wall[1]:9,.0f} /{wall[2]:9,.0f} "
                  f"{cpu[0]:9,.0f} /{cpu[1]:9,.0f} /{cpu[2]:9,.0f} {loads:>15} {demand / wall[1]:9.2f}")
        print("H100/core: H100 demand / median wall frames/s = worker cores one GPU needs at that rate")

        if args.profile:
            rows = {e: profile_stages(sets[e], config, collator) for e in encodings}
            print_profile(rows)


def epochs_and_resume(shards: Path, encoding: str, args, collator: PretrainCollator) -> None:
    """The multi-worker epochs, collate-only, fast-forward and resume measurements."""
    print(f"\n{encoding}: {args.workers} workers, budget {args.max_frames} padded frames, "
          f"<= {args.max_batch} utterances, bucket buffer {args.buffer}; MLM + MCAM masking on\n")
    rows = {}
    for name, bucketing in (("bucketed", True), ("unbucketed", False)):
        batching = BatchConfig(args.max_frames, args.max_batch, args.buffer, bucketing)
        config = LoaderConfig(batch=batching, num_workers=args.workers, seed=args.seed)
        rows[name] = run_epoch(shards, config, collator)
    print(f"{'':12} {'batches':>8} {'utt/batch':>9} {'batches/s':>9} {'frames/s':>10} "
          f"{'1st batch':>9} {'audio pad':>9} {'text pad':>8}")
    for name, r in rows.items():
        print(f"{name:12} {r['batches']:8d} {r['mean_batch']:9.1f} {r['batches_per_s']:9.1f} "
              f"{r['frames_per_s']:10.0f} {r['first_batch_s']:8.2f}s {r['audio_padding']:9.1%} "
              f"{r['text_padding']:8.1%}")

    per_batch = time_collation(shards, rows["bucketed"]["keys"], collator)
    print(f"\ncollate only (masking + padding, 1 process): {per_batch * 1e3:.1f} ms/batch, "
          f"{1 / per_batch:.1f} batches/s")

    batching = BatchConfig(args.max_frames, args.max_batch, args.buffer, True)
    config = LoaderConfig(batch=batching, num_workers=args.workers, seed=args.seed)
    rate, mib_rate = fast_forward_rate(shards)
    print(f"fast-forward (read + header check, 1 process): {rate:.0f} utterances/s, {mib_rate:.0f} MiB/s")
    consumed = rows["bucketed"]["batches"] * 3 // 4
    fresh, resumed = time_resume(shards, config, collator, consumed)
    print(f"resume after {consumed} batches (3/4 of an epoch): first batch in {resumed:.2f} s, "
          f"{fresh:.2f} s for a fresh loader")


if __name__ == "__main__":
    main()
