"""LibriSpeech speaker classification fine-tune: classes from training speakers,
dev from training speakers' utterances, test speakers unseen (paper section 4.2.3)."""

from __future__ import annotations

import pytest

from ctal_ds.tasks import build_task
from ctal_ds.tasks.speaker import SpeakerTask


@pytest.fixture
def corpus(librispeech):
    return (
        librispeech("train-clean-100", ["19", "26", "103"], utts=10)
        + librispeech("train-other-500", ["5", "911"], utts=10)
        + librispeech("train-clean-360", ["7"], utts=1)
        + librispeech("dev-clean", ["84"], utts=4)
        + librispeech("test-clean", ["1089", "121"], utts=4)
    )


def test_classes_are_the_sorted_training_speakers(corpus):
    task = build_task("speaker", corpus)
    assert task.speakers == ("103", "19", "26", "5", "7", "911")
    assert task.num_labels == 6
    assert task.label_of({"id": "5-100-0000", "speaker": "5"}) == 3


def test_a_speaker_outside_training_has_no_label(corpus):
    with pytest.raises(KeyError, match="'1089' is not a training speaker"):
        SpeakerTask.from_records(corpus).label_of({"id": "1089-1-0", "speaker": "1089"})


def test_train_and_dev_come_from_training_subsets_and_test_from_test_clean(corpus):
    (split,) = SpeakerTask.from_records(corpus, dev_fraction=0.2).splits(corpus)
    subset = {r.id: r.split for r in corpus}
    speaker = {r.id: r.speaker for r in corpus}
    assert {subset[u] for u in split.train + split.dev} == {
        "train-clean-100",
        "train-clean-360",
        "train-other-500",
    }
    assert {subset[u] for u in split.test} == {"test-clean"}
    # 20 % of each 10-utterance speaker; the one-utterance speaker stays in training
    dev_per_speaker = {
        s: sum(speaker[u] == s for u in split.dev) for s in ("19", "26", "103", "5", "911", "7")
    }
    assert dev_per_speaker == {"19": 2, "26": 2, "103": 2, "5": 2, "911": 2, "7": 0}
    assert {speaker[u] for u in split.train} == {"19", "26", "103", "5", "911", "7"}


def test_train_subsets_can_be_named(corpus):
    task = SpeakerTask.from_records(corpus, train_subsets=("train-clean-100",))
    assert task.speakers == ("103", "19", "26")
    (split,) = task.splits(corpus)
    assert len(split.train) + len(split.dev) == 30


def test_a_test_speaker_seen_in_training_is_refused(librispeech):
    records = librispeech("train-clean-100", ["19", "26"]) + librispeech(
        "test-clean", ["26"], chapter=200
    )
    with pytest.raises(
        ValueError, match="test-clean speaker\\(s\\) are training speakers, e.g. 26"
    ):
        SpeakerTask.from_records(records).splits(records)


def test_records_whose_training_speakers_differ_from_the_classes_are_refused(corpus, librispeech):
    task = SpeakerTask.from_records(corpus)
    with pytest.raises(ValueError, match="differ from the task's classes"):
        task.splits(corpus + librispeech("train-clean-100", ["2"]))


def test_speaker_metric_is_top1_accuracy_on_logits(corpus):
    task = SpeakerTask.from_records(corpus)
    assert task.metrics([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], [1, 1, 1]) == {
        "accuracy": pytest.approx(2 / 3)
    }
    assert task.selection_metric == "accuracy" and task.higher_is_better
