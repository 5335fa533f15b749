"""Evaluation metrics of the three downstream tasks (paper section 4.2), in plain numpy.

Classification (IEMOCAP):
    WA  = sum_c n_cc / N                    overall accuracy
    UA  = mean_c ( n_cc / n_c. )            mean per-class recall, over classes present in y_true

Sentiment regression (CMU-MOSEI, the MulT / MMSA convention the paper follows):
    MAE = mean |p_i - y_i|                  over all utterances
    r   = Pearson correlation(p, y)         over all utterances
    Acc2, F1 over the utterances with y_i != 0 only (neutral labels have no polarity):
        truth = y_i > 0, prediction = p_i > 0 (a prediction of exactly 0 counts as negative);
        F1 = support-weighted mean of the per-class F1 of the two classes.

Verification (LibriSpeech), a trial is accepted when its score >= threshold t:
    FAR(t) = #{non-target trials accepted} / #non-target
    FRR(t) = #{target trials rejected}     / #target
    EER    = the value where FAR and FRR cross on the ROC
    minDCF = min_t [C_miss P_target FRR(t) + C_fa (1 - P_target) FAR(t)]
             / min(C_miss P_target, C_fa (1 - P_target))          (NIST SRE / VoxSRC)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"{t.size} labels but {p.size} predictions")
    if t.size == 0:
        raise ValueError("no labels: a metric over zero utterances is undefined")
    return t, p


# --------------------------------------------------------------------------- classification


def weighted_accuracy(y_true, y_pred) -> float:
    """WA: the fraction of utterances whose predicted class is the true class."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def unweighted_accuracy(y_true, y_pred) -> float:
    """UA: per-class recall averaged over the classes present in ``y_true``, so each
    emotion weighs the same however rare it is (IEMOCAP is dominated by neutral)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean([np.mean(p[t == c] == c) for c in np.unique(t)]))


def confusion_matrix(y_true, y_pred, labels: Sequence) -> np.ndarray:
    """``cm[i, j]`` = number of utterances of true class ``labels[i]`` predicted as
    ``labels[j]``. A value outside ``labels`` is an error, not a silently dropped row."""
    t, p = _pair(y_true, y_pred)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(v) for v in np.concatenate([t, p]).tolist() if v not in index})
    if unknown:
        raise ValueError(f"values {unknown} are not among labels {list(labels)}")
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(cm, ([index[v] for v in t.tolist()], [index[v] for v in p.tolist()]), 1)
    return cm


# --------------------------------------------------------------------------- sentiment


def _weighted_binary_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    # F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c), 0 when the class is never true nor predicted,
    # weighted by the true support of c (sklearn ``average="weighted"``). MulT passes its
    # arguments as f1_score(preds, truth), which weights by predicted support instead;
    # MMSA and we weight by the true support.
    score = 0.0
    for c in (False, True):
        tp = np.sum((pred == c) & (truth == c))
        fp = np.sum((pred == c) & (truth != c))
        fn = np.sum((pred != c) & (truth == c))
        denom = 2 * tp + fp + fn
        score += (np.sum(truth == c) / truth.size) * (2 * tp / denom if denom else 0.0)
    return float(score)


def mae(preds, labels) -> float:
    p, y = _pair(preds, labels)
    return float(np.mean(np.abs(p.astype(np.float64) - y)))


def pearson_r(preds, labels) -> float:
    """Pearson correlation; NaN when either side is constant (no correlation is defined)."""
    p, y = (a.astype(np.float64) for a in _pair(preds, labels))
    dp, dy = p - p.mean(), y - y.mean()
    denom = np.sqrt(np.sum(dp * dp) * np.sum(dy * dy))
    return float(np.sum(dp * dy) / denom) if denom > 0 else float("nan")


def sentiment_metrics(preds, labels) -> dict[str, float]:
    """``acc2``, ``f1`` (non-zero labels only), ``mae``, ``pearson_r`` (all labels)."""
    p, y = (a.astype(np.float64) for a in _pair(preds, labels))
    non_zero = y != 0
    if not non_zero.any():
        raise ValueError("every label is 0: Acc2 and F1 need at least one polar label")
    truth, pred = y[non_zero] > 0, p[non_zero] > 0
    return {
        "acc2": float(np.mean(truth == pred)),
        "f1": _weighted_binary_f1(truth, pred),
        "mae": mae(p, y),
        "pearson_r": pearson_r(p, y),
    }


# --------------------------------------------------------------------------- verification


def _roc(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAR, FRR and threshold at every distinct score, from "accept nothing" (threshold
    +inf) down to "accept everything"; tied scores move together, so each step of the ROC
    is one threshold a real system could use."""
    s, y = _pair(scores, labels)
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("trial labels must be 1 (target) or 0 (non-target)")
    s, y = s.astype(np.float64), y == 1
    n_target, n_nontarget = int(y.sum()), int((~y).sum())
    if n_target == 0 or n_nontarget == 0:
        raise ValueError(f"need both kinds of trial: {n_target} target, {n_nontarget} non-target")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    accepted_targets = np.cumsum(y)[last_of_tie]
    accepted_nontargets = np.cumsum(~y)[last_of_tie]
    far = np.r_[0.0, accepted_nontargets / n_nontarget]
    frr = np.r_[1.0, 1.0 - accepted_targets / n_target]
    thresholds = np.r_[np.inf, s[last_of_tie]]
    return far, frr, thresholds


def eer(scores, labels) -> tuple[float, float]:
    """Equal error rate and its threshold, exact on the ROC.

    d = FRR - FAR falls strictly, from 1 (threshold +inf) to -1 (accept all), as each ROC
    step raises FAR or lowers FRR. Between the last ROC point
    i with FRR >= FAR and the next, the ROC is a straight segment; the EER is where that
    segment meets FAR = FRR: with a = d_i / (d_i - d_{i+1}),
    EER = FAR_i + a (FAR_{i+1} - FAR_i). This equals the usual
    ``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)`` without a root finder.
    The threshold is interpolated the same way between the two points' thresholds (the
    +inf of the first point is replaced by the highest score).
    """
    far, frr, thresholds = _roc(scores, labels)
    d = frr - far
    i = int(np.nonzero(d >= 0)[0][-1])  # d[0] = 1 and d[-1] = -1, so 0 <= i < len(d) - 1
    if d[i] == 0:
        return float(far[i]), float(thresholds[i])
    a = d[i] / (d[i] - d[i + 1])
    t_i = thresholds[max(i, 1)]
    return float(far[i] + a * (far[i + 1] - far[i])), float(t_i + a * (thresholds[i + 1] - t_i))


def min_dcf(
    scores, labels, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Minimum normalised detection cost and the threshold that reaches it.

    The cost is normalised by the cost of the best threshold-free system (accept all or
    reject all), so 1.0 means "no better than ignoring the scores". The defaults are
    VoxSRC's (P_target 0.01, C_miss = C_fa = 1). The extreme thresholds (accept nothing,
    accept everything) are candidates, so the result never exceeds 1.
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    far, frr, thresholds = _roc(scores, labels)
    cost = c_miss * p_target * frr + c_fa * (1.0 - p_target) * far
    c_default = min(c_miss * p_target, c_fa * (1.0 - p_target))
    best = int(np.argmin(cost))
    return float(cost[best] / c_default), float(thresholds[best])
