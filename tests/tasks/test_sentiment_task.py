"""CMU-MOSEI: the record split decides train / dev / test; L1 target; dev MAE selects."""

from __future__ import annotations

import pytest

from ctal_ds.data.records import Record
from ctal_ds.tasks import build_task
from ctal_ds.tasks.sentiment import SentimentTask


def mosei(splits: str) -> list[Record]:
    return [
        Record(
            f"vid{k}_{k}",
            f"/mosei/wav/vid{k}/{k}.wav",
            "words",
            f"vid{k}",
            split,
            {"sentiment": k / 4 - 1},
        )
        for k, split in enumerate(splits.split())
    ]


def test_train_dev_test_are_the_records_train_valid_test():
    records = mosei("train train valid test train valid test")
    (split,) = SentimentTask().splits(records)
    by_id = {r.id: r.split for r in records}
    assert {by_id[u] for u in split.train} == {"train"} and len(split.train) == 3
    assert {by_id[u] for u in split.dev} == {"valid"} and len(split.dev) == 2
    assert {by_id[u] for u in split.test} == {"test"} and len(split.test) == 2


def test_a_record_outside_the_mosei_splits_or_an_empty_split_is_an_error():
    with pytest.raises(ValueError, match="split 'dev' is not one of"):
        SentimentTask().splits(mosei("train dev test"))
    with pytest.raises(ValueError, match="\\['valid'\\] have no records"):
        SentimentTask().splits(mosei("train test"))


def test_label_is_the_float_score_trained_with_l1_and_selected_on_lowest_mae():
    task = build_task("sentiment")
    assert task.label_of({"id": "v_1", "labels": {"sentiment": -1.5}}) == -1.5
    assert (task.kind, task.loss, task.num_labels) == ("regression", "l1", 1)
    assert (
        task.selection_metric == "mae" and task.is_better(0.5, 0.6) and not task.is_better(0.7, 0.6)
    )


def test_metrics_accept_a_column_of_head_outputs():
    m = SentimentTask().metrics([[1.0], [-1.0], [0.5]], [2.0, -1.0, 0.0])
    assert m["acc2"] == 1.0 and m["mae"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert set(m) == {"acc2", "f1", "mae", "pearson_r"}
