"""Scoring speaker embeddings (paper section 4.2.3): cosine similarity of the
representations before the speaker classifier, EER over a trial list.

Two protocols:
- trial list (the reported one): a fixed list of utterance pairs (``trials.py``),
  each scored by the cosine of the two embeddings;
- centroid (the public release's, corrected): per test speaker, enrolment utterances
  are drawn WITHOUT replacement, their mean embedding is the speaker model, and every
  held-out utterance is scored against every speaker model. The release drew with
  replacement, so a test utterance could also be in its own enrolment set, which
  lowers the EER.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from ctal_ds.tasks.metrics import eer, min_dcf
from ctal_ds.tasks.trials import Trial


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    # A zero embedding has no direction; score it 0 against everything instead of NaN.
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def cosine_scores(emb_a, emb_b) -> np.ndarray:
    """Cosine similarity of paired rows: [N, D] and [N, D] -> [N]."""
    a, b = _unit(emb_a), _unit(emb_b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [N, D] arrays of one shape, got {a.shape} and {b.shape}")
    return np.einsum("nd,nd->n", a, b)


def cosine_matrix(emb_a, emb_b) -> np.ndarray:
    """Cosine similarity of every row of ``emb_a`` [N, D] with every row of ``emb_b`` [M, D]."""
    return _unit(emb_a) @ _unit(emb_b).T


def score_trials(
    trials: Sequence[Trial], embedding_of: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores and 0/1 labels of ``trials``; an utterance without an embedding is an error."""
    missing = sorted({u for t in trials for u in (t.a, t.b) if u not in embedding_of})
    if missing:
        raise KeyError(f"{len(missing)} trial utterance(s) have no embedding, e.g. {missing[0]}")
    a = np.stack([embedding_of[t.a] for t in trials])
    b = np.stack([embedding_of[t.b] for t in trials])
    return cosine_scores(a, b), np.array([t.label for t in trials], dtype=np.int64)


def verification_metrics(
    trials: Sequence[Trial], embedding_of: Mapping[str, np.ndarray], p_target: float = 0.01
) -> dict[str, float]:
    """``eer``, ``min_dcf`` (at ``p_target``), their thresholds and the trial counts."""
    scores, labels = score_trials(trials, embedding_of)
    e, e_threshold = eer(scores, labels)
    dcf, dcf_threshold = min_dcf(scores, labels, p_target=p_target)
    return {
        "eer": e,
        "eer_threshold": e_threshold,
        "min_dcf": dcf,
        "min_dcf_threshold": dcf_threshold,
        "n_target": int(labels.sum()),
        "n_nontarget": int((labels == 0).sum()),
    }


@dataclasses.dataclass(frozen=True)
class CentroidResult:
    eer: float
    threshold: float
    enrolment: dict[str, tuple[str, ...]]  # speaker -> enrolment utterance ids
    test: dict[str, tuple[str, ...]]  # speaker -> scored utterance ids


def centroid_eer(
    ids: Sequence[str],
    embeddings: np.ndarray,
    speakers: Sequence[str],
    n_enrol: int,
    n_test: int | None = None,
    seed: int = 0,
) -> CentroidResult:
    """EER of the centroid protocol over utterances ``ids`` (rows of ``embeddings``).

    Per speaker, one seeded shuffle of its utterances gives the first ``n_enrol`` for
    enrolment and the next ``n_test`` (default: all the rest) for test, so the two sets
    are disjoint. The centroid is the mean of the unit-normalised enrolment embeddings.
    Each test utterance is scored against every centroid: one target trial (its own
    speaker) and S - 1 non-target trials. Every speaker needs n_enrol + 1 utterances.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if not len(ids) == len(speakers) == len(embeddings):
        raise ValueError(f"{len(ids)} ids, {len(speakers)} speakers, {len(embeddings)} embeddings")
    if len(set(ids)) != len(ids):
        raise ValueError("ids contain duplicates")
    if n_enrol < 1:
        raise ValueError(f"n_enrol must be >= 1, got {n_enrol}")
    rows: dict[str, list[int]] = defaultdict(list)
    for row, spk in enumerate(speakers):
        rows[spk].append(row)
    if len(rows) < 2:
        raise ValueError("the centroid protocol needs 2+ speakers")
    rng = np.random.default_rng(seed)
    order = sorted(rows)
    enrol_rows, test_rows = {}, {}
    for spk in order:
        members = sorted(rows[spk], key=lambda r: ids[r])
        if len(members) <= n_enrol:
            raise ValueError(
                f"speaker {spk!r} has {len(members)} utterance(s); {n_enrol} enrolment + 1 test needed"
            )
        shuffled = [members[k] for k in rng.permutation(len(members))]
        enrol_rows[spk] = shuffled[:n_enrol]
        stop = None if n_test is None else n_enrol + n_test
        test_rows[spk] = shuffled[n_enrol:stop]
    centroids = np.stack([_unit(embeddings[enrol_rows[s]]).mean(axis=0) for s in order])
    test_all = [r for s in order for r in test_rows[s]]
    truth = np.repeat(np.arange(len(order)), [len(test_rows[s]) for s in order])
    scores = cosine_matrix(embeddings[test_all], centroids)  # [T, S]
    labels = (truth[:, None] == np.arange(len(order))[None, :]).astype(np.int64)
    e, threshold = eer(scores.ravel(), labels.ravel())
    return CentroidResult(
        eer=e,
        threshold=threshold,
        enrolment={s: tuple(ids[r] for r in enrol_rows[s]) for s in order},
        test={s: tuple(ids[r] for r in test_rows[s]) for s in order},
    )
