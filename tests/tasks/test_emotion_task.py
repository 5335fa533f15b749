"""IEMOCAP: labels, leave-one-session-out folds with a dev split from training
sessions only, WA / UA per fold and over folds (paper section 4.2.1)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from ctal_ds.tasks import build_task
from ctal_ds.tasks.emotion import EMOTIONS, EmotionTask, aggregate_folds, dialogue_of, session_of


def test_label_is_the_index_in_fixed_class_order_for_records_and_shard_samples(iemocap):
    task = EmotionTask()
    record = iemocap()[0]
    sample = {
        "id": record.id,
        "speaker": record.speaker,
        "split": record.split,
        "labels": record.labels,
    }
    assert EMOTIONS == ("ang", "hap", "neu", "sad")
    assert (
        task.label_of(record) == task.label_of(sample) == EMOTIONS.index(record.labels["emotion"])
    )
    assert task.num_labels == 4 and task.loss == "cross_entropy"


def test_an_emotion_outside_the_four_classes_is_an_error():
    with pytest.raises(ValueError, match="'fru' not in"):
        EmotionTask().label_of({"id": "u1", "labels": {"emotion": "fru"}})


def test_session_comes_from_the_label_or_else_the_split():
    assert session_of({"id": "u", "split": "Session3", "labels": {"session": 3}}) == 3
    assert session_of({"id": "u", "split": "Session4", "labels": {}}) == 4
    with pytest.raises(ValueError, match="no session"):
        session_of({"id": "u", "split": "train", "labels": {}})


def test_fold_k_tests_on_session_k_and_trains_and_selects_on_other_sessions_only(iemocap):
    records = iemocap()
    session = {r.id: r.labels["session"] for r in records}
    folds = EmotionTask().splits(records)
    assert [f.name for f in folds] == [f"fold{k}" for k in range(1, 6)]
    for k, fold in enumerate(folds, start=1):
        assert {session[u] for u in fold.test} == {k}
        assert k not in {session[u] for u in fold.train + fold.dev}
        assert len(fold.train) + len(fold.dev) + len(fold.test) == len(records)
        assert not set(fold.train) & set(fold.dev)


def test_every_utterance_is_tested_exactly_once_across_folds(iemocap):
    records = iemocap()
    tested = Counter(u for fold in EmotionTask().splits(records) for u in fold.test)
    assert tested == Counter(r.id for r in records)


def test_dev_holds_out_whole_dialogues_of_every_class_about_a_tenth_of_training(iemocap):
    records = iemocap(dialogues=4)
    emotion = {r.id: r.labels["emotion"] for r in records}
    for fold in EmotionTask(dev_fraction=0.1).splits(records):
        dev_dialogues = {dialogue_of(u) for u in fold.dev}
        assert not dev_dialogues & {dialogue_of(u) for u in fold.train}
        assert {emotion[u] for u in fold.dev} == set(EMOTIONS)
        assert 0.05 <= len(fold.dev) / (len(fold.dev) + len(fold.train)) <= 0.2


def test_dev_split_is_fixed_by_the_seed(iemocap):
    records = iemocap(dialogues=4)
    first = EmotionTask(seed=3).splits(records)
    assert first == EmotionTask(seed=3).splits(list(reversed(records)))
    others = [EmotionTask(seed=s).splits(records)[0].dev for s in range(4, 9)]
    assert any(dev != first[0].dev for dev in others)


def test_folds_follow_the_sessions_present(iemocap):
    folds = EmotionTask(dev_fraction=0.25).splits(iemocap(sessions=(2, 4), dialogues=4))
    assert [f.name for f in folds] == ["fold2", "fold4"]


def test_too_few_training_dialogues_for_the_dev_fraction_is_an_error(iemocap):
    with pytest.raises(ValueError, match="needs 10\\+ dialogues in the training sessions, found 6"):
        EmotionTask(dev_fraction=0.1).splits(iemocap(sessions=(1, 2, 3), dialogues=3))


def test_metrics_take_logits_or_class_indices_and_select_on_ua(iemocap):
    task = build_task("emotion")
    labels = [0, 0, 0, 1, 2, 3]
    logits = np.eye(4)[[0, 0, 1, 1, 2, 3]] + 0.1
    # class 0 recall 2/3, classes 1..3 recall 1: UA = (2/3 + 3) / 4, WA = 5/6
    expected = {"wa": 5 / 6, "ua": (2 / 3 + 3) / 4}
    assert task.metrics(logits, labels) == pytest.approx(expected)
    assert task.metrics([0, 0, 1, 1, 2, 3], labels) == pytest.approx(expected)
    assert (
        task.selection_metric == "ua" and task.is_better(0.6, 0.5) and not task.is_better(0.4, 0.5)
    )
    np.testing.assert_array_equal(task.confusion(logits, labels).sum(axis=1), [3, 1, 1, 1])


def test_fold_results_are_averaged_with_their_spread():
    folds = [{"wa": 0.6, "ua": 0.5}, {"wa": 0.8, "ua": 0.7}, {"wa": 0.7, "ua": 0.9}]
    agg = aggregate_folds(folds)
    assert agg["wa_mean"] == pytest.approx(0.7) and agg["ua_mean"] == pytest.approx(0.7)
    # sample std: sqrt(((-0.1)^2 + 0.1^2 + 0^2) / 2) = 0.1
    assert agg["wa_std"] == pytest.approx(0.1) and agg["ua_std"] == pytest.approx(0.2)
    assert math.isnan(aggregate_folds(folds[:1])["wa_std"])


def test_tasks_are_built_by_name_and_an_unknown_name_lists_the_known_ones():
    assert build_task("emotion", seed=2) == EmotionTask(seed=2)
    with pytest.raises(
        ValueError, match="unknown task 'asr'; known: \\['emotion', 'sentiment', 'speaker'\\]"
    ):
        build_task("asr")
    with pytest.raises(ValueError, match="dev_fraction must be in"):
        EmotionTask(dev_fraction=0.0)
