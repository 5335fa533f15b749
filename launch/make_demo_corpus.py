"""Build the built-in demo speech corpus (synthetic, offline) in the LibriSpeech,
IEMOCAP and MOSEI layouts.

    python launch/make_demo_corpus.py --out runs/demo/corpus [--small] [--seed 0] [--workers N]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ctal_ds.data.demo_corpus import build_demo_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the corpus into")
    parser.add_argument("--small", action="store_true",
                        help="about 100 utterances, built in seconds (for tests and smoke runs)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="synthesis processes (default: all CPUs); does not change the output")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if --out already holds a complete corpus")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    summary = build_demo_corpus(args.out, size="small" if args.small else "default",
                                seed=args.seed, workers=args.workers, force=args.force,
                                progress=not args.quiet)
    if summary.get("skipped"):
        print(f"{args.out} already holds a complete demo corpus "
              f"({summary['utterances']} utterances); pass --force to rebuild it")
        return 0
    ls, iem, mo = (summary["layouts"][k] for k in ("librispeech", "iemocap", "mosei"))
    print(f"demo corpus ({summary['size']}, seed {summary['seed']}) in {args.out}: "
          f"{summary['utterances']} utterances, {summary['seconds'] / 60:.1f} min, "
          f"{summary['speakers']} speakers, built in {summary['build']['seconds']:.1f} s")
    print(f"  librispeech: {ls['utterances']} utterances, "
          + ", ".join(f"{k} {v['speakers']} speakers / {v['utterances']} utterances"
                      for k, v in ls["subsets"].items()))
    print(f"  iemocap:     {iem['utterances']} utterances, emotions {iem['emotions']}")
    print(f"  mosei:       {mo['clips']} clips in {mo['videos']} videos, modes {mo['modes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
