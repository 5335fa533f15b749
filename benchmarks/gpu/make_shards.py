"""Build a pre-training shard set quickly, for the training probes of benchmarks/gpu_check.sh.

    python benchmarks/gpu/make_shards.py --out runs/gpu_check/data [--size default|small] [--synthetic]

1. Speech: the built-in demo corpus (launch/make_demo_corpus.py: espeak-ng from the
   espeakng-loader wheel, LibriSpeech layout). `--size default` is 11,200 pre-training
   utterances (train-clean + train-other, 7 h; about a minute on 2 cores), `small`
   32 (seconds). If synthesis is unavailable (the wheel is missing or its library
   fails to load) it says so and falls back to
2. synthetic audio: tones with harmonics, a pitch glide and noise, 1-8 s, written
   with soundfile, with random sentences from a fixed word list, as a JSONL corpus.
   `--synthetic` goes there directly.

Then launch/prepare_data.py turns the corpus into <out>/shards (log-mel features,
byte-level BPE tokenizer of 2000 tokens). Each step prints its elapsed time. Both
steps reuse a finished earlier build in the same --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO

WORDS = (
    "the a of and to in is was that for it with as his on be at by had not are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so said "
    "what up its about into than them can only other new some could time these two may then do first any my "
    "now such like our over man me even most made after also did many before must through back years where "
    "much your way well down should because each just those people how too little state good very make world "
    "still own see men work long get here between both life being under never day same another know while "
    "last might us great old year off come since against go came right used take three morning river stone"
).split()


def synthesise_speech(out: Path, size: str, workers: int) -> Path:
    """The demo corpus; returns its LibriSpeech-layout folder."""
    from ctal_ds.data.demo_corpus import build_demo_corpus

    summary = build_demo_corpus(out, size=size, seed=0, workers=workers, force=False, progress=False)
    print(f"demo corpus ({size}): {summary['utterances']} utterances, {summary['seconds'] / 60:.1f} min of audio")
    return out / "librispeech"


def synthetic_corpus(out: Path, utterances: int, seed: int = 0) -> Path:
    """Tone + noise audio with random text, as a JSONL manifest; returns its path."""
    import soundfile

    rate = 16000
    rng = np.random.default_rng(seed)
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(utterances):
        seconds = rng.uniform(1.0, 8.0)
        t = np.arange(int(seconds * rate)) / rate
        f0 = rng.uniform(90, 260) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
        phase = 2 * np.pi * np.cumsum(f0) / rate
        wave = sum(np.sin(h * phase) / h for h in range(1, 6))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t) ** 2
        samples = 0.2 * envelope * wave + 0.02 * rng.standard_normal(t.size)
        name = f"synth-{i:05d}"
        soundfile.write(audio_dir / f"{name}.wav", samples.astype(np.float32), rate, subtype="PCM_16")
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 25))))
        lines.append(json.dumps({"id": name, "audio": f"audio/{name}.wav", "text": text,
                                 "speaker": f"spk{i % 40}", "split": "train"}))  # fmt: skip
    manifest = out / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    print(f"synthetic corpus: {utterances} utterances (tones and noise, not speech)")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="writes <out>/corpus and <out>/shards")
    p.add_argument("--size", default="default", choices=["default", "small"], help="demo corpus size")
    p.add_argument("--synthetic", action="store_true", help="skip speech synthesis: tone + noise audio")
    p.add_argument("--synthetic-utterances", type=int, default=3000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--samples-per-shard", type=int, default=500)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO / "launch"))
    import prepare_data  # launch/prepare_data.py

    started = time.perf_counter()
    corpus_args: list[str]
    if not args.synthetic:
        try:
            corpus = synthesise_speech(args.out / "corpus", args.size, args.workers)
            corpus_args = ["--corpus", str(corpus), "--split", "train-clean", "--split", "train-other"]
        except Exception as err:  # ImportError of espeakng_loader, or its library failing to load
            print(f"speech synthesis unavailable ({type(err).__name__}: {err}); "
                  "falling back to synthetic tone + noise audio")
            args.synthetic = True
    if args.synthetic:
        manifest = synthetic_corpus(args.out / "synthetic", args.synthetic_utterances)
        corpus_args = ["--corpus", str(manifest), "--kind", "jsonl"]
    print(f"corpus: {time.perf_counter() - started:.1f} s", flush=True)

    step = time.perf_counter()
    rc = prepare_data.main([*corpus_args, "--out", str(args.out / "shards"), "--vocab-size", "2000",
                            "--samples-per-shard", str(args.samples_per_shard),
                            "--workers", str(args.workers), "--quiet"])  # fmt: skip
    print(f"shards: {time.perf_counter() - step:.1f} s; total {time.perf_counter() - started:.1f} s "
          f"({'synthetic audio' if args.synthetic else 'synthesised speech'}) in {args.out / 'shards'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
