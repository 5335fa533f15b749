"""Turn a pre-training checkpoint into a model directory that loads without DeepSpeed.

    # newest complete checkpoint of a run -> save_pretrained directory
    python launch/export.py runs/base/checkpoints --out runs/base/export

    # a given tag
    python launch/export.py runs/base/checkpoints/global_step20000 --out exports/step20k

    # a universal checkpoint, to resume the run itself on another world size
    python launch/export.py runs/base/checkpoints --universal runs/base-universal
    deepspeed --num_gpus 4 launch/pretrain.py ... --resume runs/base-universal

The ZeRO partitions of every rank are gathered into fp32 weights (tied weights
checked and re-tied), written with `save_pretrained` together with the tokenizer and
the feature config. Load it with `ctal_ds.model.load_pretrained(dir)`, fine-tune it,
or start a new pre-training run from it on any world size with `--init-from dir`.

The tag is verified against its `complete.json` first: every file's size and sha256
(`--no-verify-hash`: sizes only). Given a checkpoints root, a newest tag that fails is
reported and the newest older one that verifies is exported; a named tag that fails is
an error (exit 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctal_ds.train.checkpoint import CheckpointError, resolve_resume
from ctal_ds.train.export import convert_to_universal, export_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint tag directory, or a checkpoints/ root")
    p.add_argument("--out", type=Path, help="model directory to write")
    p.add_argument("--universal", type=Path, metavar="DIR",
                   help="instead: write a universal checkpoint (any world size) under DIR")
    p.add_argument("--no-verify-hash", action="store_true",
                   help="check only the checkpoint's file sizes against its complete.json, not their sha256")
    args = p.parse_args(argv)
    if (args.out is None) == (args.universal is None):
        p.error("give exactly one of --out and --universal")
    try:
        tag_dir = resolve_resume(str(args.checkpoint), args.checkpoint, not args.no_verify_hash, f"{args.checkpoint}: ")
    except (FileNotFoundError, CheckpointError) as err:
        print(f"export: {err}", file=sys.stderr)
        return 1
    # The hashes were checked as the tag was chosen; the conversions check the sizes again.
    if args.universal is not None:
        out = convert_to_universal(tag_dir, args.universal, verify_hash=False)
    else:
        out = export_checkpoint(tag_dir, args.out, verify_hash=False)
    print(f"exported {tag_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
