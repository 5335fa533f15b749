"""Model directories (config.json + model.safetensors + tokenizer.json) and `encode`."""

import json

import numpy as np
import pytest
import torch

from ctal_ds.model import (
    CTALForPretraining,
    CTALForSequenceTask,
    CTALModel,
    load_pretrained,
)
from ctal_ds.model.pretrained import tokenizer_path


@pytest.fixture
def pretrained(tiny_config):
    torch.manual_seed(0)
    model = CTALForPretraining(tiny_config).eval()
    with torch.no_grad():  # move every weight off its initial value
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def test_round_trip_gives_identical_outputs_and_keeps_the_decoder_tied(pretrained, batch, tmp_path):
    pretrained.save_pretrained(tmp_path / "ckpt")
    loaded = CTALForPretraining.from_pretrained(tmp_path / "ckpt").eval()
    expected, got = pretrained(batch), loaded(batch)
    for key in ("loss", "mlm_loss", "mcam_loss"):
        assert torch.equal(got[key], expected[key]), key
    token_embedding = loaded.ctal.text_encoder.embeddings.token.weight
    assert loaded.mlm_head.decoder.weight is token_embedding
    torch.testing.assert_close(token_embedding, pretrained.ctal.text_encoder.embeddings.token.weight, atol=0, rtol=0)


def test_directory_holds_config_weights_and_tokenizer(pretrained, tmp_path):
    tokenizer = tmp_path / "bpe.json"
    tokenizer.write_text('{"model": {"type": "BPE"}}')
    out = pretrained.save_pretrained(tmp_path / "ckpt", tokenizer_file=tokenizer)
    meta = json.loads((out / "config.json").read_text())
    assert meta["architecture"] == "CTALForPretraining"
    assert meta["head"] == {"use_mlm": True, "use_mcam": True}
    assert meta["model"]["hidden_size"] == pretrained.config.hidden_size
    assert (out / "model.safetensors").is_file()
    assert tokenizer_path(out).read_text() == tokenizer.read_text()


def test_fine_tuning_starts_from_the_pretrained_backbone(pretrained, batch, tmp_path):
    pretrained.save_pretrained(tmp_path / "ckpt")
    task = CTALForSequenceTask.from_pretrained(tmp_path / "ckpt", task="classification", num_labels=4)
    for (name, p), (_, q) in zip(task.ctal.state_dict().items(), pretrained.ctal.state_dict().items()):
        assert torch.equal(p, q), name
    backbone = CTALModel.from_pretrained(tmp_path / "ckpt").eval()
    states = backbone(batch["input_ids"], batch["text_mask"], batch["audio_feats"], batch["audio_mask"])
    ref = pretrained.ctal(batch["input_ids"], batch["text_mask"], batch["audio_feats"], batch["audio_mask"])
    assert torch.equal(states.audio_states, ref.audio_states)


def test_fine_tuning_from_a_backbone_needs_the_task(pretrained, tmp_path):
    pretrained.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="task"):
        CTALForSequenceTask.from_pretrained(tmp_path / "ckpt")


def test_task_model_round_trips_with_its_head_and_reloads_as_saved(tiny_config, batch, tmp_path):
    torch.manual_seed(0)
    model = CTALForSequenceTask(tiny_config, task="speaker", num_labels=7, speaker_embedding_dim=12).eval()
    model.save_pretrained(tmp_path / "spk")
    loaded = load_pretrained(tmp_path / "spk").eval()
    assert isinstance(loaded, CTALForSequenceTask) and loaded.task_config == model.task_config
    assert torch.equal(loaded(batch)["embedding"], model(batch)["embedding"])


def test_config_overrides_switch_the_attention_backend_on_load(pretrained, batch, tmp_path):
    pretrained.save_pretrained(tmp_path / "ckpt")
    eager = load_pretrained(tmp_path / "ckpt", config_overrides={"attn_impl": "eager"}).eval()
    assert eager.config.attn_impl == "eager"
    torch.testing.assert_close(eager(batch)["loss"], pretrained(batch)["loss"], atol=1e-5, rtol=0)


def test_mismatched_checkpoint_is_refused(pretrained, tmp_path):
    pretrained.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(RuntimeError):
        CTALModel.from_pretrained(tmp_path / "ckpt", config_overrides={"hidden_size": 32})


def test_encode_one_utterance_from_numpy(pretrained, make_utterance, collate, tiny_config):
    u = make_utterance(tiny_config, 8, 30, seed=41)
    feats = u["mcam_targets"].numpy().astype(np.float16)  # shards store float16 frames
    out = pretrained.encode(feats, u["input_ids"].numpy())
    assert out["audio_states"].shape == (30, tiny_config.hidden_size)
    assert out["text_states"].shape == (8, tiny_config.hidden_size)
    torch.testing.assert_close(out["audio_pooled"], out["audio_states"].mean(0))
    torch.testing.assert_close(out["text_pooled"], out["text_states"].mean(0))
    assert pretrained.training is False and not out["audio_states"].requires_grad


def test_encode_batches_ragged_lists_like_single_utterances(pretrained, make_utterance, tiny_config):
    utts = [make_utterance(tiny_config, n, t, seed=s) for n, t, s in [(5, 19, 1), (11, 40, 2)]]
    batched = pretrained.encode([u["mcam_targets"] for u in utts], [u["input_ids"].tolist() for u in utts])
    assert batched["audio_states"].shape == (2, 40, tiny_config.hidden_size)
    assert batched["audio_mask"].sum(1).tolist() == [19, 40]
    single = pretrained.encode(utts[0]["mcam_targets"], utts[0]["input_ids"])
    torch.testing.assert_close(batched["audio_pooled"][0], single["audio_pooled"], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched["text_states"][0, :5], single["text_states"], atol=1e-5, rtol=0)


def test_encode_restores_training_mode(pretrained, make_utterance, tiny_config):
    u = make_utterance(tiny_config, 6, 12, seed=5)
    pretrained.train()
    pretrained.encode(u["mcam_targets"], u["input_ids"])
    assert pretrained.training


def test_encode_with_a_task_model_returns_its_embedding(tiny_config, make_utterance):
    torch.manual_seed(0)
    model = CTALForSequenceTask(tiny_config, task="speaker", num_labels=3, speaker_embedding_dim=10)
    u = make_utterance(tiny_config, 6, 12, seed=5)
    out = model.encode(u["mcam_targets"], u["input_ids"])
    assert out["embedding"].shape == (10,) and out["logits"].shape == (3,)


def test_encode_refuses_mixed_batched_and_single_inputs(pretrained, tiny_config):
    with pytest.raises(ValueError, match="both"):
        pretrained.encode(np.zeros((2, 10, tiny_config.feat_dim)), np.array([0, 5, 2]))
