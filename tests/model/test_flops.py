import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ctal_ds.model import CTALConfig, CTALForPretraining
from ctal_ds.model.flops import forward_flops, training_flops


def counted_flops(model, batch, backward=False):
    with FlopCounterMode(display=False) as counter:
        out = model(batch)
        if backward:
            out["loss"].backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("cross_attention", [True, False])
def test_formula_equals_torch_flop_counter_for_one_utterance(make_utterance, collate, cross_attention):
    # Distinct sizes so that each term of the formula is tested.
    config = CTALConfig(
        vocab_size=97, num_text_layers=2, num_audio_layers=3, hidden_size=24,
        num_heads=4, ffn_size=40, max_tokens=32, max_frames=64, dropout=0.0,
        # torch's flop counter does not see inside SDPA's CPU kernel; eager is plain matmuls.
        attn_impl="eager", cross_attention=cross_attention,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CTALForPretraining(config)
    batch = collate([make_utterance(config, 11, 29, seed=0)])
    n_mlm = int((batch["mlm_labels"] != -100).sum())
    n_mcam = int(batch["mcam_mask"].sum())
    expected = forward_flops(config, [11], [29], n_mlm, n_mcam)
    assert counted_flops(model, batch) == expected
    assert counted_flops(model, batch, backward=True) == training_flops(config, [11], [29], n_mlm, n_mcam)
