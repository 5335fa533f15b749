"""Embeddings of a folder of audio files, a JSONL manifest or lhotse manifests, with a model directory.

    # every audio file under a folder (a/b.wav has id a/b; a/b.txt beside it is its transcript)
    python launch/embed.py --model runs/demo/pretrain/export --audio-dir recordings --out emb.parquet

    # a manifest of {"id", "audio", "text"} lines, one array for the rows of emb.ids.txt
    python launch/embed.py --model runs/ft/emotion/fold1/export --manifest utts.jsonl --out emb.npy

    # lhotse: each supervision of a CutSet (or of a recordings + supervisions pair, or a
    # folder of them), its span of the recording with its text; --manifest detects them too
    python launch/embed.py --model runs/demo/pretrain/export --lhotse data/cuts_dev.jsonl.gz --out emb.parquet

The model is any `save_pretrained` directory (a pre-training or a fine-tuning export);
its tokenizer.json and feature_config.json prepare the inputs exactly as shard building
prepared the training data (`ctal_ds.model.processor`).

Outputs:
- `.parquet`: one row per embedded utterance: id, audio, text and one column per field
  (default: every field the model gives; `--fields` to choose);
- `.npy`: one float32 array [N, D] of one vector field (default `audio_pooled`), with
  `<out stem>.ids.txt` naming its rows in order.
Fields: audio_pooled, text_pooled (masked means of H_a^N and H_w^N); for a fine-tuned
model also embedding (h_fuse, or the speaker embedding), probs, label, label_name
(when the export stores class names), speaker_embedding, score (sentiment).

Inputs that cannot be embedded (missing or unreadable audio, a broken manifest line,
a duplicate id; for lhotse also a supervision without recording, a multi-channel
recording or a segment past the recording's end) are listed with the reason on stderr and in `<out stem>.rejects.jsonl`;
the others are embedded. Exit 0 when at least one input was embedded, 1 when none was
(or the model cannot be loaded), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="save_pretrained model directory")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio-dir", type=Path, help="folder of audio files (searched recursively)")
    source.add_argument("--manifest", type=Path,
                        help="JSONL manifest: id, audio, text per line (a lhotse manifest is detected)")
    source.add_argument("--lhotse", type=Path, metavar="MANIFEST",
                        help="lhotse cuts, recordings or supervisions .jsonl[.gz], or a folder of them")
    p.add_argument("--out", type=Path, required=True, help="output file: .parquet or .npy")
    p.add_argument("--fields", help="comma-separated fields to write (see above)")
    p.add_argument("--batch-size", type=int, default=16, help="utterances per forward pass")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--feature-backend", choices=["librosa", "torch"], default="librosa",
                   help="librosa: the shard builder's default; torch: batched, on --device")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.out.suffix not in (".parquet", ".npy"):
        p.error(f"--out must end in .parquet or .npy, got {args.out.name}")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")

    import torch

    from ctal_ds.model import CTALProcessor, load_pretrained
    from ctal_ds.model import embed_files as ef

    def say(line: str) -> None:
        tqdm.write(f"embed: {line}", file=sys.stderr)

    try:
        model = load_pretrained(args.model)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device).eval()
        model.processor = CTALProcessor.from_pretrained(
            args.model, max_tokens=model.config.max_tokens, max_frames=model.config.max_frames,
            backend=args.feature_backend, device=device,
        )  # fmt: skip
    except (OSError, ValueError, RuntimeError) as err:
        print(f"embed: cannot load the model {args.model}: {err}", file=sys.stderr)
        return 1

    available = ef.available_fields(model)
    if args.fields:
        fields = [f.strip() for f in args.fields.split(",") if f.strip()]
        unknown = [f for f in fields if f not in available]
        if unknown:
            p.error(f"--fields {unknown} not given by this model; it gives {available}")
    else:
        fields = ["audio_pooled"] if args.out.suffix == ".npy" else available
    if args.out.suffix == ".npy" and (len(fields) != 1 or fields[0] not in ef.VECTOR_FIELDS):
        p.error(f".npy holds one array: give one vector field with --fields (one of "
                f"{[f for f in available if f in ef.VECTOR_FIELDS]}), or write .parquet")  # fmt: skip

    from ctal_ds.data.corpora import CorpusError

    try:
        if args.audio_dir:
            items, rejects = ef.folder_items(args.audio_dir)
        elif args.lhotse or ef.is_lhotse(args.manifest):
            items, rejects = ef.lhotse_items(args.lhotse or args.manifest)
        else:
            items, rejects = ef.manifest_items(args.manifest)
    except (OSError, UnicodeDecodeError, CorpusError) as err:
        print(f"embed: cannot read the inputs: {err}", file=sys.stderr)
        return 1
    for r in rejects:
        say(f"rejected {r.id or '-'} ({r.audio or '-'}): {r.reason}")
    where = args.audio_dir or args.lhotse or args.manifest
    inputs = len(items) + len(rejects)
    if not inputs:
        print(f"embed: nothing to embed: no audio files ({', '.join(ef.AUDIO_SUFFIXES)}) in {where}", file=sys.stderr)
        return 1

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(items), unit="utt", desc="embed", file=sys.stderr, disable=args.quiet, dynamic_ncols=True) as bar:
        result = ef.embed_items(model, items, fields, args.batch_size, bar.update, say)
    rejects += result.rejects
    rejects_file = ef.write_rejects(args.out, rejects)
    if not result.ids:
        print(f"embed: nothing embedded: all {inputs} inputs from {where} were rejected (reasons in {rejects_file})",
              file=sys.stderr)  # fmt: skip
        return 1
    written = ef.write_npy(args.out, result, fields[0]) if args.out.suffix == ".npy" else ef.write_parquet(args.out, result)
    print(f"embedded {len(result.ids)} of {inputs} inputs on {device} -> {', '.join(map(str, written))}; "
          f"{len(rejects)} rejected ({rejects_file})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
