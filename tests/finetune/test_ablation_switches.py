"""Each ablation variant of table 4 changes what it claims, built the way launch/ablate.py builds it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctal_ds.finetune.ablate import PROBE_LR_SCALE, VARIANTS, parse_variants, variant_config
from ctal_ds.finetune.config import FinetuneConfig, TaskDataConfig
from ctal_ds.finetune.model import build_task_model
from ctal_ds.model import CTALConfig, CTALForPretraining
from ctal_ds.tasks import EmotionTask

SPEC = EmotionTask()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = CTALForPretraining(CTALConfig.preset("tiny", vocab_size=64))
    with torch.no_grad():  # distinguishable from a fresh initialisation
        for p in model.parameters():
            p.add_(0.05)
    return model.save_pretrained(tmp_path_factory.mktemp("pretrained") / "export")


def model_of(name: str, starts: dict[str, Path], tmp_path: Path):
    base = FinetuneConfig(out=tmp_path, deepspeed_config=Path("ds.json"), data=TaskDataConfig("emotion", tmp_path))
    cfg = variant_config(base, VARIANTS[name], starts, 1.0, tmp_path)
    model = build_task_model(SPEC, cfg.head, cfg.init.init, cfg.init.scratch, cfg.seed, fitted={"vocab_size": 64})
    return cfg, model.eval()


def batch(seed: int = 0, labels: bool = True) -> dict:
    gen = torch.Generator().manual_seed(seed)
    text_mask = torch.tensor([[True] * 7 + [False] * 2, [True] * 9])
    audio_mask = torch.tensor([[True] * 30 + [False] * 10, [True] * 40])
    out = {
        "input_ids": torch.randint(5, 64, (2, 9), generator=gen).masked_fill(~text_mask, 1),
        "text_mask": text_mask,
        "audio_feats": torch.randn(2, 40, 160, generator=gen) * audio_mask[..., None],
        "audio_mask": audio_mask,
    }
    out["input_ids"][:, 0] = 0
    if labels:
        out["labels"] = torch.tensor([1, 3])
    return out


def test_pretrained_variant_loads_the_backbone_and_scratch_keeps_only_its_shape(pretrained, tmp_path):
    reference = CTALForPretraining.from_pretrained(pretrained).ctal.state_dict()
    _, loaded = model_of("pretrained", {"pretrained": pretrained}, tmp_path)
    cfg, fresh = model_of("scratch", {"pretrained": pretrained}, tmp_path)
    assert cfg.init.scratch and cfg.variant == "scratch"
    assert all(torch.equal(loaded.ctal.state_dict()[k], v) for k, v in reference.items())
    assert not any(torch.equal(fresh.ctal.state_dict()[k], v) for k, v in reference.items() if v.numel() > 64)
    assert fresh.config == loaded.config


def test_no_mlm_and_no_mcam_variants_start_from_their_own_pre_training_runs(pretrained, tmp_path):
    starts = {"pretrained": tmp_path / "a", "no_mlm": pretrained, "no_mcam": tmp_path / "c"}
    assert variant_config(FinetuneConfig(tmp_path, Path("x"), TaskDataConfig("emotion", tmp_path)),
                          VARIANTS["no_mlm"], starts, 1.0, tmp_path).init.init == pretrained  # fmt: skip
    with pytest.raises(ValueError, match="no_mcam pre-trained model"):
        model_of("no_mcam", {"pretrained": pretrained}, tmp_path)


def test_text_only_predictions_ignore_the_audio(pretrained, tmp_path):
    _, model = model_of("text_only", {"pretrained": pretrained}, tmp_path)
    reference = model(batch(0))["logits"]
    changed = dict(batch(0), audio_feats=torch.randn(2, 40, 160) * 5)
    torch.testing.assert_close(model(changed)["logits"], reference, rtol=0, atol=0)


def test_audio_only_predictions_ignore_the_text_outputs(pretrained, tmp_path):
    _, model = model_of("audio_only", {"pretrained": pretrained}, tmp_path)
    b = batch(0)
    states = model.ctal(b["input_ids"], b["text_mask"], b["audio_feats"], b["audio_mask"])
    reference = model.predict_from_states(states.text_states, b["text_mask"], states.audio_states, b["audio_mask"])
    # The text stream still conditions H_a through cross-attention; its own outputs are unused.
    other_text = torch.randn_like(states.text_states)
    out = model.predict_from_states(other_text, b["text_mask"], states.audio_states, b["audio_mask"])
    torch.testing.assert_close(out["logits"], reference["logits"], rtol=0, atol=0)
    both = model_of("pretrained", {"pretrained": pretrained}, tmp_path)[1]
    both_ref = both.predict_from_states(states.text_states, b["text_mask"], states.audio_states, b["audio_mask"])
    both_out = both.predict_from_states(other_text, b["text_mask"], states.audio_states, b["audio_mask"])
    assert (both_out["logits"] - both_ref["logits"]).abs().max() > 1e-4  # the fused head does read them


def test_no_fusion_concatenates_and_drops_the_orthogonal_loss(pretrained, tmp_path):
    cfg, model = model_of("no_fusion", {"pretrained": pretrained}, tmp_path)
    assert (cfg.head.fusion, cfg.head.orthogonal_weight) == (False, 0.0)
    assert model.classifier.in_features == 4 * model.config.hidden_size  # h_a^attn, h_a^max, h_w^attn, h_w^max
    out = model(batch(0))
    assert out["orth_loss"] > 0 and torch.equal(out["loss"], out["task_loss"])


def test_orthogonal_weight_zero_excludes_l_orth_from_the_loss_and_its_gradient(pretrained, tmp_path):
    _, plain = model_of("no_orth", {"pretrained": pretrained}, tmp_path)
    _, regularised = model_of("pretrained", {"pretrained": pretrained}, tmp_path)
    assert plain.classifier.in_features == 2 * plain.config.hidden_size  # h_fuse is kept
    out = plain(batch(0))
    assert out["orth_loss"] > 0 and torch.equal(out["loss"], out["task_loss"])
    regularised.load_state_dict(plain.state_dict())
    out_reg = regularised(batch(0))
    weight = regularised.task_config.orthogonal_weight
    assert weight > 0
    torch.testing.assert_close(out_reg["loss"], out_reg["task_loss"] + weight * out_reg["orth_loss"])
    grads = []
    for m in (plain, regularised):
        m.zero_grad()
        m(batch(0))["loss"].backward()
        grads.append(m.fusion.audio_attention_pooling.proj.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])  # L_orth pulls the pooling only when weighted


def test_unknown_variant_names_are_refused():
    with pytest.raises(ValueError, match="known:"):
        parse_variants("pretrained,no_audio")


def test_variant_labels_match_the_rows_of_paper_table_4():
    # (e) "w/o audio Outputs" keeps the text outputs, (f) "w/o language Outputs" the audio.
    assert VARIANTS["text_only"].paper.startswith("(e) w/o audio outputs") and VARIANTS["text_only"].modality == "text"
    assert VARIANTS["audio_only"].paper.startswith("(f) w/o language outputs")
    assert VARIANTS["audio_only"].modality == "audio"
    assert VARIANTS["no_mlm"].paper.startswith("(b)") and VARIANTS["no_mcam"].paper.startswith("(c)")
    assert VARIANTS["no_fusion"].paper.startswith("(d)")
    assert VARIANTS["unimodal"].paper.startswith("(g) w/o cross-modal pre-training")


def test_probe_variants_freeze_the_pretrained_or_a_random_backbone(pretrained, tmp_path):
    reference = CTALForPretraining.from_pretrained(pretrained).ctal.state_dict()
    cfg, probe = model_of("probe", {"pretrained": pretrained}, tmp_path)
    cfg_random, random = model_of("probe_random", {"pretrained": pretrained}, tmp_path)
    assert cfg.head.probe and cfg_random.head.probe and cfg_random.init.scratch
    base_lr = model_of("pretrained", {"pretrained": pretrained}, tmp_path)[0].optim.lr
    assert cfg.optim.lr == cfg_random.optim.lr == base_lr * PROBE_LR_SCALE
    assert all(torch.equal(probe.ctal.state_dict()[k], v) for k, v in reference.items())
    assert not torch.equal(random.ctal.text_encoder.embeddings.token.weight, reference["text_encoder.embeddings.token.weight"])
    for model in (probe, random):
        assert not any(p.requires_grad for p in model.ctal.parameters())
        assert model.text_layer_weights.requires_grad and model.classifier.weight.requires_grad


def test_unimodal_variant_starts_from_a_model_without_cross_attention(tmp_path):
    torch.manual_seed(0)
    unimodal = CTALForPretraining(CTALConfig.preset("tiny", vocab_size=64, cross_attention=False))
    directory = unimodal.save_pretrained(tmp_path / "unimodal")
    with pytest.raises(ValueError, match="unimodal pre-trained model"):
        model_of("unimodal", {"pretrained": directory}, tmp_path)
    cfg, model = model_of("unimodal", {"unimodal": directory}, tmp_path)
    assert cfg.init.init == directory and not model.config.cross_attention
    b, other = batch(0), batch(0)
    other["input_ids"][:, 1:] = torch.randint(5, 64, other["input_ids"][:, 1:].shape)
    other["input_ids"] = other["input_ids"].masked_fill(~other["text_mask"], 1)
    states = model.ctal(b["input_ids"], b["text_mask"], b["audio_feats"], b["audio_mask"])
    changed = model.ctal(other["input_ids"], other["text_mask"], other["audio_feats"], other["audio_mask"])
    torch.testing.assert_close(states.audio_states, changed.audio_states, rtol=0, atol=0)  # the streams never meet


def test_seed_offsets_change_the_seed_and_the_subset_and_name_the_directory(pretrained, tmp_path):
    base = FinetuneConfig(out=tmp_path, deepspeed_config=Path("ds.json"), data=TaskDataConfig("emotion", tmp_path))
    first = variant_config(base, VARIANTS["scratch"], {"pretrained": pretrained}, 0.1, tmp_path)
    third = variant_config(base, VARIANTS["scratch"], {"pretrained": pretrained}, 0.1, tmp_path, seed=2)
    assert (third.seed - first.seed, third.data.subset_seed - first.data.subset_seed) == (2, 2)
    assert first.out.name == "scratch-f0.1" and third.out.name == "scratch-f0.1-s2"
