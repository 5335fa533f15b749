"""MLM and MCAM corruption (paper section 3.2) and the collators' batch dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctal_ds.data.collate import FinetuneCollator, PretrainCollator
from ctal_ds.data.masking import (
    IGNORE_INDEX,
    KEEP,
    MASK_ID,
    MCAM_STREAM,
    MLM_STREAM,
    PAD_ID,
    REPLACE,
    SPECIAL_IDS,
    ZERO,
    MCAMMasker,
    MLMMasker,
    sample_rng,
)
from ctal_ds.data.shard_reader import ShardSample

VOCAB = 1000


def utterance(key: str, n_frames: int, n_tokens: int, seed: int = 0, labels: dict | None = None) -> ShardSample:
    rng = np.random.default_rng([seed, n_frames, n_tokens])
    tokens = np.concatenate([[0], rng.integers(5, VOCAB, n_tokens), [2]]).astype(np.int32)
    feats = rng.standard_normal((n_frames, 160)).astype(np.float16)
    return ShardSample(key, "mem", feats, tokens, {"n_frames": n_frames, "labels": labels or {}})


def corpus(n: int, frames: tuple[int, int], tokens: tuple[int, int], seed: int = 0) -> list[ShardSample]:
    rng = np.random.default_rng(seed)
    return [
        utterance(f"u{i}", int(rng.integers(*frames)), int(rng.integers(*tokens)), seed=i)
        for i in range(n)
    ]


def collator(**overrides) -> PretrainCollator:
    return PretrainCollator(pad_id=PAD_ID, mask_id=MASK_ID, vocab_size=VOCAB, seed=7, **overrides)


# --- MLM -------------------------------------------------------------------------


def test_mlm_selects_15_percent_of_real_tokens_split_80_10_10():
    masker = MLMMasker(VOCAB)
    selected = maskable = masked = randomised = kept = 0
    for i, s in enumerate(corpus(3000, (20, 21), (8, 40))):
        ids, labels = masker(s.tokens, np.random.default_rng(i))
        chosen = labels != IGNORE_INDEX
        assert not np.isin(s.tokens[chosen], SPECIAL_IDS).any()
        assert (labels[chosen] == s.tokens[chosen]).all()
        assert (ids[~chosen] == s.tokens[~chosen]).all()
        maskable += int((~np.isin(s.tokens, SPECIAL_IDS)).sum())
        selected += int(chosen.sum())
        masked += int((ids[chosen] == MASK_ID).sum())
        randomised += int(((ids[chosen] != MASK_ID) & (ids[chosen] != s.tokens[chosen])).sum())
        kept += int((ids[chosen] == s.tokens[chosen]).sum())
        assert not np.isin(ids[chosen & (ids != MASK_ID)], SPECIAL_IDS).any()
    assert selected / maskable == pytest.approx(0.15, abs=0.006)
    assert masked / selected == pytest.approx(0.8, abs=0.02)
    assert randomised / selected == pytest.approx(0.1, abs=0.015)
    assert kept / selected == pytest.approx(0.1, abs=0.015)


def test_mlm_selects_at_least_one_token_and_never_in_special_only_text():
    masker = MLMMasker(VOCAB)
    for seed in range(50):
        _, labels = masker(np.array([0, 17, 2]), np.random.default_rng(seed))
        assert labels.tolist() == [IGNORE_INDEX, 17, IGNORE_INDEX]
        _, labels = masker(np.array([0, 2]), np.random.default_rng(seed))
        assert (labels == IGNORE_INDEX).all()


def test_collated_mlm_never_touches_specials_or_padding():
    samples = corpus(64, (20, 30), (2, 30))
    batch = collator()(samples)
    original = torch.full_like(batch["input_ids"], PAD_ID)
    for i, s in enumerate(samples):
        original[i, : len(s.tokens)] = torch.from_numpy(s.tokens.astype(np.int64))
    special = torch.isin(original, torch.tensor(SPECIAL_IDS)) | ~batch["text_mask"]
    assert (batch["mlm_labels"][special] == IGNORE_INDEX).all()
    assert (batch["input_ids"][special] == original[special]).all()
    assert (batch["input_ids"][~batch["text_mask"]] == PAD_ID).all()
    assert (batch["mlm_labels"] != IGNORE_INDEX).sum(dim=1).min() >= 1


# --- MCAM ------------------------------------------------------------------------


def test_mcam_segments_are_20_to_50_frames_and_15_percent_are_selected_80_10_10():
    masker = MCAMMasker()
    seg_lens, n_segments, n_selected, ops = [], 0, 0, []
    rng = np.random.default_rng(0)
    for _ in range(3000):
        n_frames = int(rng.integers(400, 1500))
        plan = masker.plan(n_frames, rng)
        assert 20 <= plan.seg_len <= 50
        assert (np.diff(plan.starts) == plan.seg_len).all()
        assert 0 <= plan.starts[0] <= n_frames % plan.seg_len
        assert plan.starts[-1] + plan.seg_len <= n_frames
        assert len(plan.starts) == n_frames // plan.seg_len
        seg_lens.append(plan.seg_len)
        n_segments += len(plan.starts)
        n_selected += len(plan.selected)
        ops.extend(plan.ops.tolist())
    assert set(seg_lens) == set(range(20, 51))  # every length of U{20..50} occurs
    assert np.mean(seg_lens) == pytest.approx(35, abs=1)
    assert n_selected / n_segments == pytest.approx(0.15, abs=0.006)
    ops = np.array(ops)
    assert (ops == ZERO).mean() == pytest.approx(0.8, abs=0.02)
    assert (ops == REPLACE).mean() == pytest.approx(0.1, abs=0.015)
    assert (ops == KEEP).mean() == pytest.approx(0.1, abs=0.015)


def test_mcam_short_utterances_get_one_segment_or_none_below_20_frames():
    masker = MCAMMasker()
    rng = np.random.default_rng(1)
    for n_frames in range(1, 120):
        plan = masker.plan(n_frames, rng)
        if n_frames < 20:
            assert len(plan.starts) == 0 and len(plan.selected) == 0
        else:
            assert plan.seg_len <= n_frames and len(plan.selected) >= 1


def test_collated_mcam_zeroes_replaces_from_same_utterance_or_keeps_selected_segments():
    samples = corpus(200, (20, 600), (3, 10))
    col = collator()
    batch = col(samples, epoch=3)
    masker = MCAMMasker()
    counts = {ZERO: 0, REPLACE: 0, KEEP: 0}
    for i, s in enumerate(samples):
        t = s.n_frames
        original = torch.from_numpy(s.feats.astype(np.float32))
        out = batch["audio_feats"][i]
        mask = batch["mcam_mask"][i]
        assert not mask[t:].any() and (out[t:] == 0).all()
        assert torch.equal(batch["mcam_targets"][i, :t], original)
        # The collator's plan, redrawn from the same per-sample generator.
        plan = masker.plan(t, sample_rng(7, 3, s.key, MCAM_STREAM))
        expected_mask = torch.zeros(t, dtype=torch.bool)
        c = plan.seg_len
        windows = original.unfold(0, c, 1).permute(0, 2, 1) if c else None  # [T-C+1, C, D]
        for seg, op in zip(plan.selected, plan.ops):
            start = int(plan.starts[seg])
            expected_mask[start : start + c] = True
            segment = out[start : start + c]
            counts[int(op)] += 1
            if op == ZERO:
                assert (segment == 0).all()
            elif op == KEEP:
                assert torch.equal(segment, original[start : start + c])
            else:
                matches = [w for w in range(len(windows)) if torch.equal(windows[w], segment)]
                assert matches, "replacement frames are not a window of the same utterance"
                if t >= 2 * c:
                    assert all(abs(w - start) >= c for w in matches), "replacement overlaps its segment"
        assert torch.equal(mask[:t], expected_mask)
        assert torch.equal(out[:t][~expected_mask], original[~expected_mask])
    assert counts[ZERO] > counts[REPLACE] > 0 and counts[KEEP] > 0


# --- collators ---------------------------------------------------------------------


def test_batch_has_the_contract_keys_dtypes_and_shapes():
    samples = [utterance("a", 30, 4), utterance("b", 75, 9)]
    batch = collator()(samples)
    assert batch["keys"] == ["a", "b"]
    assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"].shape == (2, 11)
    assert batch["mlm_labels"].dtype == torch.int64 and batch["mlm_labels"].shape == (2, 11)
    assert batch["text_mask"].dtype == torch.bool and batch["text_mask"].sum(1).tolist() == [6, 11]
    for name in ("audio_feats", "mcam_targets"):
        assert batch[name].dtype == torch.float32 and batch[name].shape == (2, 75, 160)
    for name in ("audio_mask", "mcam_mask"):
        assert batch[name].dtype == torch.bool and batch[name].shape == (2, 75)
    assert batch["audio_mask"].sum(1).tolist() == [30, 75]


def test_masks_are_reproducible_and_independent_of_batch_composition():
    samples = corpus(8, (40, 300), (5, 20))
    first, again = collator()(samples, epoch=1), collator()(samples, epoch=1)
    alone = collator()(samples[3:4], epoch=1)
    for name in ("input_ids", "mlm_labels", "audio_feats", "mcam_mask"):
        assert torch.equal(first[name], again[name])
        length = alone[name].shape[1]
        assert torch.equal(first[name][3, :length], alone[name][0])
    next_epoch = collator()(samples, epoch=2)
    other_seed = PretrainCollator(pad_id=PAD_ID, mask_id=MASK_ID, vocab_size=VOCAB, seed=8)(samples, epoch=1)
    for other in (next_epoch, other_seed):
        assert not torch.equal(first["mcam_mask"], other["mcam_mask"])
        assert not torch.equal(first["mlm_labels"], other["mlm_labels"])


def test_switching_a_task_off_leaves_its_modality_clean_and_the_other_unchanged():
    samples = corpus(16, (40, 300), (5, 20))
    both = collator()(samples)
    no_mlm = collator(mlm=False)(samples)
    no_mcam = collator(mcam=False)(samples)
    clean = FinetuneCollator(label=lambda meta: 0)(samples)
    assert torch.equal(no_mlm["input_ids"], clean["input_ids"])
    assert (no_mlm["mlm_labels"] == IGNORE_INDEX).all()
    assert torch.equal(no_mlm["audio_feats"], both["audio_feats"])
    assert torch.equal(no_mlm["mcam_mask"], both["mcam_mask"])
    assert torch.equal(no_mcam["audio_feats"], clean["audio_feats"])
    assert not no_mcam["mcam_mask"].any()
    assert torch.equal(no_mcam["mcam_targets"], clean["audio_feats"])
    assert torch.equal(no_mcam["input_ids"], both["input_ids"])
    assert torch.equal(no_mcam["mlm_labels"], both["mlm_labels"])


def test_finetune_collator_takes_labels_by_field_classes_or_callable():
    samples = [
        utterance("a", 30, 4, labels={"emotion": "sad", "sentiment": -1.5}),
        utterance("b", 40, 5, labels={"emotion": "ang", "sentiment": 2.0}),
    ]
    classes = FinetuneCollator(label="emotion", classes=("ang", "hap", "neu", "sad"))(samples)
    assert classes["labels"].tolist() == [3, 0] and classes["labels"].dtype == torch.int64
    assert "mlm_labels" not in classes and "mcam_mask" not in classes
    regression = FinetuneCollator(label="sentiment", dtype=torch.float32)(samples)
    assert regression["labels"].tolist() == [-1.5, 2.0] and regression["labels"].dtype == torch.float32
    by_callable = FinetuneCollator(label=lambda meta: meta["n_frames"])(samples)
    assert by_callable["labels"].tolist() == [30, 40]
    with pytest.raises(KeyError, match="no label 'speaker_id'"):
        FinetuneCollator(label="speaker_id")(samples)


# --- the batched collator against the maskers one sample at a time ---------------


def reference_mlm(masker: MLMMasker, tokens: np.ndarray, rng: np.random.Generator):
    """MLMMasker.__call__ with np.isin for the special ids, as it was written first."""
    original = np.asarray(tokens, dtype=np.int64)
    maskable = np.flatnonzero(~np.isin(original, np.asarray(sorted(masker.special_ids))))
    n = maskable.size
    shuffled = rng.permutation(maskable)
    count = 0 if n == 0 else min(n, max(1, int(np.floor(masker.prob * n + rng.random()))))
    selected = shuffled[:count]
    labels = np.full_like(original, IGNORE_INDEX)
    labels[selected] = original[selected]
    corrupted = original.copy()
    draw = rng.random(selected.size)
    corrupted[selected[draw < masker.mask_frac]] = masker.mask_id
    to_random = selected[(draw >= masker.mask_frac) & (draw < masker.mask_frac + masker.random_frac)]
    corrupted[to_random] = rng.choice(masker._replacements, size=to_random.size)
    return corrupted, labels


def reference_batch(col: PretrainCollator, samples, epoch: int) -> dict[str, np.ndarray]:
    """Each sample masked alone by MLMMasker / MCAMMasker, then padded with numpy."""
    mlm, mcam = MLMMasker(col.vocab_size, col.mask_id, tuple(col.special_ids), col.mlm_prob), \
        MCAMMasker(col.mcam_prob, col.seg_min, col.seg_max)
    b, t, n = len(samples), max(s.n_frames for s in samples), max(len(s.tokens) for s in samples)
    out = {
        "input_ids": np.full((b, n), col.pad_id, dtype=np.int64),
        "mlm_labels": np.full((b, n), IGNORE_INDEX, dtype=np.int64),
        "audio_feats": np.zeros((b, t, 160), dtype=np.float32),
        "mcam_targets": np.zeros((b, t, 160), dtype=np.float32),
        "mcam_mask": np.zeros((b, t), dtype=bool),
    }
    for i, s in enumerate(samples):
        ids, labels = s.tokens, np.full(len(s.tokens), IGNORE_INDEX)
        if col.mlm:
            ids, labels = reference_mlm(mlm, s.tokens, sample_rng(col.seed, epoch, s.key, MLM_STREAM))
        out["input_ids"][i, : len(ids)] = ids
        out["mlm_labels"][i, : len(labels)] = labels
        out["mcam_targets"][i, : s.n_frames] = s.feats
        out["audio_feats"][i, : s.n_frames] = s.feats
        if col.mcam:
            frames, mask = mcam(s.feats, sample_rng(col.seed, epoch, s.key, MCAM_STREAM))
            out["audio_feats"][i, : s.n_frames] = frames
            out["mcam_mask"][i, : s.n_frames] = mask
    return out


@pytest.mark.parametrize("switches", [{}, {"mlm": False}, {"mcam": False}, {"seg_min": 1, "seg_max": 3}])
def test_collated_batches_equal_each_sample_masked_alone_to_the_bit(switches):
    rng = np.random.default_rng(5)
    col = collator(**switches)
    for trial in range(12):
        # Lengths around the edge cases: below seg_min, T == C, T < 2C, and long ones.
        samples = [utterance(f"t{trial}-{i}", int(rng.choice([1, 19, 20, 35, 50, 99, 640, 1500])),
                             int(rng.integers(0, 40)), seed=trial * 100 + i) for i in range(int(rng.integers(1, 24)))]
        batch = col(samples, epoch=trial)
        want = reference_batch(col, samples, trial)
        for name, expected in want.items():
            got = batch[name].numpy()
            assert got.dtype == expected.dtype and got.shape == expected.shape, name
            assert got.tobytes() == expected.tobytes(), f"{name} differs in trial {trial}"


def test_special_id_lookup_matches_isin_for_any_special_set():
    rng = np.random.default_rng(2)
    for specials in [SPECIAL_IDS, (0, 2, 7, 100), (3,)]:
        masker = MLMMasker(VOCAB, mask_id=4, special_ids=specials)
        for i in range(200):
            tokens = rng.integers(0, 130, int(rng.integers(1, 30))).astype(np.int32)
            got = masker(tokens, np.random.default_rng(i))
            want = reference_mlm(masker, tokens, np.random.default_rng(i))
            assert all(np.array_equal(g, w) for g, w in zip(got, want))


class _FrameTensorProbe(torch.utils.data.IterableDataset):
    """Reports from inside a DataLoader worker whether collated frames live in shared memory."""

    def __iter__(self):
        batch = collator()([utterance("a", 30, 4), utterance("b", 45, 6)])
        yield {name: batch[name].is_shared() for name in ("audio_feats", "mcam_targets")}


def test_frame_tensors_are_made_in_shared_memory_inside_workers_only():
    """A DataLoader worker would copy them into shared memory to send them otherwise."""
    batch = collator()([utterance("a", 30, 4)])
    assert not batch["audio_feats"].is_shared() and not batch["mcam_targets"].is_shared()
    loader = torch.utils.data.DataLoader(_FrameTensorProbe(), batch_size=None, num_workers=1)
    assert list(loader) == [{"audio_feats": True, "mcam_targets": True}]
