"""The sdpa and eager backends compute the same attention (fp32, atol 1e-5)."""

import pytest
import torch

from ctal_ds.model import CTALForPretraining, eager_attention, sdpa_attention
from ctal_ds.model.attention import MultiHeadAttention


def qkv(len_q, len_k, seed=0, batch=2, heads=3, dim=8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, len_q, dim, generator=g, requires_grad=True)
    k = torch.randn(batch, heads, len_k, dim, generator=g, requires_grad=True)
    v = torch.randn(batch, heads, len_k, dim, generator=g, requires_grad=True)
    mask = torch.ones(batch, len_k, dtype=torch.bool)
    mask[1, len_k // 2 :] = False
    return q, k, v, mask


def forward_and_grads(fn, q, k, v, mask):
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v, mask)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [t.grad.clone() for t in (q, k, v)]


@pytest.mark.parametrize("len_q,len_k", [(13, 13), (29, 11)], ids=["self", "cross"])
def test_sdpa_and_eager_agree_in_forward_and_gradients(len_q, len_k):
    q, k, v, mask = qkv(len_q, len_k)
    out_e, grads_e = forward_and_grads(eager_attention, q, k, v, mask)
    out_s, grads_s = forward_and_grads(sdpa_attention, q, k, v, mask)
    torch.testing.assert_close(out_s, out_e, atol=1e-5, rtol=0)
    for g_s, g_e in zip(grads_s, grads_e):
        torch.testing.assert_close(g_s, g_e, atol=1e-5, rtol=0)


def test_masked_keys_get_no_weight():
    q, k, v, mask = qkv(6, 10)
    reference = eager_attention(q, k, v, mask)
    v_noisy = torch.where(mask[:, None, :, None], v, v + 50.0)
    for fn in (eager_attention, sdpa_attention):
        torch.testing.assert_close(fn(q, k, v_noisy, mask), reference, atol=1e-5, rtol=0)


def test_a_query_without_any_real_key_returns_zeros_in_both_backends():
    q, k, v, mask = qkv(5, 7)
    mask[0] = False
    for fn in (eager_attention, sdpa_attention):
        out, grads = forward_and_grads(fn, q, k, v, mask)
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        assert all(torch.isfinite(g).all() for g in grads)


def test_attention_module_splits_and_merges_heads_like_the_reference():
    torch.manual_seed(0)
    attn = MultiHeadAttention(hidden_size=12, num_heads=3, dropout=0.0, attn_impl="sdpa")
    x, ctx = torch.randn(2, 5, 12), torch.randn(2, 4, 12)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])

    def heads(t):
        return t.view(2, -1, 3, 4).transpose(1, 2)

    q, k, v = heads(attn.query(x)), heads(attn.key(ctx)), heads(attn.value(ctx))
    scores = (q @ k.transpose(-1, -2)) / 2.0 + torch.where(mask, 0.0, float("-inf"))[:, None, None]
    by_hand = attn.output((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attn(x, mask, context=ctx), by_hand, atol=1e-6, rtol=0)


def test_whole_model_is_the_same_under_sdpa_and_eager(tiny_config, batch):
    losses, grads = {}, {}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = CTALForPretraining(tiny_config.replace(attn_impl=impl))
        out = model(batch)
        out["loss"].backward()
        losses[impl] = out["loss"].detach()
        grads[impl] = {n: p.grad for n, p in model.named_parameters()}
    torch.testing.assert_close(losses["sdpa"], losses["eager"], atol=1e-5, rtol=0)
    for name, g in grads["eager"].items():
        torch.testing.assert_close(grads["sdpa"][name], g, atol=1e-5, rtol=0, msg=name)
