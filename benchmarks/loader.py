"""Streaming-loader speed with MLM/MCAM masking, and padding with and without bucketing.

    python benchmarks/loader.py                      # ~2000 utterances, 2 workers
    python benchmarks/loader.py --samples 4000 --workers 4

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
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds

from ctal_ds.data.collate import PretrainCollator
from ctal_ds.data.loader import BatchConfig, LoaderConfig, build_pretrain_loader
from ctal_ds.data.masking import MASK_ID, PAD_ID
from ctal_ds.data.shard_reader import decode_sample, inspect_sample, read_shard

FRAMES_PER_SECOND = 80  # 12.5 ms hop
VOCAB = 30000


def write_synthetic_shards(out: Path, samples: int, shards: int, seed: int) -> int:
    """Shards plus manifest.json; returns the total number of frames."""
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.lognormal(np.log(7.5), 0.5, samples), 1.0, 20.0)
    frames = (seconds * FRAMES_PER_SECOND).astype(int)
    entries = []
    for s, chunk in enumerate(np.array_split(np.arange(samples), shards)):
        path = out / f"shard-{s:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for i in chunk:
                t = int(frames[i])
                n_tokens = max(1, int(seconds[i] * 3.5))
                writer.write({
                    "__key__": f"utt{i:06d}",
                    "feats.npy": rng.standard_normal((t, 160), dtype=np.float32).astype(np.float16),
                    "tokens.npy": np.concatenate([[0], rng.integers(5, VOCAB, n_tokens), [2]]).astype(np.int32),
                    "json": {"id": f"utt{i:06d}", "n_frames": t, "labels": {}},
                })
        entries.append({"name": path.name, "samples": len(chunk), "frames": int(frames[chunk].sum())})
    (out / "manifest.json").write_text(json.dumps({"shards": entries, "totals": {"samples": samples}}))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-frames", type=int, default=16000)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--buffer", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    collator = PretrainCollator(pad_id=PAD_ID, mask_id=MASK_ID, vocab_size=VOCAB, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="ctal-loader-bench-") as tmp:
        shards = Path(tmp)
        start = time.perf_counter()
        total_frames = write_synthetic_shards(shards, args.samples, args.shards, args.seed)
        size_mb = sum(p.stat().st_size for p in shards.glob("*.tar")) / 2**20
        print(f"shards: {args.shards} x ~{args.samples // args.shards} utterances, {total_frames} frames "
              f"({total_frames / FRAMES_PER_SECOND / 3600:.2f} h), {size_mb:.0f} MiB, "
              f"written in {time.perf_counter() - start:.1f} s")
        print(f"loader: {args.workers} workers, budget {args.max_frames} padded frames, "
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
