"""ctal-ds: DeepSpeed pre-training of CTAL audio-and-language Transformers."""

__version__ = "0.1.0"
