"""Byte-level BPE tokenizer for the text stream (paper section 3: RoBERTa-style, ~30K vocab).

One JSON file (``tokenizer.json``, the ``tokenizers`` library format) holds everything
needed to reproduce the ids: the vocabulary and merges, the special tokens, the text
normalisation and the ``<s> ... </s>`` template. Normalisation lives inside the file as
the tokenizer's ``normalizer``, so the transcripts it was trained on and every text it
encodes later go through exactly the same steps:

1. Unicode NFKC (full-width forms, ligatures and compatibility characters folded);
2. lower case (LibriSpeech transcripts are upper case, IEMOCAP and MOSEI are mixed);
3. every run of whitespace (tabs, newlines, non-breaking spaces) becomes one space;
4. leading and trailing whitespace removed.

Byte-level pre-tokenisation adds a leading space, so a word is split the same way at the
start of an utterance as in its middle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

# Order fixes the ids: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4 (docs/contracts.md).
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
BOS, PAD, EOS, UNK, MASK = SPECIAL_TOKENS


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """How to train a tokenizer when no trained file is given."""

    vocab_size: int = 30000  # upper bound: a small corpus may yield fewer merges
    min_frequency: int = 2  # a pair seen fewer times is never merged


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )


def _new_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    return tok


class CTALTokenizer:
    """Byte-level BPE with the CTAL special tokens; ``encode`` returns ``<s> ... </s>``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            actual = tokenizer.token_to_id(token)
            if actual != expected_id:
                raise ValueError(
                    f"tokenizer has {token!r} at id {actual}, expected {expected_id}: "
                    f"specials must be {list(SPECIAL_TOKENS)} at ids 0..4"
                )
        if tokenizer.normalizer is None:
            raise ValueError("tokenizer has no normalizer; train it with CTALTokenizer.train")
        probe = tokenizer.encode("a").ids
        if probe[0] != SPECIAL_TOKENS.index(BOS) or probe[-1] != SPECIAL_TOKENS.index(EOS):
            raise ValueError(f"tokenizer does not wrap text in {BOS} ... {EOS} (got {probe})")
        self._tok = tokenizer

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 30000, min_frequency: int = 2
    ) -> CTALTokenizer:
        tok = _new_tokenizer()
        trainer = BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            # All 256 byte symbols, so any text (other scripts, emoji) stays encodable.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}",
            special_tokens=[(BOS, SPECIAL_TOKENS.index(BOS)), (EOS, SPECIAL_TOKENS.index(EOS))],
        )
        return cls(tok)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CTALTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the single JSON file (atomically, so a crash never leaves half a file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def to_json(self) -> str:
        return self._tok.to_str(pretty=True)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def normalize(self, text: str) -> str:
        """The text as the tokenizer sees it (the normalizer stored in the file)."""
        return self._tok.normalizer.normalize_str(text)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; ``decode(encode(t)) == normalize(t)`` for any ``t``."""
        # strip(): the byte-level pre-tokenizer added a space before the first word.
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens).strip()

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        return SPECIAL_TOKENS.index(BOS)

    @property
    def pad_id(self) -> int:
        return SPECIAL_TOKENS.index(PAD)

    @property
    def eos_id(self) -> int:
        return SPECIAL_TOKENS.index(EOS)

    @property
    def unk_id(self) -> int:
        return SPECIAL_TOKENS.index(UNK)

    @property
    def mask_id(self) -> int:
        return SPECIAL_TOKENS.index(MASK)
