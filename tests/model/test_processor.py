"""CTALProcessor: a recording and its transcript give the features and token ids that
shard building stores for them, from a file or from a waveform in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from ctal_ds.data import shard_reader
from ctal_ds.data.demo.espeak import ESpeak, VoiceSettings
from ctal_ds.data.features import FeatureConfig
from ctal_ds.data.records import CorpusScan, Record
from ctal_ds.data.shards import ShardConfig, build_shards, read_manifest, shard_paths
from ctal_ds.data.tokenizer import TokenizerConfig
from ctal_ds.model import CTALConfig, CTALForPretraining, CTALProcessor

FEATURES = FeatureConfig(max_duration_s=8.0)
# (transcript, file rate, channels, file subtype): resampled, mixed and PCM-scaled inputs.
UTTERANCES = [
    ("The birch canoe slid on the smooth planks", 22050, 1, "PCM_16"),
    ("Glue the sheet to the DARK blue background", 44100, 2, "FLOAT"),
    ("rice is often served in round bowls", 16000, 1, "PCM_16"),
    ("yes", 8000, 1, "PCM_24"),
]


def write_speech(engine: ESpeak, path, text: str, i: int, rate: int, channels: int, subtype: str) -> None:
    x = engine.synthesize(text, VoiceSettings(["en-us", "en-us+f2", "en+m3"][i % 3], 150 + 10 * i, 50, 50, 100), seed=i)
    x = x.astype(np.float32) / 32768
    if rate != engine.sample_rate:
        x = soxr.resample(x, engine.sample_rate, rate)
    if channels > 1:
        x = np.stack([x * (1 - 0.3 * c) for c in range(channels)], axis=1)
    sf.write(path, x, rate, subtype=subtype)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Shards of real speech built by the project's shard builder, and a model directory
    written as an export writes it (weights, the shards' tokenizer and feature config)."""
    root = tmp_path_factory.mktemp("roundtrip")
    engine = ESpeak()
    scan = CorpusScan("synthetic", str(root))
    for i, (text, rate, channels, subtype) in enumerate(UTTERANCES):
        path = root / f"utt{i}.{'flac' if subtype == 'PCM_24' else 'wav'}"
        write_speech(engine, path, text, i, rate, channels, subtype)
        scan.records.append(Record(f"utt{i}", str(path), text, "spk", "train"))
    result = build_shards(
        scan, root / "shards", TokenizerConfig(vocab_size=300, min_frequency=1), FEATURES,
        ShardConfig(samples_per_shard=2, workers=1), progress=False,
    )  # fmt: skip
    assert result.manifest["totals"]["samples"] == len(UTTERANCES)
    samples = {}
    for path in shard_paths(root / "shards"):
        for raw in shard_reader.read_shard(str(path), []):
            sample = shard_reader.decode_sample(raw)
            samples[sample.meta["id"]] = sample
    torch.manual_seed(0)
    config = CTALConfig.preset("tiny", vocab_size=result.manifest["tokenizer"]["vocab_size"])
    export = CTALForPretraining(config).save_pretrained(
        root / "export", tokenizer_file=root / "shards" / "tokenizer.json",
        feature_config=read_manifest(root / "shards")["features"],
    )  # fmt: skip
    return scan, samples, export


def test_features_and_tokens_of_a_file_are_those_of_its_shard_sample(built):
    scan, samples, export = built
    processor = CTALProcessor.from_pretrained(export)
    assert processor.feature_config == FEATURES and processor.max_frames == 512 and processor.max_tokens == 128
    for record in scan.records:
        batch = processor(audio=record.audio, text=record.text)
        shard = samples[record.id]
        # Rounded to float16 as the shard stores the frames: the very values training read.
        assert batch["audio_feats"].dtype == torch.float32
        np.testing.assert_array_equal(batch["audio_feats"][0].numpy(), shard.feats.astype(np.float32))
        assert batch["audio_mask"].tolist() == [[True] * shard.n_frames]
        assert batch["input_ids"][0].tolist() == shard.tokens.tolist()
        assert batch["text_mask"].all()


def test_float32_features_are_the_shard_features_within_float16_rounding(built):
    scan, samples, export = built
    processor = CTALProcessor.from_pretrained(export, shard_precision=False)
    for record in scan.records:
        feats = processor(audio=record.audio, text=record.text)["audio_feats"][0].numpy().astype(np.float64)
        stored = samples[record.id].feats
        # Round to nearest: at most half a float16 step at the stored value.
        tolerance = np.spacing(np.abs(stored)).astype(np.float64) / 2
        assert np.all(np.abs(feats - stored.astype(np.float64)) <= tolerance)
        assert not np.array_equal(feats, stored.astype(np.float64))  # float32 really kept


def test_a_batch_pads_each_recording_with_its_own_frames_unchanged(built):
    scan, samples, export = built
    processor = CTALProcessor.from_pretrained(export)
    batch = processor(audio=[r.audio for r in scan.records], text=[r.text for r in scan.records])
    frames = [samples[r.id].n_frames for r in scan.records]
    tokens = [samples[r.id].tokens.tolist() for r in scan.records]
    assert batch["audio_feats"].shape == (len(frames), max(frames), 160)
    assert batch["audio_mask"].sum(1).tolist() == frames
    assert batch["text_mask"].sum(1).tolist() == [len(t) for t in tokens]
    for i, record in enumerate(scan.records):
        np.testing.assert_array_equal(batch["audio_feats"][i, : frames[i]].numpy(), samples[record.id].feats.astype(np.float32))
        assert batch["audio_feats"][i, frames[i] :].eq(0).all()
        assert batch["input_ids"][i, : len(tokens[i])].tolist() == tokens[i]
        assert batch["input_ids"][i, len(tokens[i]) :].eq(processor.pad_token_id).all()


def test_a_waveform_in_memory_gives_the_features_of_its_file(built):
    """The stereo 44.1 kHz float file read by soundfile, given in both channel layouts."""
    scan, _, export = built
    processor = CTALProcessor.from_pretrained(export)
    record = scan.records[1]
    data, rate = sf.read(record.audio, dtype="float32")
    assert data.ndim == 2 and rate == 44100
    expected = processor(audio=record.audio)["audio_feats"]
    for layout in (data, torch.from_numpy(data.T.copy())):
        got = processor(audio=layout, sampling_rate=rate)["audio_feats"]
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
    pcm, rate = sf.read(scan.records[0].audio, dtype="int16")  # integer PCM, scaled like soundfile
    torch.testing.assert_close(
        processor(audio=pcm, sampling_rate=rate)["audio_feats"], processor(audio=scan.records[0].audio)["audio_feats"],
        atol=0, rtol=0,
    )  # fmt: skip


def test_audio_without_text_gets_the_transcript_bos_eos(built):
    scan, _, export = built
    processor = CTALProcessor.from_pretrained(export)
    batch = processor(audio=[scan.records[0].audio, scan.records[2].audio], text=["rice bowls", None])
    assert batch["text_mask"][0].sum() > 2
    assert batch["input_ids"][1, :2].tolist() == [0, 2] and batch["text_mask"][1].sum() == 2
    alone = processor(audio=scan.records[2].audio)
    assert alone["input_ids"].tolist() == [[0, 2]]


def test_text_alone_gives_text_inputs_only(built):
    _, samples, export = built
    processor = CTALProcessor.from_pretrained(export)
    batch = processor(text=["Rice is often served in round bowls", "yes"])
    assert set(batch) == {"input_ids", "text_mask"}
    assert batch["input_ids"][0].tolist() == samples["utt2"].tokens.tolist()


def test_long_inputs_are_cut_to_the_model_positions_with_a_warning(built, tmp_path):
    scan, _, export = built
    processor = CTALProcessor.from_pretrained(export, max_frames=50, max_tokens=5)
    with pytest.warns(UserWarning) as caught:
        batch = processor(audio=scan.records[0].audio, text=scan.records[0].text)
    messages = " | ".join(str(w.message) for w in caught)
    assert "max_frames=50" in messages and "max_tokens=5" in messages
    assert batch["audio_feats"].shape[1] == 50 and batch["input_ids"].shape[1] == 5
    assert batch["input_ids"][0, -1].item() == 2  # </s> kept last
    # The crop is of the waveform: the frames are those of the first 50 frames' samples alone.
    wave = processor.load(scan.records[0].audio)[: 50 * FEATURES.hop_length - 1]
    torch.testing.assert_close(batch["audio_feats"][0], torch.from_numpy(processor.features([wave])[0]), atol=0, rtol=0)
    with pytest.raises(ValueError, match="max_frames=50"):
        processor(audio=scan.records[0].audio, truncation=False)


def test_a_fine_tune_directory_without_feature_config_falls_back_to_the_defaults(built, tmp_path):
    _, _, export = built
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (bare / name).write_bytes((export / name).read_bytes())
    with pytest.warns(UserWarning, match="no feature_config.json"):
        processor = CTALProcessor.from_pretrained(bare)
    assert processor.feature_config == FeatureConfig()


def test_bad_inputs_are_refused_with_the_reason(built, tmp_path):
    from ctal_ds.data.audio import AudioRejected

    scan, _, export = built
    processor = CTALProcessor.from_pretrained(export)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioRejected, match="unreadable audio"):
        processor(audio=[scan.records[0].audio, str(broken)])
    with pytest.raises(AudioRejected, match="unreadable audio"):
        processor(audio=str(tmp_path / "missing.wav"))
    with pytest.raises(ValueError, match="sampling_rate"):
        processor(audio=np.zeros(1600, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        processor(audio=np.full(1600, np.nan, dtype=np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match="2 recordings but 1 texts"):
        processor(audio=[scan.records[0].audio, scan.records[1].audio], text=["one"])


def test_save_pretrained_writes_what_from_pretrained_reads(built, tmp_path):
    _, _, export = built
    processor = CTALProcessor.from_pretrained(export)
    out = processor.save_pretrained(tmp_path / "p")
    assert json.loads((out / "feature_config.json").read_text()) == FEATURES.to_dict()
    assert (out / "tokenizer.json").read_text() == (export / "tokenizer.json").read_text()
