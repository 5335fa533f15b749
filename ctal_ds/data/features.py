"""Acoustic features of the audio stream (paper section 3.1): 80 log-mel + delta = 160 dims.

One API, two backends that compute the same function:

* ``librosa``: the reference, numpy on CPU, one utterance at a time;
* ``torch``: ``torch.stft`` and the same mel matrix, batched over padded waveforms,
  on any device (GPU when one is given).

Definition, for a mono float waveform of ``n`` samples at ``sample_rate``:

1. power STFT, Hann window of ``win_length`` samples zero-padded to ``n_fft``, hop
   ``hop_length``, centred frames: the signal is padded with ``n_fft // 2`` zeros on each
   side, so there are ``n_frames(n) = 1 + n // hop_length`` frames (frame t is centred on
   sample ``t * hop_length``). Zero padding, not reflection: then a waveform padded with
   zeros in a batch has exactly the frames it has alone, and any length >= 1 works;
2. Slaney mel filterbank (``librosa.filters.mel``, ``htk=False, norm="slaney"``) of
   ``n_mels`` bands between ``fmin`` and ``fmax``; natural log of ``max(mel, log_floor)``;
3. first-order delta: ``d_t = sum_{k=1..K} k (x_{t+k} - x_{t-k}) / (2 sum_k k^2)`` with
   ``K = delta_width // 2`` and the first/last frame repeated past the edges (this is
   ``librosa.feature.delta(mode="nearest")``, the least-squares slope over the window);
4. ``[log-mel, delta]`` concatenated, then each of the 160 dims normalised to zero mean
   and unit variance over the utterance's frames (``std`` floored at ``norm_floor``).

:func:`extract_logmel` stops after step 2; :func:`derive` runs steps 3 and 4 on a log-mel,
the way the librosa backend does (shards may store the log-mel instead of the features:
``ctal_ds.data.feature_encoding``).

n_fft is 1024 rather than the 800-sample window: a power of two is the fast FFT size, and
its 15.6 Hz bins leave no empty filter among the narrow low mel bands.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

BACKENDS = ("librosa", "torch")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000  # every input is resampled to this at shard-build time
    win_length: int = 800  # 50 ms
    hop_length: int = 200  # 12.5 ms
    n_fft: int = 1024
    n_mels: int = 80
    fmin: float = 20.0
    fmax: float = 8000.0
    log_floor: float = 1e-10  # on mel power; digital silence maps to log(1e-10) = -23
    delta_width: int = 9  # frames in the delta regression window
    norm_floor: float = 1e-5  # a constant dim becomes 0 instead of dividing by ~0
    max_duration_s: float = 30.0  # longer inputs are rejected, not truncated

    def __post_init__(self) -> None:
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"win_length {self.win_length} must be in (0, n_fft={self.n_fft}]")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got {self.fmin}, {self.fmax}")
        if self.delta_width < 3 or self.delta_width % 2 == 0:
            raise ValueError(f"delta_width must be odd and >= 3, got {self.delta_width}")
        if self.max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be > 0, got {self.max_duration_s}")

    @property
    def dim(self) -> int:
        return 2 * self.n_mels

    def n_frames(self, n_samples: int) -> int:
        """Frames for a waveform of ``n_samples`` (centred frames, see module docstring)."""
        return 1 + n_samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        return cls(**d)


@functools.lru_cache(maxsize=8)
def mel_filterbank(config: FeatureConfig) -> np.ndarray:
    """float32 [n_mels, n_fft // 2 + 1], the one matrix both backends use."""
    import librosa

    return librosa.filters.mel(
        sr=config.sample_rate,
        n_fft=config.n_fft,
        n_mels=config.n_mels,
        fmin=config.fmin,
        fmax=config.fmax,
        htk=False,
        norm="slaney",
        dtype=np.float32,
    )


# --------------------------------------------------------------------------- librosa


def _logmel_librosa(waveform: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """float32 [n_mels, T]: steps 1 and 2 of the definition."""
    import librosa

    with warnings.catch_warnings():
        # librosa warns when the input is shorter than n_fft; zero padding is the definition.
        warnings.filterwarnings("ignore", message="n_fft=.* is too large", category=UserWarning)
        spec = librosa.stft(
            waveform,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            win_length=config.win_length,
            window="hann",
            center=True,
            pad_mode="constant",
        )
    power = np.abs(spec) ** 2
    return np.log(np.maximum(mel_filterbank(config) @ power, config.log_floor))  # [M, T]


def derive(logmel: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Steps 3 and 4 of the definition: log-mel [T, n_mels] (any float dtype, or a
    transposed view of a [n_mels, T] array) -> float32 [T, 2 n_mels] features.

    The values are those of ``librosa.feature.delta`` on the float32 [n_mels, T] log-mel
    followed by the normalisation in float64, the way the librosa backend computes the
    features from the float32 log-mel of its step 2: from that log-mel the result is the
    same to the bit (see :func:`derive_mel`). Shards that store the log-mel
    (``ctal_ds.data.feature_encoding``) are decoded with it.
    """
    import torch

    logmel = np.asarray(logmel)
    if logmel.ndim != 2 or logmel.shape[1] != config.n_mels or logmel.shape[0] < 1:
        raise ValueError(f"expected log-mel [T>=1, {config.n_mels}], got shape {logmel.shape}")
    mel = torch.from_numpy(np.ascontiguousarray(logmel.T, dtype=np.float32))
    return derive_mel(mel, config, torch.float32).numpy()


@functools.lru_cache(maxsize=8)
def _delta_weights(width: int) -> tuple[float, ...]:
    """The correlation weights ``librosa.feature.delta(width, order=1)`` filters with:
    ``scipy.signal.savgol_coeffs(width, 1, deriv=1)`` reversed (``ndimage.convolve1d``
    correlates with the reversed kernel), centre first, then offsets -K..-1."""
    from scipy.signal import savgol_coeffs

    weights = savgol_coeffs(width, 1, deriv=1)[::-1]
    half = width // 2
    if not all(abs(weights[half + k] + weights[half - k]) <= np.finfo(np.float64).eps for k in range(1, half + 1)):
        raise RuntimeError(f"savgol delta weights of width {width} are not antisymmetric: {weights}")
    return (float(weights[half]), *(float(weights[half + k]) for k in range(-half, 0)))


# Element count below which torch runs an element-wise kernel on the calling thread
# (at::internal::GRAIN_SIZE).
_SERIAL_ELEMENTS = 32767


def derive_mel(mel, config: FeatureConfig, dtype):
    """Steps 3 and 4 on a float32 torch tensor [n_mels, T] (contiguous): the features as a
    C-contiguous [T, 2 n_mels] tensor of ``dtype`` (float32, or float16 rounded from the
    float32 values).

    The arithmetic is that of the reference path to the bit: the delta is scipy.ndimage's
    ``correlate1d`` for an antisymmetric kernel in mode ``nearest`` (``w_0 x_t + sum over
    k = -K..-1 of (x_{t+k} - x_{t-k}) w_k`` in float64, in that order, rounded to
    float32), the sums of the mean and the variance are numpy's (per dim over the
    frames), and every other step is one IEEE float64 operation per element, done with
    torch's vectorised kernels, which is where the time went in numpy and ndimage.
    ``tests/data/test_feature_encoding.py`` compares it with librosa's delta and numpy's
    normalisation. With more than one torch thread the mel bands are taken in blocks
    small enough for torch to run each kernel on the calling thread (see
    ``ctal_ds.data.collate.serial_copy`` for why).
    """
    import torch

    n_mels, n = mel.shape
    out = torch.empty((n, 2 * n_mels), dtype=dtype)
    block = n_mels
    if torch.get_num_threads() > 1:
        block = max(1, _SERIAL_ELEMENTS // (2 * (n + config.delta_width)))
    for first in range(0, n_mels, block):
        bands = slice(first, min(n_mels, first + block))
        _derive_bands(mel[bands], config, out[:, bands], out[:, n_mels + bands.start : n_mels + bands.stop])
    return out


def _derive_bands(mel, config: FeatureConfig, out_mel, out_delta) -> None:
    """derive_mel for some mel bands [B, T]: writes their normalised log-mel and delta."""
    import torch

    n_mels, n = mel.shape
    half = config.delta_width // 2
    weights = _delta_weights(config.delta_width)
    padded = torch.empty((n_mels, n + 2 * half), dtype=torch.float64)
    padded[:, half : half + n] = mel
    padded[:, :half] = padded[:, half : half + 1]
    padded[:, half + n :] = padded[:, half + n - 1 : half + n]
    centre = padded[:, half : half + n]
    feats = torch.empty((2 * n_mels, n), dtype=torch.float64)
    feats[:n_mels] = centre
    delta = torch.mul(centre, weights[0])
    diff = torch.empty_like(delta)
    for k in range(-half, 0):
        torch.sub(padded[:, half + k : half + k + n], padded[:, half - k : half - k + n], out=diff)
        diff.mul_(weights[half + k + 1])
        delta.add_(diff)
    feats[n_mels:] = delta.to(torch.float32)  # the float32 delta, widened again
    mean = np.add.reduce(feats.numpy(), axis=1) / n
    feats.sub_(torch.from_numpy(mean)[:, None])  # centred in place
    squares = torch.mul(feats, feats)
    std = np.maximum(np.sqrt(np.add.reduce(squares.numpy(), axis=1) / n), config.norm_floor)
    feats.div_(torch.from_numpy(std)[:, None])
    # float16 is rounded from the float32 values, as the float32 features are rounded.
    values = feats if out_mel.dtype == torch.float32 else feats.to(torch.float32)
    out_mel.copy_(values[:n_mels].t())
    out_delta.copy_(values[n_mels:].t())


def _extract_librosa(waveform: np.ndarray, config: FeatureConfig) -> np.ndarray:
    return derive(_logmel_librosa(waveform, config).T, config)


# --------------------------------------------------------------------------- torch


def torch_logmel(waves, lengths, config: FeatureConfig):
    """Batched log-mel (steps 1 and 2) on the waves' device.

    waves: float [B, N] zero-padded mono waveforms; lengths: int [B] valid samples.
    Returns (logmel float32 [B, T, n_mels], n_frames int64 [B]); frames past an
    utterance's end hold the log-mel of its zero padding.
    """
    import torch

    device = waves.device
    waves = waves.to(torch.float32)
    lengths = torch.as_tensor(lengths, device=device, dtype=torch.int64)
    frames = 1 + lengths // config.hop_length
    spec = torch.stft(
        waves,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window=torch.hann_window(config.win_length, periodic=True, device=device),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # [B, F, T]
    power = spec.real.square() + spec.imag.square()
    fb = torch.from_numpy(mel_filterbank(config)).to(device)
    logmel = torch.log(torch.clamp(torch.matmul(fb, power), min=config.log_floor))
    return logmel.transpose(1, 2), frames  # [B, T, M]


def torch_features(waves, lengths, config: FeatureConfig):
    """Batched features on the waves' device.

    waves: float [B, N] zero-padded mono waveforms; lengths: int [B] valid samples.
    Returns (feats float32 [B, T, dim] with zeros past each utterance's end,
    n_frames int64 [B]). Valid frames do not depend on how much padding follows them.
    """
    import torch

    device = waves.device
    logmel, frames = torch_logmel(waves, lengths, config)
    n_batch, n_time, n_mels = logmel.shape

    # Delta with each utterance's own edge frame repeated, as if it were alone.
    t = torch.arange(n_time, device=device)
    last = (frames - 1)[:, None]  # [B, 1], frames >= 1

    def frames_at(index):  # [B, T] frame indices -> [B, T, M] log-mel rows
        return torch.gather(logmel, 1, index[:, :, None].expand(-1, -1, n_mels))

    delta = torch.zeros_like(logmel)
    half = config.delta_width // 2
    for k in range(1, half + 1):
        ahead = torch.minimum(t[None, :] + k, last)
        behind = (t[None, :] - k).clamp(min=0).expand(n_batch, -1)
        delta += k * (frames_at(ahead) - frames_at(behind))
    delta /= 2 * sum(k * k for k in range(1, half + 1))

    feats = torch.cat([logmel, delta], dim=2)  # [B, T, 2M]
    valid = (t[None, :] < frames[:, None]).unsqueeze(2)  # [B, T, 1]
    count = frames[:, None, None].to(torch.float32)
    mean = (feats * valid).sum(dim=1, keepdim=True) / count
    centred = (feats - mean) * valid
    std = (centred.square().sum(dim=1, keepdim=True) / count).sqrt().clamp(min=config.norm_floor)
    return centred / std, frames


def _extract_torch(
    waveforms: Sequence[np.ndarray], config: FeatureConfig, device, function=torch_features
) -> list[np.ndarray]:
    import torch

    if not waveforms:
        return []
    lengths = [len(w) for w in waveforms]
    waves = torch.zeros(len(waveforms), max(lengths), dtype=torch.float32)
    for i, w in enumerate(waveforms):
        waves[i, : len(w)] = torch.as_tensor(w, dtype=torch.float32)
    feats, frames = function(waves.to(device or "cpu"), lengths, config)
    feats = feats.cpu().numpy()
    return [feats[i, :n] for i, n in enumerate(frames.tolist())]


# --------------------------------------------------------------------------- API


def _check_input(waveform: np.ndarray) -> np.ndarray:
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1 or waveform.size == 0:
        raise ValueError(f"expected a non-empty mono waveform, got shape {waveform.shape}")
    return waveform


def extract(
    waveform: np.ndarray, config: FeatureConfig | None = None, backend: str = "librosa", device=None
) -> np.ndarray:
    """float32 [config.n_frames(len(waveform)), config.dim] for one mono waveform at
    ``config.sample_rate`` (see :func:`ctal_ds.data.audio.load_audio`)."""
    return extract_batch([waveform], config, backend, device)[0]


def extract_batch(
    waveforms: Sequence[np.ndarray],
    config: FeatureConfig | None = None,
    backend: str = "torch",
    device=None,
) -> list[np.ndarray]:
    """:func:`extract` for many waveforms; the torch backend runs them as one padded batch
    on ``device`` (default CPU), the librosa backend one after another."""
    config = config or FeatureConfig()
    waveforms = [_check_input(w) for w in waveforms]
    if backend == "librosa":
        return [_extract_librosa(w, config) for w in waveforms]
    if backend == "torch":
        return _extract_torch(waveforms, config, device)
    raise ValueError(f"unknown feature backend {backend!r}; expected one of {BACKENDS}")


def extract_logmel(
    waveform: np.ndarray, config: FeatureConfig | None = None, backend: str = "librosa", device=None
) -> np.ndarray:
    """float32 [config.n_frames(len(waveform)), config.n_mels]: the log-mel of steps 1
    and 2, from which :func:`derive` makes the features."""
    return extract_logmel_batch([waveform], config, backend, device)[0]


def extract_logmel_batch(
    waveforms: Sequence[np.ndarray],
    config: FeatureConfig | None = None,
    backend: str = "torch",
    device=None,
) -> list[np.ndarray]:
    """:func:`extract_logmel` for many waveforms, batched as in :func:`extract_batch`."""
    config = config or FeatureConfig()
    waveforms = [_check_input(w) for w in waveforms]
    if backend == "librosa":
        return [_logmel_librosa(w, config).T for w in waveforms]
    if backend == "torch":
        return _extract_torch(waveforms, config, device, torch_logmel)
    raise ValueError(f"unknown feature backend {backend!r}; expected one of {BACKENDS}")
