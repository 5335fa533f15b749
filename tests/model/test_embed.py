"""`model.embed(audio=..., text=...)`: from a wav file to representations in one call,
for pre-trained and fine-tuned model directories."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from audio_inputs import TEXTS, tiny_export, voiced

from ctal_ds.data.features import FeatureConfig
from ctal_ds.model import (
    CTALConfig,
    CTALForPretraining,
    CTALForSequenceTask,
    CTALModel,
    CTALProcessor,
    load_pretrained,
)

REPO = Path(__file__).resolve().parents[2]
EMOTIONS = ["ang", "hap", "neu", "sad"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audio")
    paths = {}
    for i, (seconds, rate, f0) in enumerate([(0.6, 16000, 120.0), (1.1, 22050, 210.0), (0.4, 44100, 160.0)]):
        paths[f"x{i}"] = root / f"x{i}.wav"
        sf.write(paths[f"x{i}"], voiced(seconds, rate, f0, seed=i), rate)
    return paths


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("pretrain") / "export")


@pytest.fixture(scope="module")
def config(export) -> CTALConfig:
    return CTALModel.from_pretrained(export).config


def test_the_readme_line_works_as_written(export, files, tmp_path):
    (tmp_path / "runs" / "demo" / "pretrain").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "pretrain" / "export").symlink_to(export)
    (tmp_path / "x.wav").write_bytes(files["x1"].read_bytes())
    line = ("from ctal_ds import CTALModel; m = CTALModel.from_pretrained('runs/demo/pretrain/export'); "
            "print(m.embed(audio='x.wav', text='hello')['audio_pooled'].shape)")  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch.Size([64])"


def test_embed_is_encode_of_the_processor_inputs(export, files):
    model = CTALModel.from_pretrained(export)
    out = model.embed(audio=str(files["x1"]), text=TEXTS[1])
    batch = CTALProcessor.from_pretrained(export)(audio=str(files["x1"]), text=TEXTS[1])
    ref = model.encode(batch["audio_feats"][0], batch["input_ids"][0])
    assert out.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], atol=0, rtol=0)
    assert out["audio_states"].shape == (batch["audio_feats"].shape[1], 64) and out["audio_pooled"].shape == (64,)
    torch.testing.assert_close(out["audio_pooled"], out["audio_states"].mean(0))
    torch.testing.assert_close(out["text_pooled"], out["text_states"].mean(0))
    assert not out["audio_states"].requires_grad


def test_a_batch_gives_each_recording_what_it_gets_alone(export, files):
    model = CTALForPretraining.from_pretrained(export)
    paths = [files["x0"], files["x1"], files["x2"]]
    batched = model.embed(audio=paths, text=TEXTS)
    assert batched["audio_states"].shape[0] == 3 and batched["text_pooled"].shape == (3, 64)
    for i, (path, text) in enumerate(zip(paths, TEXTS)):
        alone = model.embed(audio=path, text=text)
        n, m = int(batched["audio_mask"][i].sum()), int(batched["text_mask"][i].sum())
        assert alone["audio_states"].shape[0] == n and alone["text_states"].shape[0] == m
        torch.testing.assert_close(batched["audio_pooled"][i], alone["audio_pooled"], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched["text_states"][i, :m], alone["text_states"], atol=1e-5, rtol=0)


def test_a_waveform_and_its_file_give_the_same_embedding(export, files):
    model = CTALModel.from_pretrained(export)
    wave, rate = sf.read(files["x1"], dtype="float32")
    from_file = model.embed(audio=files["x1"], text="hello")
    from_wave = model.embed(audio=wave, sampling_rate=rate, text="hello")
    torch.testing.assert_close(from_wave["audio_pooled"], from_file["audio_pooled"], atol=0, rtol=0)


def test_text_alone_runs_the_text_stream_only(export):
    model = CTALModel.from_pretrained(export)
    out = model.embed(text=TEXTS[1])
    assert set(out) == {"text_states", "text_pooled", "text_mask"}
    with_audio_text = CTALProcessor.from_pretrained(export)(text=TEXTS[1])["input_ids"][0]
    assert out["text_states"].shape == (len(with_audio_text), 64)


def test_audio_alone_is_read_with_the_transcript_bos_eos(export, files):
    model = CTALModel.from_pretrained(export)
    alone = model.embed(audio=files["x0"])
    empty = model.embed(audio=files["x0"], text="")
    assert alone["text_mask"].tolist() == [True, True]
    torch.testing.assert_close(alone["audio_pooled"], empty["audio_pooled"], atol=0, rtol=0)


def test_embed_leaves_the_training_mode_as_it_was(export, files):
    model = CTALModel.from_pretrained(export).train()
    model.embed(audio=files["x0"], text="hello")
    assert model.training


def test_a_model_built_in_memory_needs_a_processor(config, export, files):
    model = CTALModel(config)
    with pytest.raises(ValueError, match="processor"):
        model.embed(audio=files["x0"], text="hello")
    out = model.embed(audio=files["x0"], text="hello", processor=CTALProcessor.from_pretrained(export))
    assert out["audio_pooled"].shape == (64,)


def test_emotion_export_gives_class_probabilities_and_label_names(config, export, files, tmp_path):
    torch.manual_seed(1)
    task = CTALForSequenceTask.from_pretrained(export, task="classification", num_labels=4)
    directory = task.save_pretrained(tmp_path / "emotion", tokenizer_file=export / "tokenizer.json",
                                     feature_config=FeatureConfig(), label_names=EMOTIONS)  # fmt: skip
    model = load_pretrained(directory)
    assert isinstance(model, CTALForSequenceTask) and model.label_names == tuple(EMOTIONS)
    out = model.embed(audio=[files["x0"], files["x1"]], text=TEXTS[:2])
    assert out["probs"].shape == (2, 4)
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(2))
    assert out["label"].tolist() == out["logits"].argmax(-1).tolist()
    assert out["label_name"] == [EMOTIONS[i] for i in out["label"].tolist()]
    assert out["embedding"].shape == (2, 128)  # h_fuse
    single = model.embed(audio=files["x0"], text=TEXTS[0])
    assert single["label_name"] in EMOTIONS and single["probs"].shape == (4,)
    # A reloaded model saves its label names again.
    again = load_pretrained(model.save_pretrained(tmp_path / "again"))
    assert again.label_names == tuple(EMOTIONS)


def test_sentiment_and_speaker_exports_give_their_outputs(config, export, files, tmp_path):
    torch.manual_seed(2)
    sentiment = CTALForSequenceTask.from_pretrained(export, task="regression", num_labels=1)
    model = load_pretrained(sentiment.save_pretrained(tmp_path / "mosei", tokenizer_file=export / "tokenizer.json"))
    out = model.embed(audio=[files["x0"], files["x2"]], text=TEXTS[::2], processor=CTALProcessor.from_pretrained(export))
    assert out["score"].shape == (2,) and torch.equal(out["score"], out["preds"])
    speakers = ["1034", "1272", "19"]
    spk = CTALForSequenceTask.from_pretrained(export, task="speaker", num_labels=3, speaker_embedding_dim=16)
    model = load_pretrained(spk.save_pretrained(tmp_path / "spk", tokenizer_file=export / "tokenizer.json",
                                                feature_config=FeatureConfig(), label_names=speakers))  # fmt: skip
    out = model.embed(audio=files["x1"], text="hello")
    assert out["speaker_embedding"].shape == (16,) and torch.equal(out["speaker_embedding"], out["embedding"])
    assert out["label_name"] in speakers and out["probs"].shape == (3,)


def test_a_task_model_that_reads_audio_refuses_text_alone(export, tmp_path):
    task = CTALForSequenceTask.from_pretrained(export, task="classification", num_labels=4)
    model = load_pretrained(task.save_pretrained(tmp_path / "t", tokenizer_file=export / "tokenizer.json",
                                                 feature_config=FeatureConfig()))  # fmt: skip
    with pytest.raises(ValueError, match="give audio"):
        model.embed(text="hello")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_outputs_stay_on_the_model_device_and_match_the_cpu(export, files):
    cpu = CTALModel.from_pretrained(export)
    gpu = CTALModel.from_pretrained(export).to("cuda")
    paths = [files["x0"], files["x1"]]
    on_gpu = gpu.embed(audio=paths, text=TEXTS[:2])
    assert on_gpu["audio_pooled"].device.type == "cuda"
    torch.testing.assert_close(on_gpu["audio_pooled"].cpu(), cpu.embed(audio=paths, text=TEXTS[:2])["audio_pooled"],
                               atol=1e-4, rtol=1e-4)  # fmt: skip


@pytest.mark.parametrize("probe", [False, True])
def test_task_outputs_are_those_of_the_model_forward(export, files, tmp_path, probe):
    """A probe's head reads a mix of all layers: embed must give what forward gives."""
    torch.manual_seed(4)
    task = CTALForSequenceTask.from_pretrained(export, task="classification", num_labels=4, probe=probe)
    with torch.no_grad():
        if probe:
            task.text_layer_weights.copy_(torch.randn_like(task.text_layer_weights))
            task.audio_layer_weights.copy_(torch.randn_like(task.audio_layer_weights))
    model = load_pretrained(task.save_pretrained(tmp_path / "t", tokenizer_file=export / "tokenizer.json",
                                                 feature_config=FeatureConfig()))  # fmt: skip
    paths = [files["x0"], files["x1"]]
    out = model.embed(audio=paths, text=TEXTS[:2])
    with torch.no_grad():
        ref = model.eval()(model.processor(audio=paths, text=TEXTS[:2]))
    torch.testing.assert_close(out["logits"], ref["logits"], atol=1e-6, rtol=0)
    torch.testing.assert_close(out["embedding"], ref["embedding"], atol=1e-6, rtol=0)
