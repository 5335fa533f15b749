"""Fused flash attention with a key-padding mask, written in Triton.

One kernel serves CTAL's three attentions: text self-attention (L x L), audio
self-attention (T x T) and the audio stream's cross-attention to H_w^N (T x L). The
forward pass streams key blocks through an online softmax (FlashAttention-2) and keeps
only the row log-sum-exp for the backward pass, so no [Lq, Lk] matrix is ever stored.

Conventions shared with `torch.nn.functional.scaled_dot_product_attention`:
`key_mask` is True where a key may be attended to, and a query whose keys are all
masked returns zeros (and gets zero gradients) instead of NaN.

Compiled kernels need a CUDA GPU. With TRITON_INTERPRET=1 in the environment before
Triton is imported, the same kernels run on CPU tensors through Triton's interpreter:
slow, and exact only in fp32 (its bf16 arithmetic is wrong), which is how the tests
check this file on machines without a GPU.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is an optional dependency: only attn_impl="fused" needs it.
    triton = None
    tl = None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_fused_attention_usable(device: torch.device) -> None:
    """Raise a clear error when the fused kernel cannot run on `device`."""
    if triton is None:
        raise RuntimeError(
            "attn_impl='fused' needs Triton (pip install triton); use attn_impl='sdpa' instead"
        )
    if device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"attn_impl='fused' runs Triton kernels, which need a CUDA device (got {device}). "
            "Use attn_impl='sdpa' on CPU, or set TRITON_INTERPRET=1 before importing Triton "
            "to run the kernels (slowly) in Triton's interpreter."
        )


# Scores are kept in log2 units (scale * log2(e) folded into Q.K) because exp2 is the
# native instruction on GPUs; the log-sum-exp handed to backward is in the same units.
_LOG2E = 1.4426950408889634

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


if triton is not None:

    @triton.jit
    def _attention_forward_kernel(
        Q, K, V, KeyMask, Out, LSE,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_ob, stride_oh, stride_om, stride_od,
        stride_maskb,
        num_heads, len_q, len_k, head_dim, qk_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // num_heads
        h = pid_bh % num_heads
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < head_dim

        q = tl.load(
            Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
            mask=(rows[:, None] < len_q) & d_ok[None, :],
            other=0.0,
        )
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

        for start_n in range(0, len_k, BLOCK_N):
            cols = start_n + offs_n
            col_ok = cols < len_k
            key_ok = tl.load(KeyMask + b * stride_maskb + cols, mask=col_ok, other=0) != 0
            kv_mask = col_ok[:, None] & d_ok[None, :]
            k = tl.load(
                K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=kv_mask,
                other=0.0,
            )
            v = tl.load(
                V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=kv_mask,
                other=0.0,
            )
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            s = tl.where(key_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # While a row has seen no valid key its max is -inf; shifting by 0 instead
            # keeps exp2 away from (-inf) - (-inf) = NaN.
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_shift[:, None])
            alpha = tl.math.exp2(m_i - m_shift)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new

        has_key = l_i > 0
        out = acc / tl.where(has_key, l_i, 1.0)[:, None]
        tl.store(
            Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_d[None, :] * stride_od,
            out.to(Out.dtype.element_ty),
            mask=(rows[:, None] < len_q) & d_ok[None, :],
        )
        # +inf for rows without keys makes every backward probability exp2(s - inf) = 0.
        lse = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)), float("inf"))
        tl.store(LSE + pid_bh * len_q + rows, lse, mask=rows < len_q)

    @triton.jit
    def _attention_backward_dkdv_kernel(
        Q, K, V, KeyMask, DO, LSE, Delta, DK, DV,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_dob, stride_doh, stride_dom, stride_dod,
        stride_dkb, stride_dkh, stride_dkn, stride_dkd,
        stride_dvb, stride_dvh, stride_dvn, stride_dvd,
        stride_maskb,
        num_heads, len_q, len_k, head_dim, sm_scale, qk_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        # One program owns a block of keys and walks every query block, so dK and dV
        # are written once, without atomics.
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // num_heads
        h = pid_bh % num_heads
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < head_dim
        col_ok = cols < len_k
        key_ok = tl.load(KeyMask + b * stride_maskb + cols, mask=col_ok, other=0) != 0
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(
            K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
            mask=kv_mask,
            other=0.0,
        )
        v = tl.load(
            V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
            mask=kv_mask,
            other=0.0,
        )
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

        for start_m in range(0, len_q, BLOCK_M):
            rows = start_m + offs_m
            row_ok = rows < len_q
            q_mask = row_ok[:, None] & d_ok[None, :]
            q = tl.load(
                Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=q_mask,
                other=0.0,
            )
            do = tl.load(
                DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dom + offs_d[None, :] * stride_dod,
                mask=q_mask,
                other=0.0,
            )
            lse = tl.load(LSE + pid_bh * len_q + rows, mask=row_ok, other=float("inf"))
            delta = tl.load(Delta + pid_bh * len_q + rows, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.math.exp2(s - lse[:, None])
            p = tl.where(key_ok[None, :], p, 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

        dk = dk * sm_scale
        tl.store(
            DK + b * stride_dkb + h * stride_dkh + cols[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
            dk.to(DK.dtype.element_ty),
            mask=kv_mask,
        )
        tl.store(
            DV + b * stride_dvb + h * stride_dvh + cols[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
            dv.to(DV.dtype.element_ty),
            mask=kv_mask,
        )

    @triton.jit
    def _attention_backward_dq_kernel(
        Q, K, V, KeyMask, DO, LSE, Delta, DQ,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_dob, stride_doh, stride_dom, stride_dod,
        stride_dqb, stride_dqh, stride_dqm, stride_dqd,
        stride_maskb,
        num_heads, len_q, len_k, head_dim, sm_scale, qk_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // num_heads
        h = pid_bh % num_heads
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < head_dim
        row_ok = rows < len_q
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(
            Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
            mask=q_mask,
            other=0.0,
        )
        do = tl.load(
            DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dom + offs_d[None, :] * stride_dod,
            mask=q_mask,
            other=0.0,
        )
        lse = tl.load(LSE + pid_bh * len_q + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(Delta + pid_bh * len_q + rows, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

        for start_n in range(0, len_k, BLOCK_N):
            cols = start_n + offs_n
            col_ok = cols < len_k
            key_ok = tl.load(KeyMask + b * stride_maskb + cols, mask=col_ok, other=0) != 0
            kv_mask = col_ok[:, None] & d_ok[None, :]
            k = tl.load(
                K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=kv_mask,
                other=0.0,
            )
            v = tl.load(
                V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=kv_mask,
                other=0.0,
            )
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.math.exp2(s - lse[:, None])
            p = tl.where(key_ok[None, :], p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)

        dq = dq * sm_scale
        tl.store(
            DQ + b * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
            dq.to(DQ.dtype.element_ty),
            mask=q_mask,
        )


def _block_sizes(head_dim: int) -> tuple[int, int, int]:
    # tl.dot needs every block dimension >= 16. Under the interpreter small blocks make
    # small test shapes cross several blocks and exercise the boundary masks.
    block_d = max(16, triton.next_power_of_2(head_dim))
    if interpreting():
        return 16, 16, block_d
    return 64, (64 if block_d <= 64 else 32), block_d


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow torch's own TF32 switch so the kernel is as exact as a matmul.
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not interpreting():
        return "tf32"
    return "ieee"


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_mask, sm_scale):
        batch, heads, len_q, head_dim = q.shape
        len_k = k.shape[2]
        block_m, block_n, block_d = _block_sizes(head_dim)
        precision = _dot_precision(q.dtype)
        # [B, Lq, H, D] storage viewed as [B, H, Lq, D]: merging heads afterwards is free.
        out = torch.empty(batch, len_q, heads, head_dim, dtype=q.dtype, device=q.device)
        out = out.transpose(1, 2)
        lse = torch.empty(batch * heads, len_q, dtype=torch.float32, device=q.device)
        qk_scale = sm_scale * _LOG2E
        grid = (triton.cdiv(len_q, block_m), batch * heads)
        _attention_forward_kernel[grid](
            q, k, v, key_mask, out, lse,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            key_mask.stride(0),
            heads, len_q, len_k, head_dim, qk_scale,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, key_mask, out, lse)
        ctx.sm_scale = sm_scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, key_mask, out, lse = ctx.saved_tensors
        batch, heads, len_q, head_dim = q.shape
        len_k = k.shape[2]
        block_m, block_n, block_d = _block_sizes(head_dim)
        precision = _dot_precision(q.dtype)
        sm_scale = ctx.sm_scale
        qk_scale = sm_scale * _LOG2E
        # delta_i = sum_d dO_id * O_id, the softmax-backward row term of FlashAttention-2.
        delta = (grad_out.float() * out.float()).sum(-1).reshape(batch * heads, len_q)
        dq = torch.empty_like(q)
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        _attention_backward_dkdv_kernel[(triton.cdiv(len_k, block_n), batch * heads)](
            q, k, v, key_mask, grad_out, lse, delta, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dk.stride(), *dv.stride(),
            key_mask.stride(0),
            heads, len_q, len_k, head_dim, sm_scale, qk_scale,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision,
        )  # fmt: skip
        _attention_backward_dq_kernel[(triton.cdiv(len_q, block_m), batch * heads)](
            q, k, v, key_mask, grad_out, lse, delta, dq,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dq.stride(),
            key_mask.stride(0),
            heads, len_q, len_k, head_dim, sm_scale, qk_scale,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision,
        )  # fmt: skip
        return dq, dk, dv, None, None


def _bool_key_mask(key_mask: torch.Tensor) -> torch.Tensor:
    if not isinstance(key_mask, torch.Tensor):
        raise TypeError(f"key_mask must be a torch.Tensor, got {type(key_mask).__name__}")
    if key_mask.dtype == torch.bool:
        return key_mask
    if key_mask.dtype.is_floating_point or key_mask.dtype.is_complex:
        # scaled_dot_product_attention adds a floating attn_mask to the scores, so a
        # float 0/1 mask has two plausible meanings; refuse rather than pick one.
        raise TypeError(
            f"key_mask must be bool (True = attend) or an integer 0/1 tensor, got {key_mask.dtype}; "
            "a floating mask is ambiguous (torch's SDPA adds it to the scores): pass key_mask.bool() "
            "or key_mask != 0"
        )
    # Integer masks (e.g. a tokenizer's 0/1 attention_mask): nonzero = attend.
    return key_mask != 0


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [batch, heads, length, head_dim], got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in _DTYPES:
        raise TypeError(f"fused attention supports {', '.join(map(str, _DTYPES))}; got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    batch, heads, _, head_dim = q.shape
    for name, t in (("k", k), ("v", v)):
        if (t.shape[0], t.shape[1], t.shape[3]) != (batch, heads, head_dim):
            raise ValueError(
                f"{name} must be [batch={batch}, heads={heads}, len_k, head_dim={head_dim}] "
                f"to match q {tuple(q.shape)}, got {tuple(t.shape)}"
            )
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same length, got {k.shape[2]} and {v.shape[2]}")


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * sm_scale, keys where key_mask) v, with the Triton kernels.

    q: [B, H, Lq, D]; k, v: [B, H, Lk, D], one dtype (fp32, fp16, bf16) and device,
    any strides. key_mask: [B, Lk], bool (True = attend) or integer (nonzero =
    attend); floating masks raise TypeError.
    Returns [B, H, Lq, D] (a view whose storage is laid out [B, Lq, H, D]).
    """
    _check_qkv(q, k, v)
    batch, _, _, head_dim = q.shape
    len_k = k.shape[2]
    if key_mask is None:
        key_mask = torch.ones(batch, len_k, dtype=torch.bool, device=q.device)
    if not isinstance(key_mask, torch.Tensor):
        raise TypeError(f"key_mask must be a torch.Tensor, got {type(key_mask).__name__}")
    if key_mask.device != q.device:
        raise ValueError(f"key_mask is on {key_mask.device}, q on {q.device}")
    if tuple(key_mask.shape) != (batch, len_k):
        raise ValueError(f"key_mask must be [batch, len_k] = {(batch, len_k)}, got {tuple(key_mask.shape)}")
    # uint8 shares bool's storage, and Triton loads bytes more portably than i1.
    key_mask = _bool_key_mask(key_mask).contiguous().view(torch.uint8)
    if sm_scale is None:
        sm_scale = head_dim**-0.5
    check_fused_attention_usable(q.device)
    return _FusedAttention.apply(q, k, v, key_mask, float(sm_scale))
