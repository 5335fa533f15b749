"""The Triton kernels, run by Triton's CPU interpreter, match the eager reference.

TRITON_INTERPRET must be set before Triton is first imported, so each check runs in
a fresh Python process. The interpreter is exact in fp32 only; tolerance 1e-4.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ctal_ds.model import CTALModel
from ctal_ds.model.triton_attention import fused_attention

TOLERANCE = 1e-4


def run_interpreted(script: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_kernel_matches_eager_for_self_and_cross_attention_with_padding():
    errors = run_interpreted(
        """
        import json, torch
        from ctal_ds.model.attention import eager_attention
        from ctal_ds.model.triton_attention import fused_attention

        def case(len_q, len_k, dim, seed):
            g = torch.Generator().manual_seed(seed)
            # q laid out [B, L, H, D] and viewed as [B, H, L, D], as the model does.
            q = torch.randn(2, len_q, 3, dim, generator=g).transpose(1, 2).requires_grad_()
            k = torch.randn(2, 3, len_k, dim, generator=g, requires_grad=True)
            v = torch.randn(2, 3, len_k, dim, generator=g, requires_grad=True)
            mask = torch.ones(2, len_k, dtype=torch.bool)
            mask[1, len_k - 6:] = False
            mask[0, 2] = False
            weight = torch.randn(2, 3, len_q, dim, generator=g)
            results = []
            for fn in (fused_attention, eager_attention):
                for t in (q, k, v):
                    t.grad = None
                out = fn(q, k, v, mask)
                (out * weight).sum().backward()
                results.append([out.detach(), q.grad, k.grad, v.grad])
            return [(a - b).abs().max().item() for a, b in zip(*results)]

        print(json.dumps({
            "self": case(37, 37, 16, 0),
            "cross": case(45, 19, 16, 1),
            "odd_head_dim": case(20, 33, 12, 2),
        }))
        """
    )
    for name, (out, dq, dk, dv) in errors.items():
        assert max(out, dq, dk, dv) < TOLERANCE, (name, out, dq, dk, dv)


def test_query_without_real_keys_gives_zeros_and_finite_gradients():
    result = run_interpreted(
        """
        import json, torch
        from ctal_ds.model.triton_attention import fused_attention
        q = torch.randn(2, 2, 9, 16, requires_grad=True)
        k = torch.randn(2, 2, 5, 16, requires_grad=True)
        v = torch.randn(2, 2, 5, 16, requires_grad=True)
        mask = torch.ones(2, 5, dtype=torch.bool)
        mask[1] = False
        out = fused_attention(q, k, v, mask)
        out.sum().backward()
        print(json.dumps({
            "masked_row_max": out[1].abs().max().item(),
            "finite": all(bool(torch.isfinite(t.grad).all()) for t in (q, k, v)),
        }))
        """
    )
    assert result == {"masked_row_max": 0.0, "finite": True}


def test_whole_model_is_the_same_under_fused_and_eager():
    errors = run_interpreted(
        """
        import json, torch
        from ctal_ds.model import CTALConfig, CTALForPretraining
        config = CTALConfig.preset("tiny", dropout=0.0)
        g = torch.Generator().manual_seed(0)
        batch = {
            "input_ids": torch.randint(5, config.vocab_size, (2, 11), generator=g),
            "text_mask": torch.tensor([[True] * 11, [True] * 7 + [False] * 4]),
            "audio_feats": torch.randn(2, 40, 160, generator=g),
            "audio_mask": torch.tensor([[True] * 40, [True] * 26 + [False] * 14]),
            "mcam_targets": torch.randn(2, 40, 160, generator=g),
            "mcam_mask": torch.rand(2, 40, generator=g) < 0.3,
        }
        batch["mlm_labels"] = torch.where(torch.rand(2, 11, generator=g) < 0.3, batch["input_ids"], -100)
        batch["mlm_labels"][0, 1] = 9
        results = {}
        for impl in ("fused", "eager"):
            torch.manual_seed(0)
            model = CTALForPretraining(config.replace(attn_impl=impl))
            out = model(batch)
            out["loss"].backward()
            results[impl] = (out["loss"].item(), {n: p.grad for n, p in model.named_parameters()})
        loss_f, grads_f = results["fused"]
        loss_e, grads_e = results["eager"]
        print(json.dumps({
            "loss": abs(loss_f - loss_e),
            "grad": max((grads_f[n] - g).abs().max().item() for n, g in grads_e.items()),
        }))
        """
    )
    assert errors["loss"] < TOLERANCE and errors["grad"] < TOLERANCE, errors


def _inputs():
    return {
        "q": torch.randn(2, 3, 5, 16),
        "k": torch.randn(2, 3, 7, 16),
        "v": torch.randn(2, 3, 7, 16),
        "key_mask": torch.ones(2, 7, dtype=torch.bool),
    }


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(k=torch.randn(1, 3, 7, 16)), ValueError, r"k must be \[batch=2, heads=3, len_k, head_dim=16\]"),
        (dict(v=torch.randn(2, 2, 7, 16)), ValueError, r"v must be \[batch=2, heads=3"),
        (dict(k=torch.randn(2, 3, 7, 8)), ValueError, r"k must be .* got \(2, 3, 7, 8\)"),
        (dict(v=torch.randn(2, 3, 6, 16)), ValueError, "k and v must have the same length, got 7 and 6"),
        (dict(q=torch.randn(2, 5, 16)), ValueError, r"q must be 4-D \[batch, heads, length, head_dim\]"),
        (dict(q=[[0.0]]), TypeError, "q must be a torch.Tensor"),
        (dict(k=torch.randn(2, 3, 7, 16, dtype=torch.float64)), TypeError, "share one dtype"),
        (
            dict(q=torch.randn(2, 3, 5, 16).double(), k=torch.randn(2, 3, 7, 16).double(),
                 v=torch.randn(2, 3, 7, 16).double()),
            TypeError, "supports torch.float32",
        ),
        (dict(v=torch.randn(2, 3, 7, 16, device="meta")), ValueError, "one device"),
        (dict(key_mask=torch.ones(2, 6, dtype=torch.bool)), ValueError, r"key_mask must be \[batch, len_k\]"),
        (dict(key_mask=torch.ones(2, 7)), TypeError, "floating mask is ambiguous"),
        (dict(key_mask=torch.ones(2, 7, dtype=torch.bool, device="meta")), ValueError, "key_mask is on meta"),
    ],
)  # fmt: skip
def test_fused_attention_refuses_inconsistent_inputs(change, error, message):
    # Inputs are checked before the kernels are reached, so this runs without a GPU.
    inputs = {**_inputs(), **change}
    with pytest.raises(error, match=message):
        fused_attention(**inputs)


@pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="checks the error raised on a machine without CUDA",
)
def test_fused_backend_without_cuda_says_what_to_do(tiny_config):
    model = CTALModel(tiny_config.replace(attn_impl="fused"))
    with pytest.raises(RuntimeError, match="CUDA"):
        model(torch.tensor([[0, 5, 2]]), audio_feats=torch.zeros(1, 4, 160))
