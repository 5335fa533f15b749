"""Metric formulas against values worked out by hand (paper section 4.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from scipy.stats import norm
from sklearn.metrics import roc_curve

from ctal_ds.tasks.metrics import (
    confusion_matrix,
    eer,
    mae,
    min_dcf,
    pearson_r,
    sentiment_metrics,
    unweighted_accuracy,
    weighted_accuracy,
)

# Ten utterances, four classes. Per true class (correct / total):
#   0: 3 / 4    1: 1 / 2    2: 2 / 3    3: 1 / 1
Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2, 3]
Y_PRED = [0, 0, 0, 1, 1, 2, 2, 2, 0, 3]


def test_wa_is_the_fraction_of_correct_utterances():
    assert weighted_accuracy(Y_TRUE, Y_PRED) == pytest.approx((3 + 1 + 2 + 1) / 10)


def test_ua_is_the_mean_of_per_class_recalls():
    assert unweighted_accuracy(Y_TRUE, Y_PRED) == pytest.approx((3 / 4 + 1 / 2 + 2 / 3 + 1 / 1) / 4)


def test_ua_averages_only_classes_present_in_the_truth():
    # class 3 is predicted once but never true: it has no recall and does not count
    assert unweighted_accuracy([0, 0, 1], [0, 3, 1]) == pytest.approx((1 / 2 + 1) / 2)


def test_confusion_matrix_rows_are_true_classes_and_columns_predictions():
    expected = [
        [3, 1, 0, 0],
        [0, 1, 1, 0],
        [1, 0, 2, 0],
        [0, 0, 0, 1],
    ]
    np.testing.assert_array_equal(confusion_matrix(Y_TRUE, Y_PRED, [0, 1, 2, 3]), expected)


def test_confusion_matrix_refuses_a_value_outside_the_labels():
    with pytest.raises(ValueError, match="not among labels"):
        confusion_matrix([0, 1], [0, 7], [0, 1])


def test_classification_metrics_refuse_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="2 labels but 3 predictions"):
        weighted_accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="no labels"):
        unweighted_accuracy([], [])


# --------------------------------------------------------------------------- sentiment

LABELS = [2.0, -1.0, 0.0, 0.5, -2.5, 0.0, 1.0]
PREDS = [1.5, 0.5, -0.4, 0.0, -2.0, 0.3, 2.0]
# Non-zero labels at 0, 1, 3, 4, 6: truth  +  -  +  -  +
#                                   pred   +  +  -  -  +   (0.0 counts as negative)
# positive class: TP 2 (0, 6), FP 1 (1), FN 1 (3) -> F1 = 4 / 6, support 3
# negative class: TP 1 (4),    FP 1 (3), FN 1 (1) -> F1 = 2 / 4, support 2


def test_acc2_and_f1_ignore_zero_labels_and_count_a_zero_prediction_as_negative():
    m = sentiment_metrics(PREDS, LABELS)
    assert m["acc2"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx((3 * (4 / 6) + 2 * (2 / 4)) / 5)


def test_mae_and_pearson_r_use_every_label_including_zeros():
    m = sentiment_metrics(PREDS, LABELS)
    assert m["mae"] == pytest.approx((0.5 + 1.5 + 0.4 + 0.5 + 0.5 + 0.3 + 1.0) / 7)
    assert m["pearson_r"] == pytest.approx(np.corrcoef(PREDS, LABELS)[0, 1])


def test_f1_weights_classes_by_true_support_as_mmsa_does():
    # truth + + + + -, pred + + + - -: F1(+) = 6 / 7 with 4 true, F1(-) = 2 / 3 with 1 true.
    # Weighting by predicted support (MulT's swapped arguments) would give 3 / 5, 2 / 5.
    m = sentiment_metrics([1, 1, 1, -1, -1], [1, 1, 1, 1, -1])
    assert m["f1"] == pytest.approx(0.8 * 6 / 7 + 0.2 * 2 / 3)


def test_pearson_r_by_hand_and_nan_for_constant_predictions():
    # deviations (-1, 0, 1) and (-1, 1, 0): covariance 1, norms sqrt(2) each
    assert pearson_r([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(pearson_r([1, 1, 1], [1, 3, 2]))
    assert mae([1, 2], [2, 4]) == pytest.approx(1.5)


def test_sentiment_metrics_need_a_polar_label():
    with pytest.raises(ValueError, match="every label is 0"):
        sentiment_metrics([0.3, -0.2], [0.0, 0.0])


# --------------------------------------------------------------------------- verification


def trial_scores(target, nontarget):
    return np.r_[target, nontarget], np.r_[np.ones(len(target)), np.zeros(len(nontarget))]


def test_eer_is_zero_when_every_target_outscores_every_nontarget():
    e, threshold = eer(*trial_scores([0.9, 0.8], [0.1, 0.2]))
    assert e == 0.0
    assert 0.2 < threshold <= 0.8


def test_eer_is_one_when_the_scores_are_reversed():
    assert eer(*trial_scores([0.1, 0.2], [0.8, 0.9]))[0] == 1.0


def test_eer_at_a_threshold_where_far_equals_frr():
    # accepting >= 0.6 rejects 1 of 4 targets (0.3) and accepts 1 of 4 non-targets (0.6)
    e, threshold = eer(*trial_scores([0.9, 0.8, 0.7, 0.3], [0.6, 0.2, 0.1, 0.05]))
    assert e == pytest.approx(0.25)
    assert threshold == pytest.approx(0.6)


def test_eer_interpolates_between_roc_points_when_far_and_frr_cross_between_them():
    # a tie at 0.5: accepting >= 1.0 gives (FAR 0, FRR 1/2), >= 0.5 gives (1/2, 0);
    # the segment between them meets FAR = FRR halfway, at 1/4
    e, threshold = eer(*trial_scores([1.0, 0.5], [0.5, 0.0]))
    assert e == pytest.approx(0.25)
    assert threshold == pytest.approx(0.75)


def test_eer_of_two_unit_gaussians_two_apart_is_phi_of_minus_one():
    rng = np.random.default_rng(0)
    scores, labels = trial_scores(rng.normal(1, 1, 20_000), rng.normal(-1, 1, 20_000))
    e, threshold = eer(scores, labels)
    assert e == pytest.approx(norm.cdf(-1.0), abs=0.006)
    assert threshold == pytest.approx(0.0, abs=0.05)


def test_eer_equals_the_voxceleb_recipe_on_random_scores():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=500), 1)  # rounding makes many ties
    labels = (rng.random(500) < 0.3).astype(int)
    scores[labels == 1] += 0.8
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    reference = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert eer(scores, labels)[0] == pytest.approx(reference, abs=1e-9)


def test_eer_needs_both_kinds_of_trial_and_binary_labels():
    with pytest.raises(ValueError, match="need both kinds"):
        eer([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="1 \\(target\\) or 0"):
        eer([0.1, 0.2], [1, 2])


# targets 0.9 and 0.4, non-targets 0.5 and 0.1. Thresholds and (P_miss, P_fa):
#   +inf (1, 0)   0.9 (1/2, 0)   0.5 (1/2, 1/2)   0.4 (0, 1/2)   0.1 (0, 1)
MIXED = trial_scores([0.9, 0.4], [0.5, 0.1])


def test_min_dcf_with_equal_priors_and_costs():
    # cost = 0.5 P_miss + 0.5 P_fa, lowest 0.25; normaliser min(0.5, 0.5)
    assert min_dcf(*MIXED, p_target=0.5)[0] == pytest.approx(0.25 / 0.5)


def test_min_dcf_at_the_voxsrc_operating_point_prefers_few_false_alarms():
    # cost = 0.01 P_miss + 0.99 P_fa: 0.9 gives 0.005, 0.4 gives 0.495; normaliser 0.01
    value, threshold = min_dcf(*MIXED)
    assert value == pytest.approx(0.005 / 0.01)
    assert threshold == 0.9


def test_min_dcf_weighs_misses_by_their_cost():
    # c_miss 3, p_target 0.5: cost = 1.5 P_miss + 0.5 P_fa -> 0.25 at 0.4; normaliser 0.5
    value, threshold = min_dcf(*MIXED, p_target=0.5, c_miss=3.0)
    assert value == pytest.approx(0.25 / 0.5)
    assert threshold == 0.4


def test_min_dcf_is_zero_for_separable_scores_and_at_most_one_otherwise():
    assert min_dcf(*trial_scores([0.9, 0.8], [0.1, 0.2]))[0] == 0.0
    assert min_dcf(*trial_scores([0.1, 0.2], [0.8, 0.9]))[0] == pytest.approx(1.0)
