"""Cosine scoring of speaker embeddings: trial lists and the centroid protocol."""

from __future__ import annotations

import numpy as np
import pytest

from ctal_ds.tasks.trials import Trial, make_trials
from ctal_ds.tasks.verification import (
    centroid_eer,
    cosine_matrix,
    cosine_scores,
    score_trials,
    verification_metrics,
)


def test_cosine_scores_pair_rows_and_score_a_zero_embedding_zero():
    scores = cosine_scores(
        [[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, -3.0], [1.0, 0.0]]
    )
    np.testing.assert_allclose(scores, [1 / np.sqrt(2), -1.0, 0.0])
    np.testing.assert_allclose(cosine_matrix([[1.0, 0.0]], [[2.0, 0.0], [0.0, 1.0]]), [[1.0, 0.0]])


def speaker_embeddings(n_speakers=4, utts=6, noise=0.05, seed=0):
    """Utterance embeddings clustered around one random direction per speaker."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_speakers, 16))
    ids, speakers, rows = [], [], []
    for s in range(n_speakers):
        for u in range(utts):
            ids.append(f"{s}-1-{u:04d}")
            speakers.append(str(s))
            rows.append(centres[s] + noise * rng.normal(size=16))
    return ids, np.array(rows), speakers


def test_well_separated_speakers_verify_without_error(librispeech):
    ids, emb, speakers = speaker_embeddings()
    records = [r for s in set(speakers) for r in librispeech("test-clean", [s], utts=6, chapter=1)]
    trials = make_trials(records, 20, seed=0)
    m = verification_metrics(trials, dict(zip(ids, emb)))
    assert m["eer"] == 0.0 and m["min_dcf"] == 0.0
    assert (m["n_target"], m["n_nontarget"]) == (20, 20)


def test_a_trial_utterance_without_an_embedding_is_named():
    with pytest.raises(KeyError, match="1 trial utterance\\(s\\) have no embedding, e.g. b"):
        score_trials([Trial(1, "a", "b")], {"a": np.ones(3)})


def test_centroid_protocol_enrols_and_tests_on_disjoint_utterances_drawn_without_replacement():
    ids, emb, speakers = speaker_embeddings(utts=8)
    result = centroid_eer(ids, emb, speakers, n_enrol=3, seed=5)
    for spk in set(speakers):
        enrol, test = result.enrolment[spk], result.test[spk]
        assert len(enrol) == len(set(enrol)) == 3
        assert not set(enrol) & set(test)
        assert sorted(enrol + test) == sorted(u for u, s in zip(ids, speakers) if s == spk)
    assert result.eer == 0.0


def test_centroid_protocol_is_fixed_by_the_seed_and_can_cap_test_utterances():
    ids, emb, speakers = speaker_embeddings(utts=8, noise=2.0)
    first = centroid_eer(ids, emb, speakers, n_enrol=2, n_test=3, seed=1)
    assert first == centroid_eer(ids, emb, speakers, n_enrol=2, n_test=3, seed=1)
    assert all(len(t) == 3 for t in first.test.values())
    assert 0.0 < first.eer < 0.5  # noisy embeddings: some errors, better than chance


def test_centroid_protocol_needs_a_test_utterance_beyond_enrolment():
    ids, emb, speakers = speaker_embeddings(utts=3)
    with pytest.raises(ValueError, match="has 3 utterance\\(s\\); 3 enrolment \\+ 1 test needed"):
        centroid_eer(ids, emb, speakers, n_enrol=3)
