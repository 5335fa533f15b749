"""Feature encodings of shards (ctal_ds.data.feature_encoding): real tar shards of the
same synthesised speech built in each encoding, decoded by the loader's reader, compared
with the 160-dim features float16-160 stores; manifests old, new and broken."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from threadpoolctl import threadpool_limits

from ctal_ds.data import feature_encoding, shard_reader, shard_writer
from ctal_ds.data.audio import load_audio
from ctal_ds.data.collate import PretrainCollator
from ctal_ds.data.demo.espeak import ESpeak, VoiceSettings
from ctal_ds.data.feature_encoding import (
    ENCODINGS,
    ManifestError,
    StoredFeatures,
    dequantise,
    derive,
    quantise,
)
from ctal_ds.data.features import FeatureConfig, derive_mel, extract, extract_logmel, mel_filterbank
from ctal_ds.data.loader import BatchConfig, LoaderConfig, build_pretrain_loader
from ctal_ds.data.masking import MASK_ID, PAD_ID
from ctal_ds.data.records import CorpusScan, Record
from ctal_ds.data.shard_check import check_shards
from ctal_ds.data.shard_list import ShardSet
from ctal_ds.data.shard_reader import SampleError, decode_sample, inspect_sample, read_shard
from ctal_ds.data.shards import ShardConfig, build_shards, read_manifest, shard_paths
from ctal_ds.data.tokenizer import TokenizerConfig
from ctal_ds.finetune.data import load_task_samples

FEATURES = FeatureConfig(max_duration_s=10.0)
TOKENIZER = TokenizerConfig(vocab_size=300, min_frequency=1)
LINES = [
    ("the birch canoe slid on the smooth planks", "en-us", 150, 22050),
    ("glue the sheet to the dark blue background", "en-us+f2", 170, 44100),
    ("it is easy to tell the depth of a well", "en+m3", 200, 16000),
    ("these days a chicken leg is a rare dish", "en-gb-x-rp", 130, 8000),
    ("rice is often served in round bowls", "en+f3", 180, 22050),
    ("yes", "en", 200, 16000),  # shorter than the delta window
    ("four hours of steady work faced us", "en-us", 160, 16000),
]

# Bounds on the error of the decoded features against the float16-160 ones of the same
# audio, over every element of every sample of this corpus (max, mean). Measured with
# the librosa backend: float16-logmel 0.0039 (a float16 step of a feature in [4, 8)),
# 0.000054; uint8-logmel 0.021, 0.0040; the same with the torch backend.
BOUNDS = {"float16-logmel": (0.01, 0.0005), "uint8-logmel": (0.06, 0.01)}


def reference_features(waveform: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """The librosa backend as it was written before shards stored the log-mel."""
    import librosa

    spec = librosa.stft(
        waveform, n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.win_length,
        window="hann", center=True, pad_mode="constant",
    )  # fmt: skip
    power = np.abs(spec) ** 2
    logmel = np.log(np.maximum(mel_filterbank(config) @ power, config.log_floor))
    delta = librosa.feature.delta(logmel, width=config.delta_width, order=1, axis=-1, mode="nearest")
    feats = np.concatenate([logmel, delta], axis=0).T.astype(np.float64)
    mean = feats.mean(axis=0)
    std = np.maximum(feats.std(axis=0), config.norm_floor)
    return ((feats - mean) / std).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> CorpusScan:
    """Synthesised speech at several rates; one utterance starts with 0.3 s of digital
    silence, whose log-mel sits at the floor (-23) and stretches each band's range."""
    import soxr

    root = tmp_path_factory.mktemp("speech")
    engine = ESpeak()
    scan = CorpusScan("synthetic", str(root))
    for i, (text, voice, rate, sr) in enumerate(LINES):
        x = engine.synthesize(text, VoiceSettings(voice, rate, 50, 50, 100), seed=i).astype(np.float32) / 32768
        if i == 2:
            x = np.concatenate([np.zeros(int(0.3 * engine.sample_rate), np.float32), x])
        if sr != engine.sample_rate:
            x = soxr.resample(x, engine.sample_rate, sr)
        path = root / f"utt-{i}.flac"
        sf.write(path, x, sr)
        scan.records.append(Record(f"utt-{i}", str(path), text.upper(), f"spk{i % 3}", "train", {"n": i}))
    return scan


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory) -> dict[str, Path]:
    """The corpus in each encoding, same records, same shard assignment."""
    root = tmp_path_factory.mktemp("shards")
    out = {}
    for encoding in ENCODINGS:
        config = ShardConfig(samples_per_shard=3, workers=1, feature_encoding=encoding)
        out[encoding] = build_shards(corpus, root / encoding, TOKENIZER, FEATURES, config, progress=False).out_dir
    return out


def decoded(shard_dir: Path) -> dict[str, np.ndarray]:
    """Features by utterance id, read and decoded as the loader does."""
    shards = ShardSet.resolve(shard_dir)
    feats = {}
    for url, expected in zip(shards.urls, shards.samples):
        events: list = []
        for raw in read_shard(url, events, expected):
            n_frames = inspect_sample(raw, 160, None, shards.stored)
            sample = decode_sample(raw, shards.stored)
            assert sample.feats.shape == (n_frames, 160) == (sample.meta["n_frames"], 160)
            feats[sample.meta["id"]] = sample.feats
        assert not events
    return feats


def errors(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> tuple[float, float]:
    assert got.keys() == want.keys()
    diff = np.concatenate(
        [np.abs(got[k].astype(np.float32) - want[k].astype(np.float32)).ravel() for k in want]
    )
    return float(diff.max()), float(diff.mean())


# --------------------------------------------------------------------------- derive


def test_derive_from_float32_logmel_is_the_features_to_the_bit(corpus):
    for record in corpus.records:
        wave = load_audio(record.audio, FEATURES)
        logmel = extract_logmel(wave, FEATURES)
        assert logmel.dtype == np.float32 and logmel.shape == (FEATURES.n_frames(len(wave)), 80)
        features = derive(logmel, FEATURES)
        assert features.dtype == np.float32
        np.testing.assert_array_equal(features, reference_features(wave, FEATURES))
        np.testing.assert_array_equal(features, extract(wave, FEATURES))


def test_float32_logmel_of_the_audio_derives_the_stored_float16_160_features(corpus, built):
    stored = decoded(built["float16-160"])
    # One BLAS thread, as in the build's workers: the mel matrix product rounds
    # differently when it is split over threads.
    with threadpool_limits(1):
        for record in corpus.records:
            wave = load_audio(record.audio, FEATURES)
            derived = derive(extract_logmel(wave, FEATURES), FEATURES).astype(np.float16)
            np.testing.assert_array_equal(derived, stored[record.id])


def reference_derive(logmel: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Steps 3 and 4 as written first: librosa's delta, numpy's float64 normalisation."""
    import librosa

    mel = np.ascontiguousarray(logmel.T, dtype=np.float32)
    delta = librosa.feature.delta(mel, width=config.delta_width, order=1, axis=-1, mode="nearest")
    feats = np.concatenate([mel, delta], axis=0).T.astype(np.float64)
    mean = feats.mean(axis=0)
    std = np.maximum(feats.std(axis=0), config.norm_floor)
    return ((feats - mean) / std).astype(np.float32)


def logmels_of_every_length():
    """Lengths below, at and above the delta window and numpy's pairwise-sum blocks;
    spreads from tiny to wide; bands at the floor and constant ones."""
    rng = np.random.default_rng(11)
    for n in [*range(1, 20), 64, 127, 128, 129, 136, 600, 2400, 9001]:
        for spread in (1e-4, 1.0, 6.0):
            logmel = (rng.standard_normal((n, 80)) * spread - 8).astype(np.float32)
            logmel[:, 7] = -4.5
            logmel[: n // 2, 3] = -23.025851
            yield logmel


def test_derive_equals_librosas_delta_and_numpys_normalisation_to_the_bit():
    for logmel in logmels_of_every_length():
        got = derive(logmel, FEATURES)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        want = reference_derive(logmel, FEATURES)
        assert got.tobytes() == want.tobytes(), f"{len(logmel)} frames"
        # float16 rounded from the float32 values, as decode() gives it
        half = derive_mel(
            torch.from_numpy(np.ascontiguousarray(logmel.T)), FEATURES, torch.float16
        ).numpy()
        assert half.tobytes() == want.astype(np.float16).tobytes()
    other = FeatureConfig(delta_width=5, n_mels=40)
    logmel = np.random.default_rng(0).standard_normal((50, 40)).astype(np.float32)
    assert derive(logmel, other).tobytes() == reference_derive(logmel, other).tobytes()


@pytest.mark.parametrize("encoding", ["float16-logmel", "uint8-logmel"])
def test_decoding_a_logmel_sample_is_derive_of_its_dequantised_codes(encoding):
    for logmel in logmels_of_every_length():
        members = feature_encoding.encode(logmel, encoding)
        # as the reader gives them: read-only arrays over the member bytes
        arrays = {k: np.frombuffer(v.tobytes(), v.dtype).reshape(v.shape) for k, v in members.items()}
        got = feature_encoding.decode(arrays, encoding, FEATURES)
        want = reference_derive(dequantise(members["logmel.npy"], members["logmel_affine.npy"]), FEATURES)
        assert got.dtype == np.float16 and got.flags.c_contiguous and got.shape == (len(logmel), 160)
        assert got.tobytes() == want.astype(np.float16).tobytes(), f"{len(logmel)} frames"


def test_derive_refuses_a_log_mel_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\[T>=1, 80\]"):
        derive(np.zeros((10, 40), np.float32), FEATURES)


# --------------------------------------------------------------------------- quantisation


def synthetic_logmel() -> np.ndarray:
    rng = np.random.default_rng(0)
    logmel = (rng.standard_normal((300, 80)) * np.linspace(0.5, 4, 80) - 8).astype(np.float32)
    logmel[:40, 3] = -23.025851  # a band at the log floor part of the time
    logmel[:, 7] = -4.5  # a constant band
    logmel[:, 9] = -23.0 + 0.001 * rng.standard_normal(300)  # near the floor, tiny variance
    return logmel


def test_float16_codes_keep_the_log_mel_to_float16_precision_around_each_band_mean():
    logmel = synthetic_logmel()
    codes, affine = quantise(logmel, "float16-logmel")
    assert codes.dtype == np.float16 and codes.shape == logmel.shape and codes.flags.c_contiguous
    assert affine.dtype == np.float32 and affine.shape == (2, 80)
    np.testing.assert_allclose(affine[0], logmel.astype(np.float64).mean(axis=0), rtol=1e-6)
    back = dequantise(codes, affine)
    distance = np.abs(logmel.astype(np.float64) - logmel.mean(axis=0))
    # float16 relative rounding, plus float32 rounding of the sum at the log-mel's level
    assert (np.abs(back - logmel) <= distance * 2**-11 * 1.01 + np.abs(logmel) * 2**-23 * 4).all()
    assert affine[1, 7] == 0 and (back[:, 7] == np.float32(-4.5)).all()
    # The near-floor band: plain float16 would keep a few levels of it (step 2**-6 at 23).
    assert np.abs(back[:, 9] - logmel[:, 9]).max() < 1e-5
    assert np.abs(logmel[:, 9].astype(np.float16) - logmel[:, 9]).max() > 1e-3


def test_uint8_quantisation_is_within_half_a_step_of_each_band():
    logmel = synthetic_logmel()
    codes, affine = quantise(logmel, "uint8-logmel")
    assert codes.dtype == np.uint8 and codes.shape == logmel.shape and codes.flags.c_contiguous
    assert affine.dtype == np.float32 and affine.shape == (2, 80)
    back = dequantise(codes, affine)
    step = affine[1]
    assert (np.abs(back - logmel) <= step / 2 * (1 + 1e-4) + 1e-6).all()
    assert step[7] == 0 and (back[:, 7] == np.float32(-4.5)).all()
    varying = np.arange(80) != 7
    assert (codes[:, varying].min(axis=0) == 0).all() and (codes[:, varying].max(axis=0) == 255).all()


def test_a_band_range_is_finer_than_an_utterance_range(corpus):
    """The reason for one (lo, step) per band: on speech, per-utterance steps err more."""
    wave = load_audio(corpus.records[2].audio, FEATURES)  # the one with digital silence
    logmel = extract_logmel(wave, FEATURES)
    reference = derive(logmel, FEATURES)
    per_band = derive(dequantise(*quantise(logmel, "uint8-logmel")), FEATURES)
    lo, hi = float(logmel.min()), float(logmel.max())
    step = np.float32((hi - lo) / 255)
    per_utterance = derive(lo + np.rint((logmel - lo) / step).astype(np.float32) * step, FEATURES)
    assert np.abs(per_band - reference).max() < np.abs(per_utterance - reference).max()
    assert np.abs(per_band - reference).mean() < np.abs(per_utterance - reference).mean()


def test_plain_float16_log_mel_would_fail_on_band_limited_audio(corpus):
    """The reason float16-logmel codes the distance from each band's mean: audio recorded
    at 8 kHz leaves the bands above 4 kHz at the log floor with a tiny variance, which
    plain float16 (steps of 2**-6 there) rounds to a few levels before normalisation."""
    wave = load_audio(corpus.records[3].audio, FEATURES)  # recorded at 8 kHz
    logmel = extract_logmel(wave, FEATURES)
    reference = derive(logmel, FEATURES)
    coded = derive(dequantise(*quantise(logmel, "float16-logmel")), FEATURES)
    plain = derive(logmel.astype(np.float16), FEATURES)
    assert np.abs(coded - reference).max() < 0.01
    assert np.abs(plain - reference).max() > 0.5


# --------------------------------------------------------------------------- shards


def test_each_encoding_decodes_to_the_float16_160_features_within_its_bound(built):
    reference = decoded(built["float16-160"])
    for encoding, (max_bound, mean_bound) in BOUNDS.items():
        worst, mean = errors(decoded(built[encoding]), reference)
        assert worst < max_bound and mean < mean_bound, (encoding, worst, mean)
        assert worst > 0  # the stored log-mel is rounded: not a copy of the features


def test_manifest_records_the_format_and_encoding_and_the_layouts_differ(built):
    sizes = {}
    for encoding, out in built.items():
        manifest = read_manifest(out)
        assert (manifest["shard_format"], manifest["feature_encoding"]) == (2, encoding)
        assert manifest["features"] == FEATURES.to_dict()
        assert "feature_encoding" not in manifest["shard_config"]
        members = feature_encoding.feature_members(encoding) + ("tokens.npy", "json")
        assert shard_writer.sample_members(encoding) == shard_reader.sample_members(encoding) == members
        with tarfile.open(shard_paths(out)[0]) as tar:
            suffixes = [name.split(".", 1)[1] for name in tar.getnames()]
        assert suffixes == list(members) * (len(suffixes) // len(members))
        report = check_shards(out)
        assert report.ok, report.problems
        assert report.encoding == encoding
        sizes[encoding] = sum(e["bytes"] for e in manifest["shards"])
        assert manifest["totals"] == read_manifest(built["float16-160"])["totals"]
    assert sizes["uint8-logmel"] < sizes["float16-logmel"] < sizes["float16-160"]


def test_torch_backend_builds_the_logmel_encodings_too(corpus, tmp_path):
    """Its log-mel, derived as the librosa backend derives, against its own features.
    (Not against the librosa backend's: on the audio recorded at 8 kHz the two backends'
    features differ by up to 1.3 in the bands at the log floor, where the FFTs' last
    bits are all there is to normalise.)"""
    out = {}
    for encoding in ENCODINGS:
        config = ShardConfig(samples_per_shard=3, workers=1, backend="torch", batch_size=4,
                             feature_encoding=encoding)  # fmt: skip
        out[encoding] = build_shards(corpus, tmp_path / encoding, TOKENIZER, FEATURES, config, progress=False).out_dir
        assert check_shards(out[encoding]).ok
    reference = decoded(out["float16-160"])
    for encoding, (max_bound, mean_bound) in BOUNDS.items():
        worst, mean = errors(decoded(out[encoding]), reference)
        assert worst < max_bound and mean < mean_bound, (encoding, worst, mean)


def test_shards_read_without_a_manifest_decode_by_their_members(built, tmp_path):
    for encoding in ENCODINGS:
        bare = tmp_path / encoding
        bare.mkdir()
        for path in shard_paths(built[encoding]):
            shutil.copy(path, bare / path.name)
        shards = ShardSet.resolve(bare)
        assert shards.stored.encoding is None
        np.testing.assert_equal(decoded(bare), decoded(built[encoding]))


def test_another_encoding_rewrites_every_shard_and_the_same_keeps_them(corpus, built, tmp_path):
    """Another encoding rewrites every shard; the same one keeps them all."""
    out = tmp_path / "again"
    shutil.copytree(built["float16-160"], out)
    config = ShardConfig(samples_per_shard=3, workers=1, feature_encoding="uint8-logmel")
    result = build_shards(corpus, out, TOKENIZER, FEATURES, config, progress=False)
    assert result.reused == [] and len(result.written) == 3
    assert [p.read_bytes() for p in shard_paths(out)] == [p.read_bytes() for p in shard_paths(built["uint8-logmel"])]
    again = build_shards(corpus, out, TOKENIZER, FEATURES, config, progress=False)
    assert again.written == [] and len(again.reused) == 3


# --------------------------------------------------------------------------- manifests


def edit_manifest(src: Path, dst: Path, **changes) -> Path:
    """A copy of the shard set ``src`` whose manifest has ``changes`` (None: field removed)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for field, value in changes.items():
        if value is None:
            manifest.pop(field, None)
        else:
            manifest[field] = value
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dst


def test_old_format_manifest_without_the_fields_still_loads(built, tmp_path):
    old = edit_manifest(built["float16-160"], tmp_path / "old", shard_format=None, feature_encoding=None)
    shards = ShardSet.resolve(old)
    assert shards.stored == StoredFeatures("float16-160", FEATURES)
    np.testing.assert_equal(decoded(old), decoded(built["float16-160"]))
    assert check_shards(old).ok
    task = load_task_samples(old)
    assert task.samples.keys() == decoded(old).keys()


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"feature_encoding": "int4-logmel"}, "feature_encoding"),
        ({"feature_encoding": ["uint8-logmel"]}, "feature_encoding"),
        ({"shard_format": 3}, "shard_format"),
        ({"shard_format": "2"}, "shard_format"),
        ({"shard_format": None}, "feature_encoding"),  # a logmel encoding in a format-1 manifest
        ({"features": {"n_mels": 80, "hop": 5}}, "features"),
    ],
)
def test_a_bad_manifest_field_is_named_with_its_file(built, tmp_path, changes, field):
    bad = edit_manifest(built["uint8-logmel"], tmp_path / "bad", **changes)
    manifest = bad / "manifest.json"
    message = f"^{re.escape(str(manifest))}: field {field}: "
    with pytest.raises(ManifestError, match=message):
        ShardSet.resolve(bad)
    with pytest.raises(ManifestError, match=message):
        load_task_samples(bad)
    report = check_shards(bad)
    assert not report.ok and report.problems[0].startswith(f"manifest.json: field {field}: ")


@pytest.mark.parametrize(
    "source, declared, message",
    [
        ("uint8-logmel", "float16-logmel", "logmel.npy: expected float [T>=1, 80] (float16-logmel), got uint8"),
        ("float16-160", "uint8-logmel", "missing member(s) logmel.npy, logmel_affine.npy"),
        ("float16-logmel", "float16-160", "missing member(s) feats.npy"),
    ],
)
def test_samples_of_another_encoding_than_the_manifest_says_are_damage(built, tmp_path, source, declared, message):
    wrong = edit_manifest(built[source], tmp_path / "wrong", feature_encoding=declared)
    shards = ShardSet.resolve(wrong)
    raw = next(read_shard(shards.urls[0], []))
    with pytest.raises(SampleError, match=re.escape(message)):
        inspect_sample(raw, 160, None, shards.stored)
    report = check_shards(wrong)
    assert len(report.problems) == 7 and all(": sample utt-" in p and message in p for p in report.problems)


def test_a_sample_with_the_members_of_two_encodings_is_damage(built):
    shards = ShardSet.resolve(built["float16-logmel"])
    raw = next(read_shard(shards.urls[0], []))
    other = next(read_shard(ShardSet.resolve(built["float16-160"]).urls[0], []))
    raw.members["feats.npy"] = other.members["feats.npy"]
    for stored in (shards.stored, StoredFeatures()):
        with pytest.raises(SampleError, match="feats.npy do not belong to feature encoding float16-logmel"):
            inspect_sample(raw, 160, None, stored)


# --------------------------------------------------------------------------- loaders


def first_batches(shard_dir: Path, n: int = 3) -> list[dict]:
    collator = PretrainCollator(pad_id=PAD_ID, mask_id=MASK_ID, vocab_size=300, seed=3)
    config = LoaderConfig(batch=BatchConfig(max_frames_per_batch=2000, max_batch_size=4, bucket_buffer=8),
                          num_workers=1, seed=7)  # fmt: skip
    loader = build_pretrain_loader(shard_dir, config, collator)
    batches = list(itertools.islice(iter(loader), n))
    loader.close()
    return batches


def test_loader_batches_of_every_encoding_look_alike(built):
    """Same plan, keys, masks and token corruption; features within the encoding's bound."""
    reference = first_batches(built["float16-160"])
    for encoding in ("float16-logmel", "uint8-logmel"):
        batches = first_batches(built[encoding])
        for got, want in zip(batches, reference, strict=True):
            assert got["keys"] == want["keys"]
            for name in ("input_ids", "mlm_labels", "text_mask", "audio_mask", "mcam_mask"):
                assert torch.equal(got[name], want[name]), name
            for name in ("audio_feats", "mcam_targets"):
                assert got[name].dtype == want[name].dtype == torch.float32
                assert got[name].shape == want[name].shape and got[name].shape[-1] == 160
                assert (got[name] - want[name]).abs().max() < BOUNDS[encoding][0]


def test_finetune_data_decodes_every_encoding(built):
    reference = load_task_samples(built["float16-160"])
    for encoding in ("float16-logmel", "uint8-logmel"):
        task = load_task_samples(built[encoding])
        assert task.samples.keys() == reference.samples.keys()
        got = {k: s.feats for k, s in task.samples.items()}
        assert all(f.dtype == np.float16 and f.shape[1] == 160 for f in got.values())
        worst, mean = errors(got, {k: s.feats for k, s in reference.samples.items()})
        assert worst < BOUNDS[encoding][0] and mean < BOUNDS[encoding][1]


@pytest.mark.parametrize("threads", [1, 3])
def test_derive_and_collation_are_the_same_with_any_number_of_torch_threads(threads):
    """One thread: one pass over all bands (a worker); more: bands in blocks, copies in pieces."""
    saved = torch.get_num_threads()
    rng = np.random.default_rng(threads)
    logmel = (rng.standard_normal((1300, 80)) * 2 - 8).astype(np.float32)
    samples = [shard_reader.ShardSample(f"k{i}", "mem", derive(logmel[: 200 + 150 * i], FEATURES).astype(np.float16),
                                        np.arange(5, 20, dtype=np.int32), {}) for i in range(5)]
    collator = PretrainCollator(pad_id=PAD_ID, mask_id=MASK_ID, vocab_size=100)
    try:
        torch.set_num_threads(threads)
        got, batch = derive(logmel, FEATURES), collator(samples)
    finally:
        torch.set_num_threads(saved)
    assert got.tobytes() == reference_derive(logmel, FEATURES).tobytes()
    for i, s in enumerate(samples):
        assert np.array_equal(batch["mcam_targets"][i, : s.n_frames].numpy(), s.feats.astype(np.float32))
        assert not batch["mcam_targets"][i, s.n_frames :].any() and not batch["audio_feats"][i, s.n_frames :].any()
