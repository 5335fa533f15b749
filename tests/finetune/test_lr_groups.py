"""Learning rates per part of the network: head at lr, backbone layers below it, and the
ratios kept by a real DeepSpeed engine through its warmup and cosine schedule."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ctal_ds.finetune import ds as finetune_ds
from ctal_ds.finetune.lr_groups import param_groups
from ctal_ds.finetune.run import _param_groups
from ctal_ds.model import CTALConfig, CTALForSequenceTask
from ctal_ds.train import ds_config
from ctal_ds.train.engine import build_engine


def tiny_model() -> CTALForSequenceTask:
    torch.manual_seed(0)
    return CTALForSequenceTask(CTALConfig.preset("tiny", vocab_size=64), task="classification", num_labels=4)


def rate_of(groups: list[dict], param: torch.nn.Parameter) -> float:
    (rate,) = [g["lr"] for g in groups if any(p is param for p in g["params"])]
    return rate


def test_head_at_lr_top_layer_scaled_and_each_layer_below_decayed():
    model = tiny_model()
    groups = param_groups(model, 1e-3, backbone_scale=0.1, layer_decay=0.5)
    assert groups[0]["lr"] == 1e-3  # the head's group first: the lr a trainer logs
    params = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(params)
    assert len({id(p) for g in groups for p in g["params"]}) == len(params)
    expected = {
        "classifier.weight": 1e-3,
        "fusion.audio_attention_pooling.proj.weight": 1e-3,
        "ctal.text_encoder.layers.1.self_attention.query.weight": 1e-4,
        "ctal.text_encoder.layers.0.ffn.up.weight": 5e-5,
        "ctal.text_encoder.embeddings.token.weight": 2.5e-5,
        "ctal.audio_encoder.embeddings.projection.weight": 2.5e-5,
    }
    for name, rate in expected.items():
        matches = [n for n in params if n.startswith(name.rsplit(".", 2)[0])]
        assert matches, name
        for match in matches:
            assert rate_of(groups, params[match]) == pytest.approx(rate), match
    top_audio = [n for n in params if n.startswith("ctal.audio_encoder.layers.1.")]
    assert any("cross" in n for n in top_audio)  # cross-attention moves with its layer
    assert [rate_of(groups, params[n]) for n in top_audio] == pytest.approx([1e-4] * len(top_audio))


def test_both_knobs_at_one_is_one_plain_group():
    model = tiny_model()
    assert param_groups(model, 1e-3) == [p for p in model.parameters()]
    with pytest.raises(ValueError, match="must be > 0"):
        param_groups(model, 1e-3, backbone_scale=0.0)


def test_a_frozen_backbone_leaves_only_the_head():
    model = tiny_model()
    model.ctal.requires_grad_(False)
    groups = param_groups(model, 1e-3, backbone_scale=0.1)
    assert [g["lr"] for g in groups] == [1e-3]


def test_the_run_gives_scratch_one_rate_and_a_pre_trained_start_its_groups(tmp_path):
    import finetune_runs

    cfg = finetune_runs.finetune_config("sentiment", tmp_path, tmp_path / "out", "--backbone-lr-scale", "0.1")
    ds = {"optimizer": {"type": "AdamW", "params": {"lr": 2e-3}}}
    model = tiny_model()
    assert _param_groups(cfg, model, ds) == list(model.parameters())  # finetune_config is --scratch
    pretrained = dataclasses.replace(cfg, init=dataclasses.replace(cfg.init, scratch=False))
    assert [g["lr"] for g in _param_groups(pretrained, model, ds)] == pytest.approx([2e-3, 2e-4])


def test_the_engine_keeps_every_group_at_its_share_of_the_scheduled_lr(process_group):
    import finetune_runs

    cfg = finetune_runs.finetune_config("sentiment", finetune_runs.REPO, finetune_runs.REPO, "--warmup-steps", "3")
    raw = ds_config.load(finetune_runs.DS_CONFIG)
    raw["optimizer"]["params"]["torch_adam"] = True
    ds, _, _ = finetune_ds.resolve(raw, cfg, 12, 1, "WORLD_SIZE", "cpu", False)
    model = tiny_model()
    lr = ds["optimizer"]["params"]["lr"]
    engine = build_engine(model, ds, seed=0, rank=0, steps=12, params=param_groups(model, lr, 0.1, 0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []
    for _ in range(6):
        loss = sum(p.square().sum() for p in model.parameters())
        engine.backward(loss)
        engine.step()
        seen.append(engine.get_lr())
    for rates in seen:
        assert rates[0] > 0
        assert [r / rates[0] for r in rates] == pytest.approx([1.0, 0.1, 0.05, 0.025])
    assert len({round(r[0], 12) for r in seen}) > 1  # the schedule moved the base lr
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    assert moved["classifier.weight"] > 0 and moved["ctal.text_encoder.embeddings.token.weight"] > 0
