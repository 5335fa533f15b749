"""Mutation check: faults planted one at a time, each of which the fast suite must catch.

Every mutant is a list of exact source replacements. It is applied to a fresh copy of
the repository (the files git tracks plus untracked files it does not ignore) in a
temporary folder; the real tree is never edited. An anchor (the text a replacement
replaces) that does not occur exactly once is an error that stops the run, so a
refactor cannot silently turn a mutant into a no-op; `--check` verifies the anchors
alone.

A mutant is caught when the fast suite (`pytest -m "not slow"`) fails on its copy:

1. its target files (the tests most likely to catch it) run with `-x`;
2. only if they pass, the rest of the fast suite runs with `-x`, and a test that fails
   there is re-run on the unmutated copy, where it must pass.

Before any mutant, the union of the target files runs on an unmutated copy and must
pass, so that "caught" means the fault turned the tests red. A pytest run that ends
in anything other than pass or test failure (a collection error, a usage error, the
time limit) is an error, not a catch. The exit status is 0 when every mutant was
caught, 1 when one was not, 2 on an error.

    python tests/mutants.py                     # every mutant
    python tests/mutants.py --only loss-accum   # some of them
    python tests/mutants.py --list | --check
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The fast-suite test that checks these anchors against the tree. Under a mutant its
# anchor is gone, so it would fail for that reason alone; it is never run on a copy.
SELF_TEST = "tests/test_mutants.py"
FAST = ["-m", "not slow"]
COMMON = ["-x", "-q", "-rfE", "-p", "no:cacheprovider", "-p", "no:xdist", *FAST]
RUN_LIMIT_S = 3600


class MutantError(RuntimeError):
    """A mutant that cannot be applied, or a run whose outcome is neither pass nor fail."""


@dataclasses.dataclass(frozen=True)
class Edit:
    path: str
    old: str
    new: str


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    plants: str
    edits: tuple[Edit, ...]
    targets: tuple[str, ...]


MUTANTS = (
    Mutant(
        "finetune-last-weights",
        "fine-tune test split scored with the last weights, not the dev-selected ones",
        (Edit("ctal_ds/finetune/task.py",
              "        load_module_weights(engine, self.selection.best_dir())\n",
              "        pass\n"),),
        ("tests/finetune/test_selection.py", "tests/finetune/test_selection_run.py"),
    ),
    Mutant(
        "checkpoint-hash",
        "checkpoint verification never compares sha256 digests",
        (Edit("ctal_ds/train/checkpoint.py",
              '        if digest != entry["sha256"]:\n',
              "        if False:\n"),),
        ("tests/train/test_checkpoint_files.py",),
    ),
    Mutant(
        "audio-causal",
        "audio self-attention causal (frame t sees frames <= t only)",
        (Edit("ctal_ds/model/layers.py",
              "        h_a = self.self_attention_norm(self.self_attention(h_a, audio_mask), h_a)\n",
              "        h_a = self.self_attention_norm(torch.cat([self.self_attention(h_a[:, : t + 1], "
              "audio_mask[:, : t + 1])[:, t:] for t in range(h_a.shape[1])], dim=1), h_a)\n"),),
        ("tests/model/test_backbone.py",),
    ),
    Mutant(
        "audio-padding-mask",
        "audio self-attention ignores the key-padding mask (padded frames are attended)",
        (Edit("ctal_ds/model/layers.py",
              "        h_a = self.self_attention_norm(self.self_attention(h_a, audio_mask), h_a)\n",
              "        h_a = self.self_attention_norm(self.self_attention(h_a, torch.ones_like(audio_mask)), h_a)\n"),),
        ("tests/model/test_backbone.py",),
    ),
    Mutant(
        "mlm-labels-on-padding",
        "MLM labels padded with the pad id instead of the ignore index (loss on padding)",
        (Edit("ctal_ds/data/collate.py",
              "        labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)\n",
              "        labels = np.full(input_ids.shape, self.pad_id, dtype=np.int64)\n"),),
        ("tests/data/test_masking.py", "tests/model/test_pretraining.py"),
    ),
    Mutant(
        "mcam-on-padding",
        "MCAM segments drawn over the padded row, so padded frames get selected",
        (Edit("ctal_ds/data/collate.py",
              "            plan = self._mcam.plan(s.n_frames, sample_rng(self.seed, epoch, s.key, MCAM_STREAM))\n",
              "            plan = self._mcam.plan(frames.shape[1], sample_rng(self.seed, epoch, s.key, MCAM_STREAM))\n"),),
        ("tests/data/test_masking.py", "tests/model/test_pretraining.py"),
    ),
    Mutant(
        "loss-accum",
        "loss divided by the accumulation steps again (the engine already scales it)",
        (Edit("ctal_ds/train/trainer.py",
              "            engine.backward(out[parts[0]])\n",
              "            engine.backward(out[parts[0]] / engine.gradient_accumulation_steps())\n"),),
        ("tests/train/test_accumulation.py",),
    ),
    Mutant(
        "loader-resume",
        "loader state records the last consumed batch as the next one (resume repeats it)",
        (Edit("ctal_ds/data/loader.py",
              "(item.epoch + 1, 0) if item.last else (item.epoch, item.index + 1)",
              "(item.epoch + 1, 0) if item.last else (item.epoch, item.index)"),),
        ("tests/data/test_loader.py",),
    ),
    Mutant(
        "reject-dropped",
        "unreadable audio at shard building left out of the shards and of rejects.jsonl",
        (Edit("ctal_ds/data/shard_writer.py",
              "            rejections.append(Rejection(item.record.audio, err.reason, item.record.id))\n",
              "            pass\n"),),
        ("tests/data/test_shards.py",),
    ),
    Mutant(
        "nonfinite-reject-dropped",
        "utterance with non-finite features left out of the shards and of rejects.jsonl",
        (Edit("ctal_ds/data/shard_writer.py",
              '            rejections.append(Rejection(item.record.audio, "non-finite features", item.record.id))\n',
              "            pass\n"),),
        ("tests/data/test_shards.py",),
    ),
)


# Applying ----------------------------------------------------------------------------


def mutated_sources(mutant: Mutant, root: Path) -> dict[str, str]:
    """The mutated text of every file `mutant` edits under `root`; raises MutantError
    unless each anchor occurs exactly once."""
    texts: dict[str, str] = {}
    for edit in mutant.edits:
        path = root / edit.path
        if edit.path not in texts:
            if not path.is_file():
                raise MutantError(f"mutant {mutant.name}: {edit.path} does not exist")
            texts[edit.path] = path.read_text(encoding="utf-8")
        count = texts[edit.path].count(edit.old)
        if count != 1:
            raise MutantError(
                f"mutant {mutant.name}: anchor found {count} times in {edit.path} (must be exactly once); "
                f"update the mutant to the current code. Anchor:\n{edit.old}"
            )
        texts[edit.path] = texts[edit.path].replace(edit.old, edit.new)
    return texts


def copy_tree(dest: Path) -> Path:
    """Copy the files git tracks, and the untracked ones it does not ignore, to `dest`."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode("utf-8")
    for name in filter(None, listing.split("\0")):
        src = REPO / name
        if src.is_file():  # a tracked file deleted in the working tree is left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


# Running -----------------------------------------------------------------------------


@dataclasses.dataclass
class PytestRun:
    rc: int
    failed: list[str]
    output: str


def run_pytest(copy: Path, args: list[str], what: str) -> PytestRun:
    env = dict(os.environ)
    # The copy's packages first: the venv's editable install points at the real tree.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy), env.get("PYTHONPATH")]))
    # Share the real tree's JIT-built DeepSpeed ops instead of rebuilding them per copy.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env.setdefault("MPLBACKEND", "Agg")
    basetemp = copy.parent / f"{copy.name}-pytest"
    cmd = [sys.executable, "-m", "pytest", *COMMON, f"--basetemp={basetemp}", *args]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S)
    except subprocess.TimeoutExpired as err:
        raise MutantError(f"{what}: pytest did not finish within {RUN_LIMIT_S} s: {' '.join(cmd)}") from err
    finally:
        shutil.rmtree(basetemp, ignore_errors=True)
    output = proc.stdout + proc.stderr
    failed = [m.group(2) for m in re.finditer(r"^(FAILED|ERROR) (.+?)(?: - .*)?$", output, re.M)]
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not failed):
        raise MutantError(f"{what}: pytest exited {proc.returncode} ({' '.join(args)}):\n{output[-4000:]}")
    return PytestRun(proc.returncode, failed, output)


@dataclasses.dataclass
class Result:
    mutant: Mutant
    caught: str  # "yes" or "no ..."
    by: list[str]
    seconds: float


def check_mutant(mutant: Mutant, work: Path, baseline: Path) -> Result:
    start = time.monotonic()
    copy = copy_tree(work / mutant.name)
    for path, text in mutated_sources(mutant, copy).items():
        (copy / path).write_text(text, encoding="utf-8")
    targeted = run_pytest(copy, list(mutant.targets), f"mutant {mutant.name}, target files")
    if targeted.rc == 1:
        return Result(mutant, "yes", targeted.failed, time.monotonic() - start)
    ignores = [f"--ignore={t}" for t in (*mutant.targets, SELF_TEST)]
    rest = run_pytest(copy, ["tests", *ignores], f"mutant {mutant.name}, rest of the fast suite")
    if rest.rc == 0:
        return Result(mutant, "no", [], time.monotonic() - start)
    unmutated = run_pytest(baseline, rest.failed, f"unmutated copy, {' '.join(rest.failed)}")
    if unmutated.rc != 0:
        return Result(mutant, "no (fails unmutated too)", rest.failed, time.monotonic() - start)
    return Result(mutant, "yes", rest.failed, time.monotonic() - start)


def print_table(results: list[Result]) -> None:
    rows = [("mutant", "plants", "caught", "by (first failing tests)", "s")]
    rows += [(r.mutant.name, r.mutant.plants, r.caught, ", ".join(r.by) or "-", f"{r.seconds:.0f}") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="verify that every anchor applies, run no tests")
    parser.add_argument("--workdir", type=Path, help="where the copies go (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the copies")
    args = parser.parse_args(argv)

    by_name = {m.name: m for m in MUTANTS}
    unknown = sorted(set(args.only or ()) - set(by_name))
    if unknown:
        parser.error(f"unknown mutant(s) {unknown}; choose from {list(by_name)}")
    mutants = [by_name[n] for n in by_name if not args.only or n in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.plants} [{', '.join(sorted({e.path for e in m.edits}))}]")
        return 0
    try:
        for m in mutants:
            mutated_sources(m, REPO)
            missing = [t for t in m.targets if not (REPO / t).is_file()]
            if missing:
                raise MutantError(f"mutant {m.name}: target file(s) {missing} do not exist")
    except MutantError as err:
        print(f"mutants: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{len(mutants)} mutants apply to {REPO}")
        return 0

    work = Path(tempfile.mkdtemp(prefix="ctal-mutants-", dir=args.workdir))
    results: list[Result] = []
    try:
        start = time.monotonic()
        baseline = copy_tree(work / "unmutated")
        targets = sorted({t for m in mutants for t in m.targets})
        base = run_pytest(baseline, targets, "unmutated copy, target files")
        if base.rc != 0:
            print(f"mutants: the target files fail without any fault ({', '.join(base.failed)}); "
                  f"a catch would mean nothing:\n{base.output[-4000:]}", file=sys.stderr)  # fmt: skip
            return 2
        print(f"unmutated copy: {len(targets)} target files pass ({time.monotonic() - start:.0f} s)", flush=True)
        for m in mutants:
            results.append(check_mutant(m, work, baseline))
            r = results[-1]
            print(f"{m.name}: caught {r.caught} by {', '.join(r.by) or '-'} ({r.seconds:.0f} s)", flush=True)
            if not args.keep:
                shutil.rmtree(work / m.name, ignore_errors=True)
    except MutantError as err:
        print(f"mutants: {err}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(results)
    missed = [r.mutant.name for r in results if r.caught != "yes"]
    if missed:
        print(f"\nnot caught: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
