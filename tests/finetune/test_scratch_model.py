"""A from-scratch task model is sized to the task shards, as pre-training sizes its model:
a transcript or utterance longer than the preset's position tables still runs."""

from __future__ import annotations

import numpy as np
import torch

from ctal_ds.data.shard_reader import ShardSample
from ctal_ds.finetune.model import HeadSettings, build_task_model
from ctal_ds.finetune.task import collator_for
from ctal_ds.model import CTALConfig
from ctal_ds.tasks import SentimentTask


def _sample(key: str, n_tokens: int, n_frames: int, vocab: int) -> ShardSample:
    rng = np.random.default_rng(len(key))
    tokens = np.concatenate([[0], rng.integers(5, vocab, n_tokens - 2), [2]]).astype(np.int32)
    feats = rng.standard_normal((n_frames, 160)).astype(np.float16)
    return ShardSample(key, "shard", feats, tokens, {"id": key, "labels": {"sentiment": 0.5}})


def test_a_scratch_model_from_a_preset_takes_the_longest_transcript_of_the_shards():
    preset = CTALConfig.preset("tiny")
    assert preset.max_tokens < 300 and preset.max_frames < 600
    spec = SentimentTask()
    model = build_task_model(spec, HeadSettings(), init=None, scratch=True, seed=0, preset="tiny",
                             fitted={"vocab_size": 64, "longest_frames": 600, "longest_tokens": 300})  # fmt: skip
    assert (model.config.max_tokens, model.config.max_frames) == (300, 600)
    assert (model.config.hidden_size, model.config.num_text_layers) == (preset.hidden_size, preset.num_text_layers)

    batch = collator_for(spec)([_sample("long", 300, 600, 64), _sample("short", 12, 40, 64)])
    assert batch["input_ids"].shape == (2, 300)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert torch.isfinite(out["loss"]).item()


def test_without_longest_tokens_the_preset_keeps_its_token_limit():
    model = build_task_model(SentimentTask(), HeadSettings(), init=None, scratch=True, seed=0, preset="tiny",
                             fitted={"vocab_size": 64, "longest_frames": 10})  # fmt: skip
    assert model.config.max_tokens == CTALConfig.preset("tiny").max_tokens
