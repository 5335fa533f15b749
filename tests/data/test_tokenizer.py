"""Byte-level BPE tokenizer: special ids, the <s> ... </s> template, and one normalisation
stored in the file and applied at training and at use."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models

from ctal_ds.data.tokenizer import CTALTokenizer

# LibriSpeech-style upper-case transcripts, plus the odd mixed-case one.
TRANSCRIPTS = [
    "CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED",
    "MISSUS RACHEL LYNDE LIVED JUST WHERE THE AVONLEA MAIN ROAD DIPPED DOWN",
    "INTO A LITTLE HOLLOW FRINGED WITH ALDERS AND LADIES EARDROPS",
    "and traversed by a brook that had its source away back in the woods",
    "OF THE OLD CUTHBERT PLACE IT WAS REPUTED TO BE AN INTRICATE HEADLONG BROOK",
] * 20


@pytest.fixture(scope="module")
def tok() -> CTALTokenizer:
    return CTALTokenizer.train(TRANSCRIPTS, vocab_size=400, min_frequency=2)


def test_special_tokens_take_ids_0_to_4_in_contract_order(tok):
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)


def test_encode_wraps_text_in_bos_and_eos(tok):
    ids = tok.encode("the brook")
    assert ids[0] == 0 and ids[-1] == 2
    assert all(i > 4 for i in ids[1:-1])
    assert tok.encode("") == [0, 2]


def test_decode_inverts_encode_up_to_normalisation(tok):
    for text in ["MISSUS RACHEL LYNDE", "a  Brook\tthat had\n its source", "Ünïcödé ☃ 日本語 text"]:
        assert tok.decode(tok.encode(text)) == tok.normalize(text)
    assert tok.normalize("  MISSUS\t RACHEL\n") == "missus rachel"


def test_bytes_outside_the_training_text_never_become_unk(tok):
    ids = tok.encode("日本語 ☃")
    assert tok.unk_id not in ids
    assert tok.decode(ids) == "日本語 ☃"


def test_normalisation_is_the_same_at_training_and_at_use(tok, tmp_path):
    # Trained on upper case only, the merges are lower case: normalisation ran at training.
    vocab = json.loads(tok.to_json())["model"]["vocab"]
    assert "Ġrachel" in vocab and "ĠRACHEL" not in vocab
    # The normaliser travels in the file: a reloaded tokenizer folds case, width and spacing.
    path = tok.save(tmp_path / "tokenizer.json")
    loaded = CTALTokenizer.load(path)
    reference = loaded.encode("missus rachel lynde")
    assert loaded.encode("MISSUS   RACHEL\tLYNDE ") == reference
    assert loaded.encode("ＭＩＳＳＵＳ RACHEL LYNDE") == reference  # full-width letters (NFKC)
    assert reference == tok.encode("missus rachel lynde")
    # Known words become few tokens, i.e. the trained merges apply to normalised input.
    assert len(reference) <= 2 + 3


def test_save_load_round_trip_is_one_identical_file(tok, tmp_path):
    path = tok.save(tmp_path / "tokenizer.json")
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
    loaded = CTALTokenizer.load(path)
    assert loaded.to_json() == tok.to_json()
    assert loaded.sha256() == tok.sha256()
    assert loaded.vocab_size == tok.vocab_size


def test_training_is_deterministic_and_respects_the_vocab_bound():
    a = CTALTokenizer.train(TRANSCRIPTS, vocab_size=350, min_frequency=2)
    b = CTALTokenizer.train(list(TRANSCRIPTS), vocab_size=350, min_frequency=2)
    assert a.to_json() == b.to_json()
    assert 5 + 256 < a.vocab_size <= 350  # specials + byte alphabet + some merges
    small = CTALTokenizer.train(["tiny corpus"], vocab_size=30000, min_frequency=2)
    assert small.vocab_size < 30000  # the trainer stops when nothing is left to merge


def test_loading_a_tokenizer_with_other_special_ids_fails(tmp_path):
    other = Tokenizer(models.BPE(unk_token="<unk>"))
    other.add_special_tokens(["<pad>", "<s>", "</s>", "<unk>", "<mask>"])  # <pad> first
    path = tmp_path / "other.json"
    other.save(str(path))
    with pytest.raises(ValueError, match="<s>"):
        CTALTokenizer.load(path)

