"""Speaker verification report: a fixed, speaker-disjoint trial list written with the run."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from ctal_ds.finetune.predict import Predictions
from ctal_ds.finetune.reports import ReportSettings, write_test_report
from ctal_ds.tasks import SpeakerTask
from ctal_ds.tasks.trials import read_trials


def unseen_speakers(n_speakers=4, utts=6, dim=8, seed=0, spread=3.0):
    """Embeddings around one centre per speaker; the centres' scale is ``spread`` times
    that of the scatter around them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_speakers, dim)) * spread
    ids, metas, embeddings = [], {}, []
    for k in range(n_speakers):
        for u in range(utts):
            utt = f"{900 + k}-7-{u:04d}"
            ids.append(utt)
            metas[utt] = {"id": utt, "speaker": str(900 + k), "split": "test-clean",
                          "source": f"test-clean/{900 + k}/7/{utt}.flac", "labels": {}}  # fmt: skip
            embeddings.append(centres[k] + rng.standard_normal(dim))
    preds = Predictions(tuple(ids), np.full(len(ids), -1), {"embedding": np.array(embeddings)})
    return preds, metas


SPEC = SpeakerTask(speakers=("100", "101"))


def trial_scores(trials, preds):
    """Cosine of each trial's two embeddings, and its label."""
    embedding = dict(zip(preds.ids, preds.outputs["embedding"]))
    scores = [float(embedding[t.a] @ embedding[t.b] / np.linalg.norm(embedding[t.a]) / np.linalg.norm(embedding[t.b]))
              for t in trials]  # fmt: skip
    return np.array(scores), np.array([t.label for t in trials])


def reference_min_dcf(scores, labels, p_target=0.01):
    """Lowest p_target P_miss + (1 - p_target) P_fa over every threshold (a trial is
    accepted at or above it, accepting nothing included), over min(p_target, 1 - p_target)."""
    target, nontarget = scores[labels == 1], scores[labels == 0]
    costs = [p_target * np.mean(target < t) + (1 - p_target) * np.mean(nontarget >= t)
             for t in [*scores, np.inf]]  # fmt: skip
    return min(costs) / min(p_target, 1 - p_target)


def reference_eer(scores, labels):
    """Where the ROC curve, linearly interpolated, crosses P_miss = P_fa."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)


def test_generated_trials_are_fixed_balanced_speaker_disjoint_pairs_of_test_utterances(tmp_path):
    preds, metas = unseen_speakers()
    settings = ReportSettings(n_target_trials=40, centroid_enrol=2)
    report = write_test_report(SPEC, preds, metas, tmp_path / "a", settings)
    trials_file = tmp_path / "a" / "trials.txt"
    assert trials_file in report.artifacts and (tmp_path / "a" / "tsne.png").is_file()
    lines = trials_file.read_text().splitlines()
    assert all(line.split()[1].startswith("test-clean/") for line in lines)  # VoxCeleb format, corpus paths
    trials = read_trials(trials_file)
    speaker = {u: m["speaker"] for u, m in metas.items()}
    assert sum(t.label for t in trials) == 40 and len(trials) == 80
    assert all((speaker[t.a] == speaker[t.b]) == (t.label == 1) and t.a != t.b for t in trials)
    assert len({frozenset((t.a, t.b)) for t in trials}) == 80
    assert not {speaker[u] for t in trials for u in (t.a, t.b)} & set(SPEC.speakers)
    again = write_test_report(SPEC, preds, metas, tmp_path / "b", settings)
    assert (tmp_path / "b" / "trials.txt").read_text() == trials_file.read_text()
    assert again.metrics == report.metrics
    # Well separated speakers: both protocols verify almost perfectly.
    assert report.metrics["eer"] < 0.1 and report.metrics["centroid_eer"] < 0.1
    scores, labels = trial_scores(trials, preds)
    assert report.metrics["min_dcf"] == pytest.approx(reference_min_dcf(scores, labels), abs=1e-12)
    assert report.metrics["eer"] == pytest.approx(reference_eer(scores, labels), abs=1e-9)


def test_reported_eer_and_min_dcf_are_those_of_the_cosine_scores_of_the_trials(tmp_path):
    preds, metas = unseen_speakers(spread=1.0)  # speakers that overlap: neither number is 0
    report = write_test_report(SPEC, preds, metas, tmp_path, ReportSettings(n_target_trials=40, centroid_enrol=2))
    scores, labels = trial_scores(read_trials(tmp_path / "trials.txt"), preds)
    expected_dcf, expected_eer = reference_min_dcf(scores, labels), reference_eer(scores, labels)
    assert 0.1 < expected_eer < 0.5 and 0.1 < expected_dcf < 1.0
    assert report.metrics["min_dcf"] == pytest.approx(expected_dcf, abs=1e-12)
    assert report.metrics["eer"] == pytest.approx(expected_eer, abs=1e-9)
    assert (report.metrics["n_target"], report.metrics["n_nontarget"]) == (40, 40)


def test_a_given_trial_list_is_scored_as_is(tmp_path):
    preds, metas = unseen_speakers()
    given = tmp_path / "given.txt"
    given.write_text("1 x/900-7-0000.flac x/900-7-0001.flac\n0 x/900-7-0000.flac x/901-7-0000.flac\n")
    report = write_test_report(SPEC, preds, metas, tmp_path, ReportSettings(trials=given, centroid_enrol=2))
    assert report.metrics["n_target"] == 1 and report.metrics["n_nontarget"] == 1
    assert not (tmp_path / "trials.txt").exists()


def test_a_trial_naming_an_utterance_outside_the_test_set_is_an_error(tmp_path):
    preds, metas = unseen_speakers()
    given = tmp_path / "given.txt"
    given.write_text("1 x/900-7-0000.flac x/555-7-0001.flac\n0 x/900-7-0000.flac x/901-7-0000.flac\n")
    with pytest.raises(KeyError, match="no embedding"):
        write_test_report(SPEC, preds, metas, tmp_path, ReportSettings(trials=given, centroid_enrol=2))
