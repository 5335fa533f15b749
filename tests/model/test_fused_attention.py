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
from ctal_ds.model.triton_attention import fused_attention, key_lengths_from_mask

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


def test_padding_layouts_and_masks_match_eager_with_exact_zeros():
    report = run_interpreted(
        """
        import json, torch
        from ctal_ds.model.attention import eager_attention
        from ctal_ds.model.triton_attention import fused_attention, key_lengths_from_mask

        def run(fn, q, k, v, mask, grad_out, leaves, **kwargs):
            for t in leaves:
                t.grad = None
            out = fn(q, k, v, mask, **kwargs)
            out.backward(grad_out)
            return [out.detach()] + [t.grad.clone() for t in leaves]

        def max_err(a, b):
            return max((x - y).abs().max().item() for x, y in zip(a, b))

        g = torch.Generator().manual_seed(0)
        report = {}
        # Batch element 0 has a masked key and a padded tail, 1 has no real key, 2 none
        # padded. Lengths on (32) and off (21, 37) the interpreter's 16-row blocks;
        # head dim 16 fills the 16-wide block, 12 does not.
        for name, (len_q, len_k, dim) in {
            "self_32_d16": (32, 32, 16), "cross_21x37_d12": (21, 37, 12), "self_37_d12": (37, 37, 12),
        }.items():
            q, k, v = (torch.randn(3, 2, n, dim, generator=g, requires_grad=True) for n in (len_q, len_k, len_k))
            mask = torch.ones(3, len_k, dtype=torch.bool)
            mask[0, 3] = False
            mask[0, len_k - 9:] = False
            mask[1] = False
            grad_out = torch.randn(3, 2, len_q, dim, generator=g)
            fused = run(fused_attention, q, k, v, mask, grad_out, [q, k, v])
            eager = run(eager_attention, q, k, v, mask, grad_out, [q, k, v])
            out, dq, dk, dv = fused
            masked_keys = (~mask)[:, None, :, None].expand_as(dk)
            report[name] = {
                "err": max_err(fused, eager),
                "no_key_out": out[1].abs().max().item(),
                "no_key_dq": dq[1].abs().max().item(),
                "masked_dk": dk[masked_keys].abs().max().item(),
                "masked_dv": dv[masked_keys].abs().max().item(),
            }
        # An integer 0/1 mask is converted, not reinterpreted: the same output as bool.
        report[name]["int_mask_vs_bool"] = (fused_attention(q, k, v, mask.to(torch.int64)) - out).abs().max().item()

        # q, k, v as slices of one fused [B, L, 3, H, D] projection, viewed [B, H, L, D];
        # grad_out a stride-0 expansion of a scalar.
        qkv = torch.randn(2, 29, 3, 2, 16, generator=g, requires_grad=True)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        mask = torch.ones(2, 29, dtype=torch.bool)
        mask[1, 20:] = False
        grad_out = torch.ones(()).expand(2, 2, 29, 16)
        report["fused_qkv_expanded_grad"] = {"err": max_err(
            run(fused_attention, q, k, v, mask, grad_out, [qkv]),
            run(eager_attention, q, k, v, mask, grad_out, [qkv]),
        )}

        # key_lengths cuts keys the mask allows; it agrees with key_lengths_from_mask.
        q = torch.randn(2, 2, 19, 16, generator=g, requires_grad=True)
        k, v = (torch.randn(2, 2, 40, 16, generator=g, requires_grad=True) for _ in range(2))
        mask = torch.ones(2, 40, dtype=torch.bool)
        mask[0, 5] = False
        lengths = torch.tensor([40, 17])
        prefix = mask & (torch.arange(40) < lengths[:, None])
        grad_out = torch.randn(2, 2, 19, 16, generator=g)
        report["key_lengths"] = {
            "err": max_err(
                run(fused_attention, q, k, v, mask, grad_out, [q, k, v], key_lengths=lengths),
                run(eager_attention, q, k, v, prefix, grad_out, [q, k, v]),
            ),
            "from_mask": key_lengths_from_mask(prefix).tolist(),
        }
        print(json.dumps(report))
        """
    )
    assert report.pop("key_lengths")["from_mask"] == [40, 17]
    for name, case in report.items():
        assert case.pop("err") < TOLERANCE, (name, report)
        # A row without real keys, and a masked key, get exact zeros; an integer 0/1
        # mask computes exactly what the bool mask does.
        assert all(value == 0.0 for value in case.values()), (name, case)


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
        (dict(key_lengths=torch.tensor([7.0, 3.0])), TypeError, "key_lengths must be an integer tensor"),
        (dict(key_lengths=torch.tensor([7, 3, 1])), ValueError, r"key_lengths must be \[batch\]"),
    ],
)  # fmt: skip
def test_fused_attention_refuses_inconsistent_inputs(change, error, message):
    # Inputs are checked before the kernels are reached, so this runs without a GPU.
    inputs = {**_inputs(), **change}
    with pytest.raises(error, match=message):
        fused_attention(**inputs)


def test_key_lengths_from_mask_is_last_real_key_plus_one():
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    expected = [4, 0, 1]
    assert key_lengths_from_mask(mask).tolist() == expected
    assert key_lengths_from_mask(mask.bool()).tolist() == expected
    assert key_lengths_from_mask(mask.bool()).dtype == torch.int32
    assert key_lengths_from_mask(torch.ones(2, 0, dtype=torch.bool)).tolist() == [0, 0]
    with pytest.raises(TypeError, match="floating mask"):
        key_lengths_from_mask(mask.float())


@pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="checks the error raised on a machine without CUDA",
)
def test_fused_backend_without_cuda_says_what_to_do(tiny_config):
    model = CTALModel(tiny_config.replace(attn_impl="fused"))
    with pytest.raises(RuntimeError, match="CUDA"):
        model(torch.tensor([[0, 5, 2]]), audio_feats=torch.zeros(1, 4, 160))
