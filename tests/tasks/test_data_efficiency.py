"""Nested, stratified training fractions (paper section 5.2)."""

from __future__ import annotations

from collections import Counter

import pytest

from ctal_ds.tasks.subsets import subsample

IDS = [f"utt{k:03d}" for k in range(200)]
CLASSES = ["ang"] * 20 + ["hap"] * 50 + ["neu"] * 100 + ["sad"] * 30
FRACTIONS = [0.1, 0.2, 0.3, 0.5, 0.7, 1.0]


@pytest.mark.parametrize("stratify", [None, CLASSES])
def test_each_fraction_contains_every_smaller_fraction(stratify):
    for seed in range(3):
        subsets = [set(subsample(IDS, f, seed, stratify)) for f in FRACTIONS]
        assert all(small <= large for small, large in zip(subsets, subsets[1:]))
        assert subsets[-1] == set(IDS)


def test_stratified_subsets_keep_each_class_share():
    label = dict(zip(IDS, CLASSES))
    chosen = subsample(IDS, 0.1, seed=0, stratify_by=CLASSES)
    assert Counter(label[u] for u in chosen) == {"ang": 2, "hap": 5, "neu": 10, "sad": 3}


def test_a_class_too_small_for_the_fraction_keeps_one_utterance():
    chosen = subsample(["a1", "a2", "a3", "b1"], 0.1, seed=0, stratify_by=["a", "a", "a", "b"])
    assert len(chosen) == 2 and "b1" in chosen


def test_subset_depends_on_seed_not_on_input_order():
    chosen = subsample(IDS, 0.2, seed=4)
    assert len(chosen) == 40
    assert chosen == [u for u in IDS if u in set(subsample(list(reversed(IDS)), 0.2, seed=4))]
    assert set(subsample(IDS, 0.2, seed=5)) != set(chosen)


def test_fraction_outside_zero_to_one_and_duplicate_ids_are_errors():
    with pytest.raises(ValueError, match="fraction must be in"):
        subsample(IDS, 0.0)
    with pytest.raises(ValueError, match="duplicates"):
        subsample(["a", "a"], 0.5)
