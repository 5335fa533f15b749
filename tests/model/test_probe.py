"""The frozen probe (SUPERB's evaluation): it trains only the layer mix and the head,
and it tells a pre-trained backbone from a random one.

The synthetic language has two word groups; every sentence draws its words from one
group. MLM pre-training can only predict a masked word by recognising the group, so it
places the words of a group together. The downstream task is the group of a sentence,
learned from 8 labelled sentences whose words are all from one half of each group and
tested on sentences made of the other half: a random backbone gives unseen words
random features (chance), a pre-trained one maps them next to their group.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctal_ds.data.masking import MLMMasker
from ctal_ds.model import CTALConfig, CTALForPretraining, CTALForSequenceTask

BOS, PAD, EOS, MASK = 0, 1, 2, 4
GROUPS = (np.arange(5, 35), np.arange(35, 64))  # word ids of the two groups


def sentences(words: list[np.ndarray], n: int, rng: np.random.Generator, length: int = 12):
    """n sentences per group (labels 0 / 1), words drawn from ``words[group]``."""
    rows, labels = [], []
    for label, group in enumerate(words):
        for _ in range(n):
            rows.append(np.concatenate([[BOS], rng.choice(group, length), [EOS]]))
            labels.append(label)
    return np.stack(rows), np.array(labels)


def text_batch(ids: np.ndarray, labels: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    batch = {"input_ids": torch.as_tensor(ids, dtype=torch.long)}
    batch["text_mask"] = batch["input_ids"] != PAD
    if labels is not None:
        batch["labels"] = torch.as_tensor(labels)
    return batch


@pytest.fixture(scope="module")
def config() -> CTALConfig:
    return CTALConfig.preset("tiny", vocab_size=64, dropout=0.0)


@pytest.fixture(scope="module")
def pretrained_dir(config, tmp_path_factory):
    """MLM pre-training on the two-group language (the text stream alone, no MCAM)."""
    torch.manual_seed(0)
    model = CTALForPretraining(config, use_mcam=False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    masker = MLMMasker(config.vocab_size, MASK, (0, 1, 2, 3, 4), 0.15)
    rng = np.random.default_rng(0)
    for step in range(300):
        ids, _ = sentences(list(GROUPS), 16, rng)
        corrupted = [masker(row, np.random.default_rng([step, i])) for i, row in enumerate(ids)]
        batch = text_batch(np.stack([c[0] for c in corrupted]))
        batch["mlm_labels"] = torch.as_tensor(np.stack([c[1] for c in corrupted]))
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.save_pretrained(tmp_path_factory.mktemp("mlm") / "export")


def probe_accuracy(model: CTALForSequenceTask, seed: int = 0) -> tuple[float, dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    seen = [g[: len(g) // 2] for g in GROUPS]
    unseen = [g[len(g) // 2 :] for g in GROUPS]
    train_ids, train_labels = sentences(seen, 4, rng)
    test_ids, test_labels = sentences(unseen, 100, rng)
    backbone = {k: v.clone() for k, v in model.ctal.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(150):
        loss = model(text_batch(train_ids, train_labels))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        preds = model(text_batch(test_ids))["logits"].argmax(-1).numpy()
    return float((preds == test_labels).mean()), backbone


def probe_of(config: CTALConfig, directory=None) -> CTALForSequenceTask:
    torch.manual_seed(1)
    kwargs = dict(task="classification", num_labels=2, modality="text", probe=True, orthogonal_weight=0.0)
    if directory is None:
        return CTALForSequenceTask(config, **kwargs)
    return CTALForSequenceTask.from_pretrained(directory, **kwargs)


def test_frozen_probe_of_a_pretrained_backbone_beats_a_random_one(config, pretrained_dir):
    pretrained, _ = probe_accuracy(probe_of(config, pretrained_dir))
    random, _ = probe_accuracy(probe_of(config))
    assert pretrained >= 0.85, pretrained
    assert random <= 0.7, random


def test_probe_trains_only_the_layer_mix_and_the_head(config, pretrained_dir):
    model = probe_of(config, pretrained_dir)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("ctal.") for n in trainable)
    assert {"text_layer_weights", "audio_layer_weights"} <= trainable
    _, before = probe_accuracy(model)
    after = model.ctal.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(model.text_layer_weights.detach(), torch.zeros(config.num_text_layers + 1))


def test_probe_backbone_runs_without_dropout_in_training_mode(pretrained_dir):
    config = CTALConfig.preset("tiny", vocab_size=64, dropout=0.5)
    model = CTALForSequenceTask(config, task="classification", num_labels=2, probe=True).train()
    assert model.dropout.training and not any(m.training for m in model.ctal.modules())
    batch = text_batch(sentences(list(GROUPS), 2, np.random.default_rng(0))[0])
    batch["audio_feats"] = torch.randn(batch["input_ids"].shape[0], 20, config.feat_dim)
    batch["audio_mask"] = torch.ones(batch["input_ids"].shape[0], 20, dtype=torch.bool)
    first, second = model._backbone(batch, True), model._backbone(batch, True)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_probe_mixes_every_layer_by_its_softmax_weight(config):
    model = CTALForSequenceTask(config, task="classification", num_labels=2, probe=True).eval()
    batch = text_batch(sentences(list(GROUPS), 1, np.random.default_rng(0))[0])
    batch["audio_feats"] = torch.randn(2, 20, config.feat_dim)
    batch["audio_mask"] = torch.ones(2, 20, dtype=torch.bool)
    states = model.ctal(batch["input_ids"], batch["text_mask"], batch["audio_feats"], batch["audio_mask"],
                        all_layers=True)  # fmt: skip
    with torch.no_grad():
        model.text_layer_weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
        model.audio_layer_weights.copy_(torch.tensor([-1.0, 0.0, 3.0]))
    text, audio = model._backbone(batch, True)
    wt, wa = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0), torch.softmax(torch.tensor([-1.0, 0.0, 3.0]), 0)
    torch.testing.assert_close(text, sum(w * h for w, h in zip(wt, states.text_layers)))
    torch.testing.assert_close(audio, sum(w * h for w, h in zip(wa, states.audio_layers)))
    assert len(states.text_layers) == config.num_text_layers + 1
    torch.testing.assert_close(states.audio_layers[-1], states.audio_states)


def test_default_orthogonal_weight_lets_the_task_loss_lead_a_pretrained_start(config, pretrained_dir):
    """At weight 1 the gradient of L_orth into a pre-trained backbone is larger than the
    task loss's (1.5x here), so the regulariser, not the task, would steer the first
    updates; at the default weight the task leads."""
    from ctal_ds.model.tasks import ORTHOGONAL_WEIGHT

    torch.manual_seed(0)
    model = CTALForSequenceTask.from_pretrained(pretrained_dir, task="classification", num_labels=2).train()
    ids, labels = sentences(list(GROUPS), 8, np.random.default_rng(0))
    batch = text_batch(ids, labels)
    batch["audio_feats"] = torch.randn(len(ids), 30, config.feat_dim)
    batch["audio_mask"] = torch.ones(len(ids), 30, dtype=torch.bool)
    out = model(batch)
    backbone = [p for p in model.ctal.parameters()]

    def grad_norm(loss: torch.Tensor) -> float:
        grads = torch.autograd.grad(loss, backbone, retain_graph=True, allow_unused=True)
        return float(torch.sqrt(sum((g**2).sum() for g in grads if g is not None)))

    task, orth = grad_norm(out["task_loss"]), grad_norm(out["orth_loss"])
    assert orth > task  # at weight 1 the regulariser would lead
    assert ORTHOGONAL_WEIGHT * orth < task
    assert model.task_config.orthogonal_weight == ORTHOGONAL_WEIGHT
