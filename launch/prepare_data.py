"""Build WebDataset shards from a corpus, or check built ones.

    # LibriSpeech 960 h for pre-training, then dev-clean with the same tokenizer:
    python launch/prepare_data.py --corpus data/LibriSpeech --out shards/ls960 \\
        --split train-clean-100 --split train-clean-360 --split train-other-500 --workers 16
    python launch/prepare_data.py --corpus data/LibriSpeech --out shards/ls-dev-clean \\
        --split dev-clean --tokenizer shards/ls960/tokenizer.json

    # One corpus, a held-out part: writes <out>/train and <out>/valid (tokenizer from train)
    python launch/prepare_data.py --corpus runs/demo/corpus/librispeech --out shards/demo \\
        --holdout-fraction 0.05

    # lhotse manifests: a CutSet, or a folder of *_recordings* + *_supervisions* pairs
    python launch/prepare_data.py --corpus data/manifests/librispeech_cuts_dev-clean.jsonl.gz \
        --out shards/ls-dev-clean --tokenizer shards/ls960/tokenizer.json

    # Verify every shard against its manifest (exit 1 and the file names if any is bad)
    python launch/prepare_data.py --check shards/ls960

    # Smaller shards: store the 80 log-mel dims (uint8), the loader derives the 160
    python launch/prepare_data.py --corpus data/LibriSpeech --out shards/ls960-u8 \
        --split train-clean-100 --feature-encoding uint8-logmel

Rerunning an interrupted build with the same arguments finishes it, keeping the shards
already written. Utterances longer than --max-seconds are left out (rejects.jsonl); the
build ends with a warning naming them per split, since a test set missing some of its
utterances gives other numbers. The shard format is described in shards/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from ctal_ds.data.feature_encoding import DEFAULT_ENCODING, ENCODINGS
from ctal_ds.data.features import BACKENDS, FeatureConfig
from ctal_ds.data.records import CorpusScan
from ctal_ds.data.shards import (
    MANIFEST,
    REJECTS,
    TOKENIZER,
    BuildResult,
    ShardConfig,
    build_shards,
    split_holdout,
)
from ctal_ds.data.tokenizer import TokenizerConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--corpus", help="corpus folder, .jsonl manifest or lhotse manifest (cuts, recordings or "
                                        "supervisions .jsonl[.gz], or their folder) to build shards from")
    mode.add_argument("--check", metavar="DIR", help="verify the shard set(s) in DIR and exit")
    p.add_argument("--kind", default="auto", help="librispeech | iemocap | mosei | jsonl | lhotse | auto")
    p.add_argument("--out", help="output folder, e.g. shards/ls960")
    p.add_argument("--split", action="append", default=[], metavar="NAME",
                   help="keep only records of this corpus split (repeatable), e.g. train-clean-100")
    p.add_argument("--holdout-fraction", type=float, default=0.0,
                   help="also hold out this fraction of records: writes OUT/train and OUT/valid")
    p.add_argument("--tokenizer", help="existing tokenizer.json to use instead of training one")
    p.add_argument("--vocab-size", type=int, default=TokenizerConfig.vocab_size)
    p.add_argument("--min-frequency", type=int, default=TokenizerConfig.min_frequency)
    p.add_argument("--samples-per-shard", type=int, default=ShardConfig.samples_per_shard)
    p.add_argument("--workers", type=int, default=ShardConfig.workers, help="extraction processes")
    p.add_argument("--backend", choices=BACKENDS, default=ShardConfig.backend)
    p.add_argument("--device", default=None, help="torch backend device, e.g. cuda")
    p.add_argument("--batch-size", type=int, default=ShardConfig.batch_size)
    p.add_argument("--feature-encoding", choices=ENCODINGS, default=DEFAULT_ENCODING,
                   help="how samples store the features: float16-160 the 160 dims (~25.6 KB per audio "
                        "second), float16-logmel (~12.8 KB) or uint8-logmel (~6.4 KB) the 80 log-mel "
                        "dims, from which the loader derives delta and normalisation "
                        f"(default {DEFAULT_ENCODING}; shards/README.md)")
    p.add_argument("--max-seconds", "--max-duration", dest="max_duration", type=float,
                   default=FeatureConfig.max_duration_s,
                   help="longest utterance kept, in seconds; longer ones are left out, with a warning "
                        f"(default {FeatureConfig.max_duration_s:g})")
    p.add_argument("--max-tokens", type=int, default=ShardConfig.max_tokens)
    p.add_argument("--seed", type=int, default=ShardConfig.seed, help="shard assignment and holdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.corpus and not args.out:
        p.error("--corpus needs --out")
    return args


def _print_totals(result: BuildResult) -> None:
    t = result.manifest["totals"]
    print(
        f"{result.out_dir}: {t['shards']} shards ({len(result.written)} written, "
        f"{len(result.reused)} kept), {t['samples']} samples, {t['hours']:.2f} h, "
        f"{t['frames']} frames; {t['rejected']} of {t['inputs']} inputs rejected"
    )
    for reason, n in sorted(t["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
        print(f"  rejected {n:>6}  {reason}")


# How many ids of the utterances left out as too long a warning names, per split.
SHOWN_IDS = 5
_SECONDS = re.compile(r"too long: ([0-9.]+) s")


def too_long(result: BuildResult, splits: dict[str, str]) -> dict[str, list[tuple[str, float]]]:
    """(id, seconds) of the utterances this build left out for lasting longer than
    --max-seconds, by the corpus split of their record (else the shard set's name)."""
    found: dict[str, list[tuple[str, float]]] = {}
    for line in (result.out_dir / REJECTS).read_text(encoding="utf-8").splitlines():
        rejection = json.loads(line)
        match = _SECONDS.match(rejection["reason"])
        if match:
            utt = rejection.get("id") or rejection["source"]
            found.setdefault(splits.get(utt) or result.out_dir.name, []).append((utt, float(match.group(1))))
    return found


def too_long_warning(result: BuildResult, found: dict[str, list[tuple[str, float]]], max_seconds: float) -> str:
    per_split = []
    for split, utts in sorted(found.items()):
        ids = sorted(u for u, _ in utts)
        more = f", ... ({len(ids) - SHOWN_IDS} more)" if len(ids) > SHOWN_IDS else ""
        per_split.append(f"  split {split}: {len(ids)} left out: {', '.join(ids[:SHOWN_IDS])}{more}")
    total = sum(len(utts) for utts in found.values())
    longest = max(seconds for utts in found.values() for _, seconds in utts)
    return "\n".join([
        f"WARNING: {result.out_dir}: {total} utterance(s) longer than --max-seconds {max_seconds:g} "
        f"were left out (listed in {REJECTS}):",
        *per_split,
        f"  an evaluation on these shards would miss them: to keep them, rebuild with "
        f"--max-seconds {math.ceil(longest)} or more (the longest lasts {longest:.2f} s)",
    ])  # fmt: skip


def prepare(scan: CorpusScan, args: argparse.Namespace) -> list[BuildResult]:
    """Build the shard set(s) the arguments ask for from an already read corpus."""
    features = FeatureConfig(max_duration_s=args.max_duration)
    config = ShardConfig(
        samples_per_shard=args.samples_per_shard,
        workers=args.workers,
        backend=args.backend,
        device=args.device,
        batch_size=args.batch_size,
        seed=args.seed,
        max_tokens=args.max_tokens,
        feature_encoding=args.feature_encoding,
    )
    tokenizer = args.tokenizer or TokenizerConfig(args.vocab_size, args.min_frequency)
    provenance = {"splits": sorted(args.split)} if args.split else {}
    out = Path(args.out)
    if not args.holdout_fraction:
        return [build_shards(scan, out, tokenizer, features, config, provenance, not args.quiet)]
    train, valid = split_holdout(scan, args.holdout_fraction, args.seed)
    holdout = {"holdout_fraction": args.holdout_fraction, "holdout_seed": args.seed}
    results = [
        build_shards(train, out / "train", tokenizer, features, config,
                     provenance | holdout | {"part": "train"}, not args.quiet)
    ]
    # valid is encoded with the tokenizer trained on (or given for) train.
    results.append(
        build_shards(valid, out / "valid", out / "train" / TOKENIZER, features, config,
                     provenance | holdout | {"part": "valid"}, not args.quiet)
    )
    return results


def check(root: Path) -> int:
    from ctal_ds.data.shard_check import check_shards  # reads with the loader's reader (torch)

    dirs = [root] if (root / MANIFEST).is_file() else sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))
    if not dirs:
        print(f"{root}: no {MANIFEST} here or one level down; the build did not finish", file=sys.stderr)
        return 1
    bad = 0
    for d in dirs:
        report = check_shards(d)
        for problem in report.problems:
            print(f"{d}/{problem}", file=sys.stderr)
        status = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
        encoding = f" ({report.encoding})" if report.encoding else ""
        print(f"{d}: {report.shards} shards, {report.samples} samples{encoding}: {status}")
        bad += not report.ok
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return check(Path(args.check))
    from ctal_ds.data.corpora import filter_split, read_corpus

    scan = read_corpus(args.corpus, args.kind)
    print(scan.summary())
    if args.split:
        scan = filter_split(scan, args.split)
        print(f"splits {sorted(args.split)}: {len(scan.records)} records")
    results = prepare(scan, args)
    for result in results:
        _print_totals(result)
    # Last, where a long log still shows them.
    splits = {r.id: r.split for r in scan.records}
    for result in results:
        found = too_long(result, splits)
        if found:
            warning = too_long_warning(result, found, args.max_duration)
            print(warning, flush=True)
            print(warning, file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
