"""Fine-tuning heads: emotion classification, sentiment regression, speaker ID (4.2)."""

import pytest
import torch
import torch.nn.functional as F

from ctal_ds.model import CTALForSequenceTask


def build(config, **task):
    torch.manual_seed(0)
    return CTALForSequenceTask(config, **task).eval()


def test_classification_loss_is_cross_entropy_plus_weighted_orthogonal_loss(
    tiny_config, batch, reference_pools, reference_orthogonal_loss
):
    model = build(tiny_config, task="classification", num_labels=4, orthogonal_weight=0.3)
    labels = torch.tensor([0, 3, 1])
    out = model(dict(batch, labels=labels))
    assert out["logits"].shape == (3, 4)
    assert out["embedding"].shape == (3, 2 * tiny_config.hidden_size)
    # L_orth and h_fuse of the backbone's final states, pooled over the real positions.
    states = model.ctal(batch["input_ids"], batch["text_mask"], batch["audio_feats"], batch["audio_mask"])
    p = reference_pools(states.text_states, batch["text_mask"], states.audio_states, batch["audio_mask"],
                        model.fusion.audio_attention_pooling)  # fmt: skip
    torch.testing.assert_close(out["orth_loss"], reference_orthogonal_loss(p))
    h_fuse = torch.cat([p["h_a_attn"] + p["h_w_attn"], p["h_a_max"] + p["h_w_max"]], -1)
    torch.testing.assert_close(out["embedding"], h_fuse)
    torch.testing.assert_close(out["logits"], h_fuse @ model.classifier.weight.T + model.classifier.bias)
    torch.testing.assert_close(out["task_loss"], F.cross_entropy(out["logits"], labels))
    torch.testing.assert_close(out["loss"], out["task_loss"] + 0.3 * out["orth_loss"])


def test_regression_predicts_a_scalar_with_l1_loss(tiny_config, batch):
    model = build(tiny_config, task="regression")
    labels = torch.tensor([-2.5, 0.0, 1.5])
    out = model(dict(batch, labels=labels))
    assert out["preds"].shape == (3,)
    torch.testing.assert_close(out["task_loss"], (out["preds"] - labels).abs().mean())


def test_speaker_embedding_is_the_layer_before_the_classifier(tiny_config, batch):
    model = build(tiny_config, task="speaker", num_labels=11, speaker_embedding_dim=16)
    out = model(dict(batch, labels=torch.tensor([0, 10, 5])))
    assert out["embedding"].shape == (3, 16) and out["logits"].shape == (3, 11)
    torch.testing.assert_close(out["logits"], model.classifier(F.relu(out["embedding"])))


def test_without_labels_there_is_no_loss(tiny_config, batch):
    out = build(tiny_config, task="classification", num_labels=4)(batch)
    assert "loss" not in out and "logits" in out


def test_orthogonal_weight_zero_leaves_the_task_loss_alone(tiny_config, batch):
    model = build(tiny_config, task="classification", num_labels=4, orthogonal_weight=0.0)
    out = model(dict(batch, labels=torch.tensor([0, 1, 2])))
    assert out["loss"] == out["task_loss"] and out["orth_loss"] > 0


def test_task_outputs_do_not_change_with_padding(tiny_config, make_utterance, collate):
    model = build(tiny_config, task="classification", num_labels=4)
    short = make_utterance(tiny_config, 6, 20, seed=31)
    long = make_utterance(tiny_config, 15, 70, seed=32)
    alone = model(collate([short]))
    padded = model(collate([long, short]))
    torch.testing.assert_close(padded["logits"][1], alone["logits"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded["embedding"][1], alone["embedding"][0], atol=1e-5, rtol=0)


def test_text_only_model_ignores_the_audio(tiny_config, batch):
    model = build(tiny_config, task="classification", num_labels=4, modality="text")
    reference = model(batch)["logits"]
    changed = dict(batch, audio_feats=torch.randn_like(batch["audio_feats"]))
    torch.testing.assert_close(model(changed)["logits"], reference, atol=0, rtol=0)
    no_audio = {k: v for k, v in batch.items() if k not in ("audio_feats", "audio_mask")}
    no_audio["audio_feats"] = no_audio["audio_mask"] = None
    torch.testing.assert_close(model(no_audio)["logits"], reference, atol=0, rtol=0)


def test_audio_only_model_uses_the_audio(tiny_config, batch):
    model = build(tiny_config, task="classification", num_labels=4, modality="audio")
    reference = model(batch)["logits"]
    changed = dict(batch, audio_feats=torch.randn_like(batch["audio_feats"]))
    assert (model(changed)["logits"] - reference).abs().max() > 1e-4
    assert model.fusion.output_size == 2 * tiny_config.hidden_size


@pytest.mark.parametrize(
    "bad",
    [dict(task="ranking", num_labels=2), dict(task="regression", num_labels=3),
     dict(task="classification", num_labels=1), dict(task="speaker", num_labels=5, modality="video")],
)  # fmt: skip
def test_invalid_task_settings_are_refused(tiny_config, bad):
    with pytest.raises(ValueError):
        CTALForSequenceTask(tiny_config, **bad)


def test_speaker_embedding_is_h_fuse_by_default_as_in_the_paper(tiny_config, batch):
    model = build(tiny_config, task="speaker", num_labels=11).eval()
    assert model.embedding is None
    out = model(batch)
    assert out["embedding"].shape == (3, 2 * tiny_config.hidden_size)
    torch.testing.assert_close(out["logits"], model.classifier(out["embedding"]))
