"""Audio loading and the 160-dim features, on speech synthesised on the fly (espeak-ng)
and on tones written in the formats and rates corpora come in."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from ctal_ds.data.audio import AudioRejected, load_audio
from ctal_ds.data.demo.espeak import ESpeak, VoiceSettings
from ctal_ds.data.features import FeatureConfig, extract, extract_batch

CFG = FeatureConfig()

# Measured on these utterances: max |librosa - torch| ~ 8e-5 after normalisation (float32
# FFTs in both). The bound leaves an order of magnitude for other BLAS/FFT builds.
AGREEMENT_TOL = 1e-3


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> list[np.ndarray]:
    """Real speech: espeak-ng at 22.05 kHz, loaded (and so resampled) like corpus audio."""
    engine = ESpeak()
    root = tmp_path_factory.mktemp("speech")
    lines = [
        ("the quick brown fox jumps over the lazy dog", "en-us", 170),
        ("she sells sea shells by the sea shore", "en-us+f2", 140),
        ("one two three four five six", "en+m3", 220),
        ("yes", "en", 200),  # short: fewer frames than the delta window
    ]
    waves = []
    for i, (text, voice, rate) in enumerate(lines):
        samples = engine.synthesize(text, VoiceSettings(voice, rate, 50, 50, 100), seed=i)
        path = root / f"utt{i}.wav"
        sf.write(path, samples, engine.sample_rate)
        waves.append(load_audio(path, CFG))
    return waves


def tone(freq: float, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("backend", ["librosa", "torch"])
@pytest.mark.parametrize("n_samples", [1, 199, 200, 201, 3999, 16000, 16001])
def test_frame_count_is_one_plus_samples_over_hop(backend, n_samples):
    wave = np.random.default_rng(n_samples).standard_normal(n_samples).astype(np.float32) * 0.1
    feats = extract(wave, CFG, backend)
    assert feats.dtype == np.float32
    assert feats.shape == (1 + n_samples // 200, 160) == (CFG.n_frames(n_samples), CFG.dim)


@pytest.mark.parametrize("backend", ["librosa", "torch"])
def test_each_dim_is_normalised_over_the_utterance(speech, backend):
    for wave in speech:
        feats = extract(wave, CFG, backend).astype(np.float64)
        assert np.abs(feats.mean(axis=0)).max() < 1e-4
        assert np.abs(feats.std(axis=0) - 1).max() < 1e-3


def test_librosa_and_torch_backends_agree_on_speech(speech):
    worst = 0.0
    for wave in speech:
        ref = extract(wave, CFG, "librosa")
        got = extract(wave, CFG, "torch")
        assert got.shape == ref.shape
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst < AGREEMENT_TOL


def regression_delta(x: np.ndarray, half: int) -> np.ndarray:
    """Delta as the docs define it, written independently: edge frames repeated."""
    padded = np.concatenate([np.repeat(x[:1], half, 0), x, np.repeat(x[-1:], half, 0)])
    n = len(x)
    num = sum(k * (padded[half + k : half + k + n] - padded[half - k : half - k + n]) for k in range(1, half + 1))
    return num / (2 * sum(k * k for k in range(1, half + 1)))


@pytest.mark.parametrize("backend", ["librosa", "torch"])
def test_second_half_is_the_normalised_delta_of_the_first(speech, backend):
    # Normalisation is affine per dim, so the delta of the normalised log-mel,
    # normalised again, must equal the stored delta dims.
    for wave in speech:
        feats = extract(wave, CFG, backend).astype(np.float64)
        delta = regression_delta(feats[:, :80], CFG.delta_width // 2)
        delta = (delta - delta.mean(0)) / np.maximum(delta.std(0), 1e-12)
        np.testing.assert_allclose(feats[:, 80:], delta, atol=1e-4)  # measured 5e-7


def test_batched_torch_features_do_not_depend_on_padding(speech):
    batch = extract_batch(speech, CFG, backend="torch")
    for wave, feats in zip(speech, batch):
        assert feats.shape == (CFG.n_frames(len(wave)), 160)
        np.testing.assert_allclose(feats, extract(wave, CFG, "torch"), atol=1e-5)


def test_librosa_batch_is_a_loop_over_utterances(speech):
    for wave, feats in zip(speech[:2], extract_batch(speech[:2], CFG, backend="librosa")):
        np.testing.assert_array_equal(feats, extract(wave, CFG, "librosa"))


def test_unknown_backend_and_bad_input_are_refused():
    with pytest.raises(ValueError, match="backend"):
        extract(np.zeros(400, np.float32), CFG, "kaldi")
    with pytest.raises(ValueError, match="mono"):
        extract(np.zeros((2, 400), np.float32), CFG)
    with pytest.raises(ValueError, match="win_length"):
        FeatureConfig(win_length=2048)


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("rate", [44100, 8000, 22050])
def test_other_rates_are_resampled_to_16k(tmp_path, rate):
    path = tmp_path / f"tone_{rate}.flac"
    sf.write(path, tone(1000, 1.5, rate), rate)
    wave = load_audio(path, CFG)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - round(1.5 * 16000)) <= 1
    assert abs(peak_hz(wave, 16000) - 1000) < 2
    assert 0.35 < np.abs(wave[2000:-2000]).max() < 0.45  # amplitude kept


def test_resampled_speech_gives_the_features_of_native_16k_speech(tmp_path, speech):
    """44.1 kHz and 16 kHz copies of one utterance: same frames, near-equal features."""
    native = speech[0]
    path = tmp_path / "up.wav"
    sf.write(path, load_audio_resampled(native, 44100), 44100, subtype="FLOAT")
    back = load_audio(path, CFG)
    n = min(len(back), len(native))
    a, b = extract(native[:n], CFG), extract(back[:n], CFG)
    assert np.median(np.abs(a[:, :80] - b[:, :80])) < 0.05


def load_audio_resampled(wave: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    return soxr.resample(wave, 16000, rate)


def test_channels_are_averaged(tmp_path):
    left, right = tone(440, 1.0, 16000), tone(660, 1.0, 16000) * 0.5
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav", CFG), (left + right) / 2, atol=1e-7)
    six = np.stack([left] * 3 + [right] * 3, axis=1)
    sf.write(tmp_path / "surround.flac", six, 16000)
    np.testing.assert_allclose(load_audio(tmp_path / "surround.flac", CFG), (left + right) / 2, atol=1e-4)


def test_integer_pcm_is_scaled_to_unit_range(tmp_path):
    sf.write(tmp_path / "pcm16.wav", (tone(300, 0.5, 16000) * 32767).astype(np.int16), 16000)
    wave = load_audio(tmp_path / "pcm16.wav", CFG)
    assert 0.35 < np.abs(wave).max() < 0.45


def rejection(path, config=CFG) -> str:
    with pytest.raises(AudioRejected) as info:
        load_audio(path, config)
    assert str(path) in str(info.value)  # the message names the file
    return info.value.reason


def test_rejects_unusable_audio_with_a_reason_naming_the_file(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    assert rejection(tmp_path / "empty.wav").startswith("empty audio")

    (tmp_path / "garbage.flac").write_bytes(b"this is not audio at all" * 50)
    assert rejection(tmp_path / "garbage.flac").startswith("unreadable audio")

    good = tmp_path / "good.flac"
    sf.write(good, tone(200, 1.0, 16000), 16000)
    (tmp_path / "truncated.flac").write_bytes(good.read_bytes()[:200])
    assert rejection(tmp_path / "truncated.flac").startswith(("unreadable audio", "empty audio"))

    assert rejection(tmp_path / "absent.wav").startswith("unreadable audio")

    nan = tone(200, 1.0, 16000)
    nan[100:110] = np.nan
    nan[500] = np.inf
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    assert rejection(tmp_path / "nan.wav") == "non-finite audio: 11 NaN or infinite samples"

    sf.write(tmp_path / "long.flac", tone(200, 3.5, 8000), 8000)
    assert rejection(tmp_path / "long.flac", FeatureConfig(max_duration_s=3.0)).startswith("too long: 3.50 s")
    assert len(load_audio(tmp_path / "long.flac", FeatureConfig(max_duration_s=4.0))) == 56000
