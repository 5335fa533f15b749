"""LibriSpeech speaker verification on the unseen test speakers (paper section 4.2.3).

Embeddings are the layer before the speaker classifier. Two protocols are reported:

- the trial list (the reported EER and minDCF): a given VoxCeleb-format file
  (``ReportSettings.trials``, utterances named by path, matched by file stem), or a
  fixed, balanced, speaker-disjoint list drawn from the test utterances with
  ``make_trials`` and written into the run directory, so every variant is scored on
  the same pairs and the list can be reused;
- the public release's centroid protocol, corrected to enrol without replacement
  (``centroid_eer``), for comparison with its numbers.

The t-SNE of figure 4 shows the first speakers of the test set (sorted ids).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ctal_ds.finetune.data import record_of
from ctal_ds.finetune.predict import Predictions
from ctal_ds.finetune.reports.base import Report, ReportSettings
from ctal_ds.tasks.base import TaskSpec
from ctal_ds.tasks.plots import plot_tsne
from ctal_ds.tasks.trials import Trial, make_trials, read_trials, write_trials
from ctal_ds.tasks.verification import centroid_eer, verification_metrics

TRIALS_FILE = "trials.txt"


def fixed_trials(spec: TaskSpec, metas: Mapping[str, dict], out: Path, settings: ReportSettings) -> tuple[list[Trial], Path]:
    """The trial list to score: the given file, or one generated and written to ``out``."""
    if settings.trials is not None:
        return read_trials(settings.trials, key="stem"), Path(settings.trials)
    records = [record_of(m) for m in metas.values()]
    per_speaker: dict[str, int] = defaultdict(int)
    for r in records:
        per_speaker[r.speaker] += 1
    target_pairs = sum(n * (n - 1) // 2 for n in per_speaker.values())
    n = min(settings.n_target_trials, target_pairs)
    trials = make_trials(records, n, seed=settings.trial_seed, train_speakers=spec.speakers)
    path = Path(out) / TRIALS_FILE
    # Paths relative to the corpus root (the shard JSON's source), as VoxCeleb lists are.
    write_trials(path, trials, {u: m.get("source") or u for u, m in metas.items()})
    return trials, path


def speaker_report(
    spec: TaskSpec, preds: Predictions, metas: Mapping[str, dict], out: Path, settings: ReportSettings, title: str = ""
) -> Report:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    embeddings = preds.outputs["embedding"]
    embedding_of = dict(zip(preds.ids, embeddings))
    trials, trials_path = fixed_trials(spec, {u: metas[u] for u in preds.ids}, out, settings)
    metrics = verification_metrics(trials, embedding_of)
    speakers = [metas[u]["speaker"] for u in preds.ids]
    centroid = centroid_eer(preds.ids, embeddings, speakers, settings.centroid_enrol, seed=settings.trial_seed)
    metrics["centroid_eer"] = centroid.eer
    shown = sorted(set(speakers))[: settings.tsne_speakers]
    rows: list[int] = []
    for spk in shown:
        rows += [i for i, s in enumerate(speakers) if s == spk][: settings.tsne_utterances]
    png = plot_tsne(embeddings[np.array(rows)], [speakers[i] for i in rows], out / "tsne.png", title=title)
    details = {"trials": str(trials_path), "n_trials": len(trials), "centroid_enrol": settings.centroid_enrol}
    return Report(metrics, [trials_path, png] if settings.trials is None else [png], details)
