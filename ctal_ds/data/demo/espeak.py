"""ctypes binding to the libespeak-ng shipped by the ``espeakng-loader`` wheel.

Only the synchronous (retrieval) mode is bound: ``espeak_Synth`` returns after the
whole utterance has been passed, chunk by chunk, to a callback that collects int16
samples. No audio device and no system package are involved, so the demo corpus
builds on any Linux box the wheel installs on.

Reproducibility: libespeak-ng keeps synthesis state in C globals that no API resets
(the pitch-flutter phase, the automatic gain, the roughness cycle counter), so the
same call gives different samples depending on what the process spoke before. Each
utterance is therefore spoken by a freshly loaded copy of the library (``dlopen`` /
``dlclose``, well under a millisecond), and both random generators it draws noise
from (its own, for breathy voices, and libc's ``rand``, for Klatt voices) are seeded
per utterance. The samples then depend only on (text, settings, seed).
"""

from __future__ import annotations

import _ctypes
import ctypes
import dataclasses
import os

import numpy as np

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit() inside the library
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4

# int callback(short *wav, int numsamples, espeak_EVENT *events); events are not read.
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

# Bounds espeak-ng accepts (speak_lib.h). Values are clamped here so that a prosody
# offset can never become a library error halfway through a build.
RATE_BOUNDS = (80, 450)  # words per minute
PITCH_BOUNDS = (0, 99)  # base pitch within the voice's own pitch range
RANGE_BOUNDS = (0, 99)  # pitch movement: 0 = monotone
VOLUME_BOUNDS = (0, 200)  # amplitude, 100 = normal


@dataclasses.dataclass(frozen=True)
class VoiceSettings:
    """Everything espeak-ng needs to speak one utterance the same way every time."""

    voice: str  # espeak voice name with variant, e.g. "en-us+f2"
    rate: int
    pitch: int
    range: int
    volume: int


def _clamp(value: float, bounds: tuple[int, int]) -> int:
    return int(min(max(round(value), bounds[0]), bounds[1]))


def _bind(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,  # text
        ctypes.c_size_t,  # size in bytes, terminator included
        ctypes.c_uint,  # start position
        ctypes.c_int,  # position type
        ctypes.c_uint,  # end position (0 = none)
        ctypes.c_uint,  # flags
        ctypes.c_void_p,  # unique identifier out-parameter
        ctypes.c_void_p,  # user data
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Terminate.restype = ctypes.c_int


class ESpeak:
    """Text to int16 samples with espeak-ng. Not thread-safe (the library is not):
    use one per process."""

    def __init__(self) -> None:
        import espeakng_loader  # imported here: only synthesis needs the wheel

        self._library_path = espeakng_loader.get_library_path()
        self._data_path = espeakng_loader.get_data_path().encode()
        self._libc = ctypes.CDLL(None)
        self._chunks: list[np.ndarray] = []
        # Kept on self: ctypes does not keep a callback alive for the library.
        self._callback = _SynthCallback(self._collect)
        self.sample_rate = self._probe_sample_rate()

    def _collect(self, wav, n_samples, _events) -> int:
        if wav and n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0  # 0 = keep synthesising

    def _load(self) -> tuple[ctypes.CDLL, int]:
        # RTLD_LOCAL and no other reference: dlclose really unloads, so the next
        # load starts from the library's pristine globals.
        lib = ctypes.CDLL(self._library_path, mode=ctypes.RTLD_LOCAL)
        _bind(lib)
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path, _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            self._unload(lib)
            raise RuntimeError(
                f"espeak_Initialize failed with data at {self._data_path.decode()}"
            )
        lib.espeak_SetSynthCallback(self._callback)
        return lib, rate

    @staticmethod
    def _unload(lib: ctypes.CDLL) -> None:
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)

    def _probe_sample_rate(self) -> int:
        lib, rate = self._load()
        self._unload(lib)
        # If someone else in this process holds the library, dlclose leaves it (and its
        # state) resident and the output would silently depend on call history.
        try:
            resident = ctypes.CDLL(self._library_path, mode=os.RTLD_NOLOAD)
        except OSError:
            return rate
        _ctypes.dlclose(resident._handle)
        raise RuntimeError(
            f"{self._library_path} is already loaded by other code in this process, so it "
            "cannot be reloaded per utterance; synthesise in a separate process"
        )

    def synthesize(self, text: str, settings: VoiceSettings, seed: int) -> np.ndarray:
        """Speak ``text``; returns int16 samples at :attr:`sample_rate`.

        The same (text, settings, seed) gives the same samples in any process and
        after any earlier call (see the module docstring).
        """
        lib, _ = self._load()
        try:
            if lib.espeak_SetVoiceByName(settings.voice.encode()) != _EE_OK:
                raise ValueError(f"espeak-ng has no voice {settings.voice!r}")
            for param, value, bounds in (
                (_PARAM_RATE, settings.rate, RATE_BOUNDS),
                (_PARAM_PITCH, settings.pitch, PITCH_BOUNDS),
                (_PARAM_RANGE, settings.range, RANGE_BOUNDS),
                (_PARAM_VOLUME, settings.volume, VOLUME_BOUNDS),
            ):
                lib.espeak_SetParameter(param, _clamp(value, bounds), 0)
            seed &= 0x7FFFFFFF
            lib.espeak_ng_SetRandSeed(seed)
            self._libc.srand(ctypes.c_uint(seed))
            self._chunks = []
            data = text.encode("utf-8") + b"\0"
            status = lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            if status != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed (status {status}) on {text!r}")
        finally:
            self._unload(lib)
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks).astype(np.int16, copy=False)
