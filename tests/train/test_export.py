"""Tied weights through consolidation: zero_to_fp32 has dropped them before (DESIGN section 4)."""

from __future__ import annotations

import pytest
import torch

from ctal_ds.model import CTALConfig, CTALForPretraining
from ctal_ds.train.export import restore_tied, tied_groups

DECODER, EMBEDDING = "mlm_head.decoder.weight", "ctal.text_encoder.embeddings.token.weight"


@pytest.fixture
def model():
    return CTALForPretraining(CTALConfig.preset("tiny"))


def test_the_mlm_decoder_is_found_tied_to_the_token_embeddings(model):
    assert sorted(map(sorted, tied_groups(model))) == [sorted([DECODER, EMBEDDING])]


def test_a_dropped_tied_alias_is_filled_in_from_its_partner(model):
    state = model.state_dict()
    del state[DECODER]
    assert restore_tied(model, state) == [DECODER]
    assert torch.equal(state[DECODER], state[EMBEDDING])
    model.load_state_dict(state, strict=True)


def test_tied_aliases_that_disagree_are_refused(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state[DECODER] += 1
    with pytest.raises(ValueError, match="differ"):
        restore_tied(model, state)


def test_both_aliases_missing_is_an_error(model):
    state = model.state_dict()
    del state[DECODER], state[EMBEDDING]
    with pytest.raises(KeyError, match="none of them"):
        restore_tied(model, state)
