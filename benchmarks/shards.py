"""Shard-building speed, librosa backend vs torch backend, on one synthetic corpus.

    python benchmarks/shards.py                         # 300 utterances, ~45 min of audio
    python benchmarks/shards.py --utterances 400 --workers 2 --device cuda

The corpus is synthesised speech (espeak-ng) stored as 16 kHz FLAC, utterances of
four to seven sentences each (mean ~12 s, like LibriSpeech's 12.3 s), so a build
pays what it pays on LibriSpeech: FLAC decoding, features, tokenising, tar writing.

Two measurements per backend:
  build     build_shards end to end (worker start-up included) with --workers processes;
            x real time per core = audio seconds / (wall seconds x workers)
  features  extract_batch alone in this process, one thread (BLAS limited with
            threadpoolctl, as the build limits its workers), audio already in memory
            (the torch backend in batches of --batch-size)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from threadpoolctl import threadpool_limits

from ctal_ds.data.audio import load_audio
from ctal_ds.data.demo.espeak import ESpeak, VoiceSettings
from ctal_ds.data.features import FeatureConfig, extract_batch
from ctal_ds.data.records import CorpusScan, Record
from ctal_ds.data.shards import ShardConfig, build_shards
from ctal_ds.data.tokenizer import TokenizerConfig

SENTENCES = [
    "the birch canoe slid on the smooth planks",
    "glue the sheet to the dark blue background",
    "it is easy to tell the depth of a well",
    "these days a chicken leg is a rare dish",
    "rice is often served in round bowls",
    "the juice of lemons makes fine punch",
    "the box was thrown beside the parked truck",
    "the hogs were fed chopped corn and garbage",
    "four hours of steady work faced us",
    "a large size in stockings is hard to sell",
]
VOICES = ["en-us", "en-us+f2", "en+m3", "en+f3", "en-gb-x-rp"]


def make_corpus(root: Path, n: int, seed: int) -> CorpusScan:
    rng = np.random.default_rng(seed)
    engine = ESpeak()
    scan = CorpusScan("synthetic", str(root))
    for i in range(n):
        text = " ".join(rng.choice(SENTENCES, size=int(rng.integers(4, 8))))
        voice = VoiceSettings(VOICES[i % len(VOICES)], int(rng.integers(130, 200)), 50, 50, 100)
        wave = engine.synthesize(text, voice, seed=i).astype(np.float32) / 32768
        path = root / f"{i:05d}.flac"
        sf.write(path, soxr.resample(wave, engine.sample_rate, 16000), 16000)
        scan.records.append(Record(f"bench-{i:05d}", str(path), text.upper(), f"spk{i % 20}"))
    return scan


def bench_build(scan, out: Path, backend: str, args) -> dict:
    config = ShardConfig(
        samples_per_shard=args.samples_per_shard, workers=args.workers, backend=backend,
        device=args.device if backend == "torch" else None, batch_size=args.batch_size,
    )
    start = time.perf_counter()
    result = build_shards(scan, out, TokenizerConfig(), FeatureConfig(), config, progress=False)
    wall = time.perf_counter() - start
    totals = result.manifest["totals"]
    mb = sum(s["bytes"] for s in result.manifest["shards"]) / 1e6
    audio_s = totals["hours"] * 3600
    return {
        "utt/s": totals["samples"] / wall,
        "x RT/core": audio_s / wall / args.workers,
        "MB/s out": mb / wall,
        "wall s": wall,
    }


def bench_features(waves, backend: str, args) -> dict:
    import torch

    torch.set_num_threads(1)
    cfg = FeatureConfig()
    step = args.batch_size if backend == "torch" else 1
    device = args.device if backend == "torch" else None
    with threadpool_limits(1):
        extract_batch(waves[:step], cfg, backend, device)  # warm-up: imports, FFT plans, CUDA
        start = time.perf_counter()
        for i in range(0, len(waves), step):
            extract_batch(waves[i : i + step], cfg, backend, device)
        if device and str(device).startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    return {"utt/s": len(waves) / wall, "x RT/core": sum(map(len, waves)) / cfg.sample_rate / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=300)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--samples-per-shard", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=ShardConfig.batch_size)
    p.add_argument("--device", default=None, help="torch backend device, e.g. cuda")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "corpus").mkdir()
        scan = make_corpus(tmp / "corpus", args.utterances, args.seed)
        waves = [load_audio(r.audio) for r in scan.records]
        seconds = sum(map(len, waves)) / 16000
        print(f"corpus: {len(waves)} utterances, {seconds / 60:.1f} min of audio "
              f"(mean {seconds / len(waves):.1f} s); workers={args.workers} device={args.device or 'cpu'}")
        rows = {}
        for backend in ("librosa", "torch"):
            rows[f"build    {backend}"] = bench_build(scan, tmp / backend, backend, args)
            rows[f"features {backend}"] = bench_features(waves, backend, args)
        columns = ["utt/s", "x RT/core", "MB/s out", "wall s"]
        print(f"{'':18}" + "".join(f"{c:>12}" for c in columns))
        for name, row in rows.items():
            print(f"{name:18}" + "".join(f"{row[c]:>12.1f}" if c in row else f"{'':>12}" for c in columns))


if __name__ == "__main__":
    main()
