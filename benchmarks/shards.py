"""Shards: build speed (librosa backend vs torch backend), and the feature encodings'
size, error and decoding cost.

    python benchmarks/shards.py                         # build: 300 utterances, ~45 min of audio
    python benchmarks/shards.py build --utterances 400 --workers 2 --device cuda
    python benchmarks/shards.py encodings               # small demo corpus + 60 long utterances
    python benchmarks/shards.py encodings --recording speech.flac

build
    The corpus is synthesised speech (espeak-ng) stored as 16 kHz FLAC, utterances of
    four to seven sentences each (mean ~12 s, like LibriSpeech's 12.3 s), so a build
    pays what it pays on LibriSpeech: FLAC decoding, features, tokenising, tar writing.
    Two measurements per backend:
      build     build_shards end to end (worker start-up included) with --workers processes;
                x real time per core = audio seconds / (wall seconds x workers)
      features  extract_batch alone in this process, one thread (BLAS limited with
                threadpoolctl, as the build limits its workers), audio already in memory
                (the torch backend in batches of --batch-size)

encodings
    The same audio built in each feature encoding (ctal_ds.data.feature_encoding), librosa
    backend, all of a set's samples in one shard (so the tar's own padding is negligible):
    the small demo corpus (launch/make_demo_corpus.py --small: short utterances, mean
    ~2 s), --utterances of the long synthetic speech above, and real recordings given
    with --recording (cut into pieces of at most 20 s) or found already downloaded in
    librosa's example cache (librosa.ex() would download them; this never does). Per
    encoding:
      KB/audio s  tar bytes (all members, headers included) / audio seconds / 1000
      vs f16-160  max and mean |decoded - float16-160 decoded| over all feature values
      vs float32  the same against the unrounded float32 features of the audio
      decode      frames per second turning a sample's stored feature members (bytes in
                  memory) into the float16 [T, 160] array the loader's collator gets:
                  np.load, then for the logmel encodings dequantise + derive; one thread
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from threadpoolctl import threadpool_limits

from ctal_ds.data import feature_encoding
from ctal_ds.data.audio import load_audio
from ctal_ds.data.corpora import read_corpus
from ctal_ds.data.demo.espeak import ESpeak, VoiceSettings
from ctal_ds.data.demo_corpus import LAYOUT_DIRS, build_demo_corpus
from ctal_ds.data.feature_encoding import ENCODINGS
from ctal_ds.data.features import FeatureConfig, extract, extract_batch
from ctal_ds.data.records import CorpusScan, Record
from ctal_ds.data.shard_list import ShardSet
from ctal_ds.data.shard_reader import decode_sample, inspect_sample, read_shard, sample_encoding
from ctal_ds.data.shard_writer import sample_key
from ctal_ds.data.shards import TOKENIZER, ShardConfig, build_shards
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


# --------------------------------------------------------------------------- encodings

RECORDING_PIECE_S = 20.0
LIBROSA_SPEECH = ("libri1", "libri2", "libri3")  # librosa's example keys of read speech


def cpu_model() -> str:
    """The CPU's model name, with its family, model and clock as /proc/cpuinfo gives them."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    detail = ", ".join(f"{k} {fields[k]}" for k in ("cpu family", "model", "cpu MHz") if k in fields)
    return f"{fields.get('model name', platform.machine())} ({detail})"


def demo_scan(root: Path, workers: int) -> CorpusScan:
    """The small demo corpus, its three layouts as one scan."""
    build_demo_corpus(root, size="small", workers=workers, progress=False)
    scan = CorpusScan("demo-small", str(root))
    for layout in LAYOUT_DIRS:
        part = read_corpus(root / layout)
        scan.records += part.records
        scan.rejections += part.rejections
    return scan


def cached_librosa_speech() -> tuple[list[Path], str]:
    """librosa's read-speech examples already on disk (never downloads), and where it looked."""
    try:
        import librosa.util.files as files
        import pooch
    except ImportError:
        return [], "(librosa or pooch missing)"
    cache = Path(os.environ.get("LIBROSA_DATA_DIR", pooch.os_cache("librosa")))
    index = json.loads((Path(files.__file__).parent / "example_data" / "index.json").read_text())
    found = []
    for key in LIBROSA_SPEECH:
        stem = index.get(key, {}).get("path")
        names = [f"{stem}.ogg", f"{stem}.hq.ogg"] if stem else []
        found += [cache / n for n in names if (cache / n).is_file()][:1]
    return found, str(cache)


def recordings_scan(paths: list[Path], root: Path) -> CorpusScan:
    """Recordings cut into pieces of at most RECORDING_PIECE_S, written as 16 kHz FLAC."""
    config = FeatureConfig(max_duration_s=24 * 3600)
    scan = CorpusScan("recordings", str(root))
    piece = int(RECORDING_PIECE_S * config.sample_rate)
    for i, path in enumerate(paths):
        wave = load_audio(path, config)
        for j in range(0, len(wave), piece):
            out = root / f"rec{i}-{j // piece:04d}.flac"
            sf.write(out, wave[j : j + piece], config.sample_rate)
            scan.records.append(Record(out.stem, str(out), "recording", f"rec{i}"))
    return scan


def decoded(out: Path) -> tuple[dict[str, np.ndarray], list, ShardSet]:
    """(features by key, raw samples, shard set) of one build, read as the loader reads."""
    shards = ShardSet.resolve(out)
    feats, raws = {}, []
    for url in shards.urls:
        for raw in read_shard(url, []):
            inspect_sample(raw, 160, None, shards.stored)
            feats[raw.key] = decode_sample(raw, shards.stored).feats
            raws.append(raw)
    return feats, raws, shards


def decode_rate(raws: list, shards: ShardSet, repeats: int = 7) -> float:
    """Frames per second turning stored feature members into float16 [T, 160], best of ``repeats``."""
    best = float("inf")
    frames = 0
    with threadpool_limits(1):
        for _ in range(repeats):
            frames = 0
            start = time.perf_counter()
            for raw in raws:
                encoding = sample_encoding(raw, shards.stored)
                arrays = {
                    m: np.load(io.BytesIO(raw.members[m]), allow_pickle=False)
                    for m in feature_encoding.feature_members(encoding)
                }
                frames += len(feature_encoding.decode(arrays, encoding, shards.stored.features))
            best = min(best, time.perf_counter() - start)
    return frames / best


def abs_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> tuple[float, float]:
    total = count = 0.0
    worst = 0.0
    for key, reference in want.items():
        diff = np.abs(got[key].astype(np.float32) - reference.astype(np.float32))
        worst = max(worst, float(diff.max()))
        total += float(diff.sum(dtype=np.float64))
        count += diff.size
    return worst, total / count


def bench_encodings(name: str, description: str, scan: CorpusScan, out: Path, args) -> None:
    features = FeatureConfig()
    tokenizer = None
    results = {}
    for encoding in ENCODINGS:
        config = ShardConfig(samples_per_shard=100_000, workers=args.workers, feature_encoding=encoding)
        result = build_shards(scan, out / encoding, tokenizer or TokenizerConfig(), features, config, progress=False)
        tokenizer = tokenizer or out / encoding / TOKENIZER  # the same token ids in every encoding
        seconds = result.manifest["totals"]["hours"] * 3600
        results[encoding] = (sum(s["bytes"] for s in result.manifest["shards"]), seconds, *decoded(out / encoding))
    _, seconds, reference, _, _ = results["float16-160"]
    audio = {sample_key(r.id): r.audio for r in scan.records}
    with threadpool_limits(1):  # one BLAS thread, as in the build's workers
        exact = {key: extract(load_audio(audio[key], features), features) for key in reference}
    lengths = [len(f) for f in reference.values()]
    print(f"\n{name}: {description}; {len(lengths)} utterances, {seconds / 60:.1f} min of audio "
          f"(mean {seconds / len(lengths):.1f} s, {sum(lengths)} frames)")
    print(f"  {'encoding':16}{'KB/audio s':>11}{'vs f16-160 max':>16}{'mean':>10}"
          f"{'vs float32 max':>16}{'mean':>10}{'decode M frames/s':>19}")
    for encoding, (size, secs, feats, raws, shards) in results.items():
        ref_max, ref_mean = abs_error(feats, reference)
        f32_max, f32_mean = abs_error(feats, exact)
        rate = decode_rate(raws, shards)
        print(f"  {encoding:16}{size / secs / 1000:>11.2f}{ref_max:>16.4f}{ref_mean:>10.6f}"
              f"{f32_max:>16.4f}{f32_mean:>10.6f}{rate / 1e6:>19.2f}")


def run_encodings(args) -> None:
    import librosa

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: {cpu_model()}; {os.cpu_count()} logical CPUs, load average {load:.1f} at start; "
          f"decode timed on one thread; numpy {np.__version__}, librosa {librosa.__version__}")
    recordings = [Path(p) for p in args.recording]
    cached, cache_dir = cached_librosa_speech()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bench_encodings("demo-small", "the small demo corpus (espeak-ng, three layouts)",
                        demo_scan(tmp / "demo", args.workers), tmp / "demo-shards", args)
        if args.utterances:
            (tmp / "long").mkdir()
            bench_encodings("long", "synthetic speech of 4 to 7 sentences per utterance (espeak-ng)",
                            make_corpus(tmp / "long", args.utterances, args.seed), tmp / "long-shards", args)
        real = recordings + cached
        if real:
            (tmp / "rec").mkdir()
            bench_encodings("real speech", ", ".join(p.name for p in real) +
                            f" in pieces of at most {RECORDING_PIECE_S:g} s",
                            recordings_scan(real, tmp / "rec"), tmp / "rec-shards", args)
        else:
            print(f"\nreal speech: no recording available offline (none given with --recording; "
                  f"librosa's example cache {cache_dir} holds none of {', '.join(LIBROSA_SPEECH)}, "
                  f"and librosa.ex() would download them), so no real-speech figures")


def run_build(args) -> None:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=("build", "encodings"), default="build")
    p.add_argument("--utterances", type=int, default=None,
                   help="long synthetic utterances (default 300 for build, 60 for encodings; 0: none)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--samples-per-shard", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=ShardConfig.batch_size)
    p.add_argument("--device", default=None, help="torch backend device, e.g. cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recording", action="append", default=[], metavar="FILE",
                   help="encodings: a real speech recording to measure too (repeatable)")
    args = p.parse_args()
    if args.utterances is None:
        args.utterances = 300 if args.what == "build" else 60
    if args.what == "build":
        run_build(args)
    else:
        run_encodings(args)


if __name__ == "__main__":
    main()
