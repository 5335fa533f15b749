"""How a shard stores each utterance's acoustic features, and how a reader gets the
float16 [T, 160] features back: the manifest's ``feature_encoding``.

==============  ========================================  ===========================
encoding        feature members of a sample               bytes
==============  ========================================  ===========================
float16-160     ``feats.npy``  float16 [T, 160]           320 per frame
float16-logmel  ``logmel.npy`` float16 [T, 80]            160 per frame + 640 (affine)
                ``logmel_affine.npy`` float32 [2, 80]
uint8-logmel    ``logmel.npy`` uint8 [T, 80]              80 per frame + 640 (affine)
                ``logmel_affine.npy`` float32 [2, 80]
==============  ========================================  ===========================

(a sample's other members, ``tokens.npy`` and ``json``, are the same in every
encoding; each member also costs a 512-byte tar header and pads to 512 bytes).

``float16-160`` stores the features themselves: 80 log-mel + 80 delta, normalised per
utterance (``ctal_ds.data.features``). It is the default, and the only layout of shard
format 1 (a manifest without ``shard_format``).

The two logmel encodings store step 2 of the feature definition only, the 80 log-mel
dims before the delta and the normalisation, as codes with one affine map per mel band
and utterance: ``logmel_affine.npy`` holds the rows ``(lo, step)`` and the log-mel is
``lo + code * step``, computed in float32 (:func:`dequantise`). Decoding a sample (in
the loader's worker) then derives the 160 dims with :func:`ctal_ds.data.features.derive`,
the function the librosa backend computes them with, and rounds them to float16, so a
decoded sample has the dtype and shape of a float16-160 one. From the unrounded float32
log-mel, derive() gives the builder's float32 features to the bit; what differs is the
rounding of the codes:

``float16-logmel``
    ``lo`` is the band's mean over the utterance, ``step`` its standard deviation, and
    the code is ``(x - lo) / step`` in float16: the log-mel is kept to float16's
    relative precision (2**-11) of its distance from the band's mean. Plain float16 of
    the log-mel is not enough: its precision depends on the level (2**-7 near the log
    floor, -23), and a band that sits near the floor with a tiny variance (above 4 kHz
    in audio recorded at 8 kHz) is then normalised from a handful of levels, an error
    of up to 1.3 in the decoded features where this scheme errs by 0.004.
``uint8-logmel``
    ``lo`` is the band's minimum over the utterance, ``step = (hi - lo) / 255`` for its
    maximum ``hi``, and the code is ``round((x - lo) / step)`` in uint8: within
    ``step / 2`` of the log-mel. One range per band rather than one per utterance: a
    band's range is at most the utterance's, so its steps are at most as coarse. On
    the small demo corpus (synthesised speech) the largest error of the decoded
    features against float16-160 was 0.027 with a range per band and 0.036 with one
    range per utterance, the mean error 0.0039 against 0.0056.

A band that is constant over the utterance has step 0 and decodes to its value exactly.
docs/training.md gives the measured errors and sizes; ``benchmarks/shards.py
encodings`` measures them again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from ctal_ds.data.features import FeatureConfig, derive, derive_mel

__all__ = [
    "DEFAULT_ENCODING",
    "ENCODINGS",
    "FEATS",
    "LOGMEL",
    "LOGMEL_AFFINE",
    "SHARD_FORMAT",
    "ManifestError",
    "StoredFeatures",
    "decode",
    "dequantise",
    "derive",
    "encode",
    "encoding_of_members",
    "feature_members",
    "manifest_fields",
    "member_dtypes",
    "quantise",
    "stores_logmel",
]

# The manifest's shard_format: 1 (no field) knows float16-160 only; 2 adds feature_encoding.
SHARD_FORMAT = 2
FLOAT16_160, FLOAT16_LOGMEL, UINT8_LOGMEL = "float16-160", "float16-logmel", "uint8-logmel"
ENCODINGS = (FLOAT16_160, FLOAT16_LOGMEL, UINT8_LOGMEL)
DEFAULT_ENCODING = FLOAT16_160

# Member suffixes of the stored features, in the order a sample writes them.
FEATS, LOGMEL, LOGMEL_AFFINE = "feats.npy", "logmel.npy", "logmel_affine.npy"
ALL_FEATURE_MEMBERS = (FEATS, LOGMEL, LOGMEL_AFFINE)
# The feature members of each encoding, in writing order, with the dtypes the builder writes.
_MEMBERS = {
    FLOAT16_160: {FEATS: np.dtype(np.float16)},
    FLOAT16_LOGMEL: {LOGMEL: np.dtype(np.float16), LOGMEL_AFFINE: np.dtype(np.float32)},
    UINT8_LOGMEL: {LOGMEL: np.dtype(np.uint8), LOGMEL_AFFINE: np.dtype(np.float32)},
}

UINT8_LEVELS = 255  # steps between a band's min (code 0) and max (code 255)


class ManifestError(ValueError):
    """A manifest field this reader cannot use; the message names the file and the field."""


def check_encoding(encoding: Any) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown feature encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    return encoding


def feature_members(encoding: str) -> tuple[str, ...]:
    """The feature member suffixes of a sample in ``encoding``, in writing order."""
    return tuple(_MEMBERS[check_encoding(encoding)])


def member_dtypes(encoding: str) -> dict[str, np.dtype]:
    """Feature member suffix -> the dtype the builder writes it in."""
    return dict(_MEMBERS[check_encoding(encoding)])


def stores_logmel(encoding: str) -> bool:
    """Whether the builder stores the log-mel (True) or the 160-dim features."""
    return check_encoding(encoding) != FLOAT16_160


def encoding_of_members(members: Collection[str], logmel_dtype: np.dtype | None = None) -> str:
    """The encoding of a sample with these member suffixes (for shards read without a
    manifest): a ``logmel.npy`` of ``logmel_dtype`` uint8 is uint8-logmel, of another
    dtype float16-logmel. A sample without it counts as float16-160, whose
    ``feats.npy`` it may lack."""
    if LOGMEL not in members:
        return FLOAT16_160
    return UINT8_LOGMEL if logmel_dtype == np.uint8 else FLOAT16_LOGMEL


def manifest_fields(encoding: str) -> dict[str, Any]:
    """What a build records in its manifest about the stored features."""
    return {"shard_format": SHARD_FORMAT, "feature_encoding": check_encoding(encoding)}


# --------------------------------------------------------------------------- quantisation


def quantise(logmel: np.ndarray, encoding: str = UINT8_LOGMEL) -> tuple[np.ndarray, np.ndarray]:
    """float [T, M] finite log-mel -> (codes [T, M], float32 [2, M] rows lo, step) of a
    logmel encoding: float16 codes of (x - band mean) / band std for float16-logmel,
    uint8 codes of the band's [min, max] in 255 steps for uint8-logmel."""
    x = np.ascontiguousarray(logmel, dtype=np.float32)
    wide = x.astype(np.float64)
    if check_encoding(encoding) == FLOAT16_LOGMEL:
        lo = wide.mean(axis=0).astype(np.float32)
        step = wide.std(axis=0).astype(np.float32)
    elif encoding == UINT8_LOGMEL:
        lo = x.min(axis=0)
        step = ((x.max(axis=0).astype(np.float64) - lo) / UINT8_LEVELS).astype(np.float32)
    else:
        raise ValueError(f"{encoding} does not store a log-mel")
    safe = np.where(step > 0, step, np.float32(1)).astype(np.float64)
    codes = np.where(step > 0, (wide - lo) / safe, 0.0)
    if encoding == FLOAT16_LOGMEL:
        codes = codes.astype(np.float16)
    else:
        codes = np.clip(np.rint(codes), 0, UINT8_LEVELS).astype(np.uint8)
    return codes, np.stack([lo, step]).astype(np.float32)


def dequantise(codes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """float16 or uint8 codes [T, M] and float32 [2, M] (lo, step) -> float32 [T, M]
    log-mel ``lo + code * step``."""
    affine = np.asarray(affine, dtype=np.float32)
    return affine[0] + codes.astype(np.float32) * affine[1]


# --------------------------------------------------------------------------- encode / decode


def encode(values: np.ndarray, encoding: str) -> dict[str, np.ndarray]:
    """The feature members of one sample, by suffix in writing order.

    values: float32 features [T, 160] for float16-160, the float32 log-mel [T, 80]
    (``features.extract_logmel``) for the logmel encodings.
    """
    if check_encoding(encoding) == FLOAT16_160:
        return {FEATS: np.asarray(values).astype(np.float16)}
    codes, affine = quantise(values, encoding)
    return {LOGMEL: codes, LOGMEL_AFFINE: affine}


def decode(arrays: Mapping[str, np.ndarray], encoding: str, config: FeatureConfig) -> np.ndarray:
    """The float16 [T, 2 n_mels] features of one sample from its feature members.

    float16-160 returns the stored array itself; the logmel encodings derive it: the
    values of ``derive(dequantise(codes, affine), config).astype(np.float16)`` to the bit,
    computed on the transposed [n_mels, T] log-mel (:func:`features.derive_mel`).
    """
    if check_encoding(encoding) == FLOAT16_160:
        return arrays[FEATS]
    import torch

    codes = arrays[LOGMEL]
    affine = np.asarray(arrays[LOGMEL_AFFINE], dtype=np.float32)
    mel = np.empty((codes.shape[1], codes.shape[0]), dtype=np.float32)
    np.multiply(codes.T, affine[1][:, None], out=mel, dtype=np.float32)
    mel += affine[0][:, None]
    return derive_mel(torch.from_numpy(mel), config, torch.float16).numpy()


# --------------------------------------------------------------------------- manifest


@dataclasses.dataclass(frozen=True)
class StoredFeatures:
    """What a reader needs to decode the samples of one shard set.

    encoding: the manifest's feature_encoding; None for shards read without a
        manifest, whose samples are then decoded by the members they hold.
    features: the build's FeatureConfig, whose n_mels, delta_width and norm_floor
        derive() uses for the logmel encodings.
    """

    encoding: str | None = None
    features: FeatureConfig = FeatureConfig()

    def __post_init__(self) -> None:
        if self.encoding is not None:
            check_encoding(self.encoding)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], path: str) -> StoredFeatures:
        """Read and check the manifest's fields; ``path`` names the manifest in errors."""
        shard_format = manifest.get("shard_format", 1)
        if type(shard_format) is not int or not 1 <= shard_format <= SHARD_FORMAT:
            raise ManifestError(
                f"{path}: field shard_format: {shard_format!r} is not a shard format this reader "
                f"knows (1 to {SHARD_FORMAT}); a newer ctal-ds may have written it"
            )
        encoding = manifest.get("feature_encoding", DEFAULT_ENCODING)
        if encoding not in ENCODINGS:
            raise ManifestError(
                f"{path}: field feature_encoding: unknown encoding {encoding!r}; "
                f"this reader knows {', '.join(ENCODINGS)}"
            )
        if shard_format < 2 and encoding != DEFAULT_ENCODING:
            raise ManifestError(
                f"{path}: field feature_encoding: {encoding!r} needs shard_format 2, "
                f"the manifest has shard_format {shard_format}"
            )
        try:
            features = FeatureConfig.from_dict(manifest["features"]) if "features" in manifest else FeatureConfig()
        except (TypeError, ValueError) as err:
            raise ManifestError(f"{path}: field features: not a feature configuration ({err})") from None
        return cls(encoding, features)
