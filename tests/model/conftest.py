"""Real tensors for the model tests: utterances made from seeds, collated per docs/contracts.md."""

from __future__ import annotations

import pytest
import torch

from ctal_ds.model import CTALConfig

BOS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 4
FIRST_WORD_ID = 5


def _make_utterance(
    config: CTALConfig, n_tokens: int, n_frames: int, seed: int, mask_prob: float = 0.3
) -> dict[str, torch.Tensor]:
    """One utterance `<s> w... </s>` with frames, MLM and MCAM corruption, unpadded."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(FIRST_WORD_ID, config.vocab_size, (n_tokens - 2,), generator=g)
    tokens = torch.cat([torch.tensor([BOS]), words, torch.tensor([EOS])])
    frames = torch.randn(n_frames, config.feat_dim, generator=g)

    mlm_pick = torch.rand(n_tokens, generator=g) < mask_prob
    mlm_pick[0] = mlm_pick[-1] = False
    mlm_pick[1] = True  # at least one masked token per utterance
    mlm_labels = torch.where(mlm_pick, tokens, torch.full_like(tokens, -100))
    input_ids = torch.where(mlm_pick, torch.full_like(tokens, MASK), tokens)

    mcam_mask = torch.rand(n_frames, generator=g) < mask_prob
    mcam_mask[0] = True
    audio_feats = frames.masked_fill(mcam_mask[:, None], 0.0)
    return {
        "input_ids": input_ids,
        "audio_feats": audio_feats,
        "mlm_labels": mlm_labels,
        "mcam_targets": frames,
        "mcam_mask": mcam_mask,
    }


def _collate(utterances: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad to the longest utterance: <pad> ids, zero frames, -100 labels, False masks."""
    b = len(utterances)
    max_l = max(len(u["input_ids"]) for u in utterances)
    max_t = max(len(u["audio_feats"]) for u in utterances)
    feat_dim = utterances[0]["audio_feats"].shape[1]
    batch = {
        "input_ids": torch.full((b, max_l), PAD, dtype=torch.long),
        "text_mask": torch.zeros(b, max_l, dtype=torch.bool),
        "audio_feats": torch.zeros(b, max_t, feat_dim),
        "audio_mask": torch.zeros(b, max_t, dtype=torch.bool),
        "mlm_labels": torch.full((b, max_l), -100, dtype=torch.long),
        "mcam_targets": torch.zeros(b, max_t, feat_dim),
        "mcam_mask": torch.zeros(b, max_t, dtype=torch.bool),
    }
    for i, u in enumerate(utterances):
        n_l, n_t = len(u["input_ids"]), len(u["audio_feats"])
        batch["input_ids"][i, :n_l] = u["input_ids"]
        batch["text_mask"][i, :n_l] = True
        batch["mlm_labels"][i, :n_l] = u["mlm_labels"]
        batch["audio_feats"][i, :n_t] = u["audio_feats"]
        batch["audio_mask"][i, :n_t] = True
        batch["mcam_targets"][i, :n_t] = u["mcam_targets"]
        batch["mcam_mask"][i, :n_t] = u["mcam_mask"]
    return batch


@pytest.fixture
def tiny_config() -> CTALConfig:
    # No dropout: the tests compare outputs exactly across padding, backends and reloads.
    return CTALConfig.preset("tiny", dropout=0.0, attention_dropout=0.0)


@pytest.fixture
def batch(tiny_config: CTALConfig) -> dict[str, torch.Tensor]:
    """Three utterances of different lengths, so two of them carry padding."""
    return _collate(
        [
            _make_utterance(tiny_config, 9, 30, seed=1),
            _make_utterance(tiny_config, 14, 47, seed=2),
            _make_utterance(tiny_config, 6, 22, seed=3),
        ]
    )


@pytest.fixture
def make_utterance():
    return _make_utterance


@pytest.fixture
def collate():
    return _collate


def _reference_pools(text, text_mask, audio, audio_mask, attention) -> dict[str, torch.Tensor]:
    """Section 3.3's pooled vectors computed one utterance at a time, over its real
    positions only: h_w^attn the first token's state, h_w^max and h_a^max element-wise
    maxima, h_a^attn = softmax(v . tanh(W H_a + b)) H_a with W, b and v read from
    `attention` (an AttentionPooling: proj, score). No audio: the text vectors only."""
    pools: dict[str, list[torch.Tensor]] = {"h_w_attn": [], "h_w_max": [], "h_a_attn": [], "h_a_max": []}
    for i in range(text.shape[0]):
        words = text[i][text_mask[i]]
        pools["h_w_attn"].append(words[0])
        pools["h_w_max"].append(words.max(dim=0).values)
        if audio is None:
            continue
        frames = audio[i][audio_mask[i]]
        energy = torch.tanh(frames @ attention.proj.weight.T + attention.proj.bias) @ attention.score.weight[0]
        alpha = torch.exp(energy - energy.max())
        pools["h_a_attn"].append((alpha / alpha.sum()) @ frames)
        pools["h_a_max"].append(frames.max(dim=0).values)
    return {name: torch.stack(vectors) for name, vectors in pools.items() if vectors}


def _reference_orthogonal_loss(pools: dict[str, torch.Tensor]) -> torch.Tensor:
    """Batch mean of |cos(h_a^attn, h_w^attn)| + |cos(h_a^max, h_w^max)| (3.3.1)."""
    cos = torch.nn.functional.cosine_similarity
    return (cos(pools["h_a_attn"], pools["h_w_attn"]).abs() + cos(pools["h_a_max"], pools["h_w_max"]).abs()).mean()


@pytest.fixture
def reference_pools():
    return _reference_pools


@pytest.fixture
def reference_orthogonal_loss():
    return _reference_orthogonal_loss
