"""The built-in demo speech corpus: synthetic, offline, and in the three layouts the
corpus readers (``ctal_ds.data.corpora``) parse.

    <out>/librispeech/   read speech: train-clean, test-clean and train-other, each
                         with its own speakers
    <out>/iemocap/       five sessions of emotional dialogue (ang hap exc neu sad fru xxx)
    <out>/mosei/         opinion clips with sentiment in [-3, 3] (MMSA label.csv)
    <out>/corpus.json    summary, written last: its presence marks a complete corpus

The default size (about 12,900 utterances) is shaped like the paper's setting,
960 h of pre-training against small labelled sets: the LibriSpeech layout's
train-clean + train-other (11,200 utterances) is over ten times each labelled set
(IEMOCAP 600 turns, MOSEI 810 clips, speaker verification's 960 train-clean
utterances), and train-other is expressive reading (``demo/prosody.py``), so
pre-training hears the pitch, range and rate of the emotion and sentiment sets.

Speech comes from espeak-ng (ctypes, ``demo/espeak.py``); what is said and how is
planned from the seed alone (``demo/plan.py``), so a seed gives the same files
byte for byte with any number of workers.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .demo import iemocap, librispeech, mosei
from .demo.plan import SIZES, CorpusSize, Utterance, layout_rng
from .demo.render import SAMPLE_RATE, Rendered, init_worker, render_in_worker
from .demo.speakers import SpeakerPool

log = logging.getLogger(__name__)

SUMMARY_FILE = "corpus.json"
LAYOUT_DIRS = (librispeech.ROOT, iemocap.ROOT, mosei.ROOT)
# Present while a build is running or after it was interrupted: marks the layout
# folders beside it as ours to replace.
INCOMPLETE_MARKER = ".demo_corpus_incomplete"


@dataclasses.dataclass
class DemoCorpusPlan:
    size: CorpusSize
    seed: int
    librispeech: librispeech.LibriPlan
    iemocap: iemocap.IemocapPlan
    mosei: list[mosei.Clip]

    def utterances(self) -> list[Utterance]:
        return ([u.utterance for u in self.librispeech.utterances]
                + [t.utterance for t in self.iemocap.turns]
                + [c.utterance for c in self.mosei])


def plan_demo_corpus(size: str = "default", seed: int = 0) -> DemoCorpusPlan:
    """Everything the corpus will contain (texts, voices, labels), without audio."""
    if size not in SIZES:
        raise ValueError(f"unknown demo corpus size {size!r}; expected one of {sorted(SIZES)}")
    spec = SIZES[size]
    # One pool for all layouts: no two speakers of the corpus share a voice.
    pool = SpeakerPool(layout_rng(seed, "speakers"))
    ls = librispeech.plan(spec, seed, layout_rng(seed, librispeech.ROOT), pool)
    iem = iemocap.plan(spec, seed, layout_rng(seed, iemocap.ROOT), pool)
    mo = mosei.plan(spec, seed, layout_rng(seed, mosei.ROOT), pool)
    # Drawn last from the pool, so the other layouts keep their voices whatever its size.
    ls = librispeech.add_train_other(
        ls, spec, seed, layout_rng(seed, f"{librispeech.ROOT}/{librispeech.TRAIN_OTHER}"), pool)
    return DemoCorpusPlan(size=spec, seed=seed, librispeech=ls, iemocap=iem, mosei=mo)


def build_demo_corpus(
    out_dir: str | os.PathLike,
    size: str = "default",
    seed: int = 0,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Synthesise the demo corpus into ``out_dir`` and return its summary.

    If ``out_dir`` already holds a complete corpus (``corpus.json``), nothing is done
    and its summary is returned with ``"skipped": True``; ``force`` rebuilds it.
    Layout folders that are not from an earlier (possibly interrupted) build of this
    function are never removed without ``force``.
    """
    out = Path(out_dir)
    summary_path = out / SUMMARY_FILE
    if summary_path.is_file() and not force:
        log.info("%s already holds a complete demo corpus; not rebuilding (use force)", out)
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        return {**summary, "skipped": True}
    _clear_previous_build(out, force)

    started = time.perf_counter()
    corpus = plan_demo_corpus(size, seed)
    jobs = corpus.utterances()
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE_MARKER).write_text("a demo corpus build is running or was interrupted\n")
    rendered = _render_all(jobs, out, workers, progress)
    seconds = {r.path: r.seconds for r in rendered.values()}

    layouts = {
        librispeech.ROOT: librispeech.write_metadata(out, corpus.librispeech, seconds),
        iemocap.ROOT: iemocap.write_metadata(out, corpus.iemocap, seconds),
        mosei.ROOT: mosei.write_metadata(out, corpus.mosei, seconds),
    }
    durations = np.array(list(seconds.values()))
    summary = {
        "corpus": "ctal-ds demo corpus",
        "size": size,
        "seed": seed,
        "sample_rate": SAMPLE_RATE,
        "synthesiser": f"espeak-ng (espeakng-loader {importlib.metadata.version('espeakng-loader')})",
        "utterances": len(jobs),
        "speakers": sum(layouts[k]["speakers"] for k in layouts),
        "seconds": round(float(durations.sum()), 1),
        "utterance_seconds": {
            "min": round(float(durations.min()), 2),
            "mean": round(float(durations.mean()), 2),
            "max": round(float(durations.max()), 2),
        },
        "layouts": layouts,
        "build": {"seconds": round(time.perf_counter() - started, 1), "workers": workers},
    }
    # Written last, atomically: a corpus.json on disk means every file above exists.
    tmp = summary_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, summary_path)
    (out / INCOMPLETE_MARKER).unlink()
    log.info("demo corpus at %s: %d utterances, %.1f min of audio, %.1f s to build",
             out, len(jobs), summary["seconds"] / 60, summary["build"]["seconds"])
    return summary


def _clear_previous_build(out: Path, force: bool) -> None:
    ours = (out / SUMMARY_FILE).is_file() or (out / INCOMPLETE_MARKER).is_file()
    present = [name for name in LAYOUT_DIRS if (out / name).exists()]
    if present and not (ours or force):
        raise FileExistsError(
            f"{out} already has {present} from something other than a demo corpus build;"
            " choose an empty folder or pass force to replace them"
        )
    for name in present:
        shutil.rmtree(out / name)
    (out / SUMMARY_FILE).unlink(missing_ok=True)


def _render_all(jobs: list[Utterance], out: Path, workers: int, progress: bool) -> dict[str, Rendered]:
    bar = tqdm(total=len(jobs), unit="utt", desc="synthesising", disable=not progress)
    results: dict[str, Rendered] = {}
    try:
        if workers == 1:
            init_worker(str(out))
            for utt in jobs:
                results[utt.path] = render_in_worker(utt)
                bar.update()
        else:
            # forkserver: workers start clean, whatever threads the caller runs.
            ctx = multiprocessing.get_context("forkserver")
            with ctx.Pool(workers, initializer=init_worker, initargs=(str(out),)) as pool:
                for r in pool.imap_unordered(render_in_worker, jobs, chunksize=16):
                    results[r.path] = r
                    bar.update()
    finally:
        bar.close()
    return results
