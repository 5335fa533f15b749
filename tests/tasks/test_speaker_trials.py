"""Fixed speaker-verification trial lists: made once, written and read in VoxCeleb format."""

from __future__ import annotations

from collections import Counter

import pytest

from ctal_ds.tasks.trials import Trial, TrialFormatError, make_trials, read_trials, write_trials


@pytest.fixture
def test_clean(librispeech):
    return librispeech("test-clean", ["1089", "121", "1284", "1320"], utts=6)


def test_every_trial_pairs_two_distinct_utterances_and_no_pair_repeats(test_clean):
    trials = make_trials(test_clean, n_target=40, seed=0)
    assert all(t.a != t.b for t in trials)
    pairs = [frozenset((t.a, t.b)) for t in trials]
    assert len(set(pairs)) == len(pairs) == 80


def test_trials_are_balanced_and_labelled_by_speaker_identity(test_clean):
    speaker = {r.id: r.speaker for r in test_clean}
    trials = make_trials(test_clean, n_target=30, seed=0)
    assert Counter(t.label for t in trials) == {1: 30, 0: 30}
    assert all(t.label == (speaker[t.a] == speaker[t.b]) for t in trials)
    assert {u for t in trials for u in (t.a, t.b)} <= set(speaker)


def test_the_same_seed_gives_the_same_list_whatever_the_record_order(test_clean):
    first = make_trials(test_clean, 20, seed=7)
    assert make_trials(list(reversed(test_clean)), 20, seed=7) == first
    assert make_trials(test_clean, 20, seed=8) != first


def test_trial_speakers_must_be_disjoint_from_training_speakers(test_clean):
    assert make_trials(test_clean, 5, train_speakers=["19", "26"])
    with pytest.raises(ValueError, match="trial speaker\\(s\\) also in training, e.g. 121"):
        make_trials(test_clean, 5, train_speakers=["19", "121"])


def test_asking_for_more_pairs_than_exist_is_an_error(test_clean):
    # 4 speakers x C(6, 2) = 60 target pairs
    assert len(make_trials(test_clean, 60, n_nontarget=0)) == 60
    with pytest.raises(ValueError, match="61 target trials; the records allow 0..60"):
        make_trials(test_clean, 61)


def test_target_trials_are_spread_over_speakers_not_dominated_by_the_talkative(librispeech):
    # one speaker has C(30, 2) = 435 pairs, four have C(4, 2) = 6 each
    records = librispeech("test-clean", ["1"], utts=30) + librispeech(
        "test-clean", ["2", "3", "4", "5"], utts=4
    )
    speaker = {r.id: r.speaker for r in records}
    targets = [t for t in make_trials(records, 20, seed=0) if t.label == 1]
    assert sum(speaker[t.a] == "1" for t in targets) <= 10  # ~94 % if drawn uniformly over pairs


def test_trial_file_round_trip_with_ids(tmp_path, test_clean):
    trials = make_trials(test_clean, 10, seed=1)
    write_trials(tmp_path / "trials.txt", trials)
    assert read_trials(tmp_path / "trials.txt") == trials


def test_trial_file_with_relative_paths_reads_back_by_stem_or_by_path(tmp_path, test_clean):
    relative = {r.id: r.audio.removeprefix("/libri/") for r in test_clean}
    trials = make_trials(test_clean, 10, seed=1)
    write_trials(tmp_path / "trials.txt", trials, path_of=relative)
    first = (tmp_path / "trials.txt").read_text().splitlines()[0].split()
    assert first[1].startswith("test-clean/") and first[1].endswith(".flac")
    assert read_trials(tmp_path / "trials.txt", key="stem") == trials
    as_paths = read_trials(tmp_path / "trials.txt", key="path")
    assert as_paths == [Trial(t.label, relative[t.a], relative[t.b]) for t in trials]


def test_voxceleb_lines_are_read_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "veri_test.txt"
    path.write_text(
        "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n\n0 id10270/a/00002.wav id10300/b/00003.wav\n"
    )
    assert read_trials(path, key="path") == [
        Trial(1, "id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav"),
        Trial(0, "id10270/a/00002.wav", "id10300/b/00003.wav"),
    ]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("1 a.wav", "expected '<label> <path_a> <path_b>', got 2 field"),
        ("yes a.wav b.wav", "label must be 1"),
    ],
)
def test_a_malformed_line_is_reported_with_file_and_line_number(tmp_path, bad_line, message):
    path = tmp_path / "trials.txt"
    path.write_text(f"1 a.wav b.wav\n0 a.wav c.wav\n{bad_line}\n")
    with pytest.raises(TrialFormatError, match=f"{path}:3: {message}"):
        read_trials(path)
