"""The fused Q/K/V (self-attention) and K/V (cross-attention) projections compute what the
three separate Linear modules compute, with the same parameters and state_dict keys."""

import pytest
import torch

from ctal_ds.model import CTALForPretraining
from ctal_ds.model.attention import MultiHeadAttention, set_fused_projections


def attention_outputs_and_grads(attn, x, mask, context):
    """Output, and gradients of every parameter and input, of a weighted sum of the output."""
    attn.zero_grad(set_to_none=True)
    inputs = [t.detach().clone().requires_grad_() for t in (x, context) if t is not None]
    out = attn(inputs[0], mask, context=inputs[1] if context is not None else None)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {name: p.grad.clone() for name, p in attn.named_parameters()}
    grads.update({f"input{i}": t.grad.clone() for i, t in enumerate(inputs)})
    return out.detach(), grads


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_fused_projection_matches_separate_linears_in_fp32(impl, cross):
    torch.manual_seed(0)
    attn = MultiHeadAttention(hidden_size=24, num_heads=4, dropout=0.0, attn_impl=impl)
    x = torch.randn(3, 11, 24)
    context = torch.randn(3, 7, 24) if cross else None
    mask = torch.ones(3, 7 if cross else 11, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 2:] = False
    results = {}
    for fused in (False, True):
        attn.fuse_projections = fused
        results[fused] = attention_outputs_and_grads(attn, x, mask, context)
    (out_sep, grads_sep), (out_fused, grads_fused) = results[False], results[True]
    torch.testing.assert_close(out_fused, out_sep, atol=1e-6, rtol=0)
    assert grads_fused.keys() == grads_sep.keys()
    # Summation order differs (one [3H] bias gradient vs three [H]), so fp32 rounding: rtol 1e-6.
    for name, g in grads_sep.items():
        torch.testing.assert_close(grads_fused[name], g, atol=1e-6, rtol=1e-6)
    # The gradient reaches every projection: none of them is silently dropped.
    for name in ("query.weight", "key.weight", "value.weight"):
        assert grads_fused[name].abs().sum() > 0, name


def test_fused_projection_really_runs_one_matmul_and_separate_runs_three():
    attn = MultiHeadAttention(
        hidden_size=16, num_heads=2, dropout=0.0, attn_impl="sdpa", fuse_projections=True
    )
    calls = []
    for name in ("query", "key", "value"):
        getattr(attn, name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    x, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    attn(x, mask)
    assert calls == []  # the weights are concatenated, the Linear modules are not called
    attn(x, torch.ones(2, 3, dtype=torch.bool), context=torch.randn(2, 3, 16))
    assert calls == ["query"]  # cross-attention: key and value fused over the context
    calls.clear()
    attn.fuse_projections = False
    attn(x, mask)
    assert calls == ["query", "key", "value"]


def test_zero3_partitioned_parameters_take_the_separate_path():
    """ZeRO-3 gathers a Linear's weights only in that Linear's forward (params have ds_id)."""
    attn = MultiHeadAttention(
        hidden_size=16, num_heads=2, dropout=0.0, attn_impl="sdpa", fuse_projections=True
    )
    calls = []
    for name in ("query", "key", "value"):
        getattr(attn, name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    attn.query.weight.ds_id = 0
    attn(torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool))
    assert calls == ["query", "key", "value"]


def test_whole_model_is_the_same_fused_and_separate_and_keeps_its_state_dict(tiny_config, batch):
    torch.manual_seed(0)
    fused = CTALForPretraining(tiny_config)
    separate = CTALForPretraining(tiny_config)
    assert not any(m.fuse_projections for m in separate.modules() if isinstance(m, MultiHeadAttention))
    assert set_fused_projections(fused, True) == 2 + 2 * 2  # text self; audio self + cross
    keys = list(fused.state_dict())
    assert keys == list(separate.state_dict())
    for prefix in ("ctal.text_encoder.layers.0.self_attention", "ctal.audio_encoder.layers.1.cross_attention"):
        own = sorted(k[len(prefix) + 1 :] for k in keys if k.startswith(prefix + "."))
        assert own == sorted(f"{n}.{p}" for n in ("query", "key", "value", "output") for p in ("weight", "bias"))
    # A state_dict moves between the two paths unchanged.
    separate.load_state_dict(fused.state_dict())
    results = {}
    for name, model in (("fused", fused), ("separate", separate)):
        out = model(batch)
        out["loss"].backward()
        results[name] = out["loss"].detach(), {n: p.grad for n, p in model.named_parameters()}
    torch.testing.assert_close(results["fused"][0], results["separate"][0], atol=1e-6, rtol=0)
    for name, g in results["separate"][1].items():
        torch.testing.assert_close(results["fused"][1][name], g, atol=1e-6, rtol=1e-6)


def test_fused_projection_in_bf16_stays_within_bf16_rounding_of_separate(tiny_config, batch):
    torch.manual_seed(0)
    fused = CTALForPretraining(tiny_config).to(torch.bfloat16)
    separate = CTALForPretraining(tiny_config).to(torch.bfloat16)
    separate.load_state_dict(fused.state_dict())
    set_fused_projections(fused, True)
    bf16_batch = {**batch, "audio_feats": batch["audio_feats"].to(torch.bfloat16)}
    states = {}
    for name, model in (("fused", fused), ("separate", separate)):
        with torch.no_grad():
            out = model.ctal(bf16_batch["input_ids"], bf16_batch["text_mask"],
                             bf16_batch["audio_feats"], bf16_batch["audio_mask"])  # fmt: skip
        states[name] = out.text_states.float(), out.audio_states.float()
    for fused_state, separate_state in zip(states["fused"], states["separate"]):
        # Post-LN states are O(1); bf16 keeps 8 bits of mantissa.
        torch.testing.assert_close(fused_state, separate_state, atol=5e-2, rtol=2e-2)
