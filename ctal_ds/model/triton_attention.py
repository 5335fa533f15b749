"""Fused flash attention with a key-padding mask, written in Triton.

One kernel serves CTAL's three attentions: text self-attention (L x L), audio
self-attention (T x T) and the audio stream's cross-attention to H_w^N (T x L). The
forward pass streams key blocks through an online softmax (FlashAttention-2) and keeps
only the row log-sum-exp for the backward pass, so no [Lq, Lk] matrix is ever stored.

Conventions shared with `torch.nn.functional.scaled_dot_product_attention`:
`key_mask` is True where a key may be attended to, and a query whose keys are all
masked returns zeros (and gets zero gradients) instead of NaN.

Padding is skipped, not just masked: each batch element's key length (its last real
key + 1) bounds the key loops, so a block of keys that is all padding is never read,
and a batch element without a real key writes zeros without touching K or V.

Compiled kernels need a CUDA GPU. With TRITON_INTERPRET=1 in the environment before
Triton is imported, the same kernels run on CPU tensors through Triton's interpreter:
slow, and exact only in fp32 (its bf16 arithmetic is wrong), which is how the tests
check this file on machines without a GPU.
"""

from __future__ import annotations

import contextlib
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
_INT32_MAX = 2**31 - 1


if triton is not None:
    # Tiles are [rows, BLOCK_D] with rows along a sequence. EVEN says the launch has no
    # partial row block (length % block == 0), so rows need no bound check; columns
    # past HEAD_DIM exist only when HEAD_DIM is not a power of two >= 16.

    @triton.jit
    def _load_tile(ptrs, idx, limit, offs_d, EVEN: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_D: tl.constexpr):  # fmt: skip
        if EVEN:
            if HEAD_DIM == BLOCK_D:
                return tl.load(ptrs)
            else:
                return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        else:
            if HEAD_DIM == BLOCK_D:
                return tl.load(ptrs, mask=idx[:, None] < limit, other=0.0)
            else:
                return tl.load(
                    ptrs, mask=(idx[:, None] < limit) & (offs_d[None, :] < HEAD_DIM), other=0.0
                )

    @triton.jit
    def _store_tile(ptrs, value, idx, limit, offs_d, EVEN: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_D: tl.constexpr):  # fmt: skip
        value = value.to(ptrs.dtype.element_ty)
        if EVEN:
            if HEAD_DIM == BLOCK_D:
                tl.store(ptrs, value)
            else:
                tl.store(ptrs, value, mask=offs_d[None, :] < HEAD_DIM)
        else:
            if HEAD_DIM == BLOCK_D:
                tl.store(ptrs, value, mask=idx[:, None] < limit)
            else:
                tl.store(ptrs, value, mask=(idx[:, None] < limit) & (offs_d[None, :] < HEAD_DIM))

    @triton.jit
    def _load_row(ptrs, idx, limit, other, EVEN: tl.constexpr):
        if EVEN:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=idx < limit, other=other)

    @triton.jit
    def _store_row(ptrs, value, idx, limit, EVEN: tl.constexpr):
        if EVEN:
            tl.store(ptrs, value)
        else:
            tl.store(ptrs, value, mask=idx < limit)

    @triton.jit
    def _attention_forward_kernel(
        Q, K, V, KeyMask, KeyEnd, Out, LSE,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_ob, stride_oh, stride_om, stride_od,
        stride_maskb,
        num_heads, len_q, len_k, num_m_blocks, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        # 1-D grid, query blocks of one (batch, head) adjacent so they share K/V in cache.
        pid = tl.program_id(0)
        pid_bh = pid // num_m_blocks
        pid_m = pid % num_m_blocks
        # Base offsets in int64: b * stride_b passes 2^31 on large batches.
        b = (pid_bh // num_heads).to(tl.int64)
        h = (pid_bh % num_heads).to(tl.int64)
        key_end = tl.load(KeyEnd + b)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        out_ptrs = Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_d[None, :] * stride_od
        lse_ptrs = LSE + pid_bh.to(tl.int64) * len_q + rows
        if key_end == 0:
            # No real key: out = 0, and lse = +inf makes every backward probability
            # exp2(s - inf) = 0.
            _store_tile(out_ptrs, tl.zeros([BLOCK_M, BLOCK_D], tl.float32), rows, len_q, offs_d,
                        EVEN_M, HEAD_DIM, BLOCK_D)  # fmt: skip
            _store_row(lse_ptrs, tl.full([BLOCK_M], float("inf"), tl.float32), rows, len_q, EVEN_M)
            return

        q = _load_tile(
            Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
            rows, len_q, offs_d, EVEN_M, HEAD_DIM, BLOCK_D,
        )  # fmt: skip
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh
        mask_base = KeyMask + b * stride_maskb
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

        for start_n in range(0, key_end, BLOCK_N):
            cols = start_n + offs_n
            key_ok = tl.load(mask_base + cols, mask=cols < key_end, other=0) != 0
            k = _load_tile(k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                           cols, len_k, offs_d, EVEN_N, HEAD_DIM, BLOCK_D)  # fmt: skip
            v = _load_tile(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                           cols, len_k, offs_d, EVEN_N, HEAD_DIM, BLOCK_D)  # fmt: skip
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

        # l_i = 0 only if key_lengths was passed and the mask leaves no key below it.
        has_key = l_i > 0
        out = acc / tl.where(has_key, l_i, 1.0)[:, None]
        _store_tile(out_ptrs, out, rows, len_q, offs_d, EVEN_M, HEAD_DIM, BLOCK_D)
        lse = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)), float("inf"))
        _store_row(lse_ptrs, lse, rows, len_q, EVEN_M)

    @triton.jit
    def _attention_backward_preprocess_kernel(
        Out, DO, Delta,
        stride_ob, stride_oh, stride_om, stride_od,
        stride_dob, stride_doh, stride_dom, stride_dod,
        num_heads, len_q, num_m_blocks,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
        EVEN_M: tl.constexpr,
    ):  # fmt: skip
        # delta_i = sum_d dO_id * O_id, the softmax-backward row term of FlashAttention-2.
        pid = tl.program_id(0)
        pid_bh = pid // num_m_blocks
        pid_m = pid % num_m_blocks
        b = (pid_bh // num_heads).to(tl.int64)
        h = (pid_bh % num_heads).to(tl.int64)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        o = _load_tile(
            Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_d[None, :] * stride_od,
            rows, len_q, offs_d, EVEN_M, HEAD_DIM, BLOCK_D,
        )  # fmt: skip
        do = _load_tile(
            DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dom + offs_d[None, :] * stride_dod,
            rows, len_q, offs_d, EVEN_M, HEAD_DIM, BLOCK_D,
        )  # fmt: skip
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        _store_row(Delta + pid_bh.to(tl.int64) * len_q + rows, delta, rows, len_q, EVEN_M)

    @triton.jit
    def _attention_backward_dkdv_kernel(
        Q, K, V, KeyMask, KeyEnd, DO, LSE, Delta, DK, DV,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_dob, stride_doh, stride_dom, stride_dod,
        stride_dkb, stride_dkh, stride_dkn, stride_dkd,
        stride_dvb, stride_dvh, stride_dvn, stride_dvd,
        stride_maskb,
        num_heads, len_q, len_k, num_n_blocks, sm_scale, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        # One program owns a block of keys and walks every query block, so dK and dV
        # are written once, without atomics.
        pid = tl.program_id(0)
        pid_bh = pid // num_n_blocks
        pid_n = pid % num_n_blocks
        b = (pid_bh // num_heads).to(tl.int64)
        h = (pid_bh % num_heads).to(tl.int64)
        key_end = tl.load(KeyEnd + b)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        dk_ptrs = DK + b * stride_dkb + h * stride_dkh + cols[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
        dv_ptrs = DV + b * stride_dvb + h * stride_dvh + cols[:, None] * stride_dvn + offs_d[None, :] * stride_dvd
        if pid_n * BLOCK_N >= key_end:
            # A block of padding keys: no query attends to it.
            zeros = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
            _store_tile(dk_ptrs, zeros, cols, len_k, offs_d, EVEN_N, HEAD_DIM, BLOCK_D)
            _store_tile(dv_ptrs, zeros, cols, len_k, offs_d, EVEN_N, HEAD_DIM, BLOCK_D)
            return

        key_ok = tl.load(KeyMask + b * stride_maskb + cols, mask=cols < key_end, other=0) != 0
        k = _load_tile(
            K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
            cols, len_k, offs_d, EVEN_N, HEAD_DIM, BLOCK_D,
        )  # fmt: skip
        v = _load_tile(
            V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
            cols, len_k, offs_d, EVEN_N, HEAD_DIM, BLOCK_D,
        )  # fmt: skip
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        lse_base = LSE + pid_bh.to(tl.int64) * len_q
        delta_base = Delta + pid_bh.to(tl.int64) * len_q
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

        for start_m in range(0, len_q, BLOCK_M):
            rows = start_m + offs_m
            q = _load_tile(q_base + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                           rows, len_q, offs_d, EVEN_M, HEAD_DIM, BLOCK_D)  # fmt: skip
            do = _load_tile(do_base + rows[:, None] * stride_dom + offs_d[None, :] * stride_dod,
                            rows, len_q, offs_d, EVEN_M, HEAD_DIM, BLOCK_D)  # fmt: skip
            lse = _load_row(lse_base + rows, rows, len_q, float("inf"), EVEN_M)
            delta = _load_row(delta_base + rows, rows, len_q, 0.0, EVEN_M)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.math.exp2(s - lse[:, None])
            p = tl.where(key_ok[None, :], p, 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

        _store_tile(dk_ptrs, dk * sm_scale, cols, len_k, offs_d, EVEN_N, HEAD_DIM, BLOCK_D)
        _store_tile(dv_ptrs, dv, cols, len_k, offs_d, EVEN_N, HEAD_DIM, BLOCK_D)

    @triton.jit
    def _attention_backward_dq_kernel(
        Q, K, V, KeyMask, KeyEnd, DO, LSE, Delta, DQ,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_dob, stride_doh, stride_dom, stride_dod,
        stride_dqb, stride_dqh, stride_dqm, stride_dqd,
        stride_maskb,
        num_heads, len_q, len_k, num_m_blocks, sm_scale, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        pid_bh = pid // num_m_blocks
        pid_m = pid % num_m_blocks
        b = (pid_bh // num_heads).to(tl.int64)
        h = (pid_bh % num_heads).to(tl.int64)
        key_end = tl.load(KeyEnd + b)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqm + offs_d[None, :] * stride_dqd
        if key_end == 0:
            _store_tile(dq_ptrs, tl.zeros([BLOCK_M, BLOCK_D], tl.float32), rows, len_q, offs_d,
                        EVEN_M, HEAD_DIM, BLOCK_D)  # fmt: skip
            return

        q = _load_tile(
            Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
            rows, len_q, offs_d, EVEN_M, HEAD_DIM, BLOCK_D,
        )  # fmt: skip
        do = _load_tile(
            DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dom + offs_d[None, :] * stride_dod,
            rows, len_q, offs_d, EVEN_M, HEAD_DIM, BLOCK_D,
        )  # fmt: skip
        lse = _load_row(LSE + pid_bh.to(tl.int64) * len_q + rows, rows, len_q, float("inf"), EVEN_M)
        delta = _load_row(Delta + pid_bh.to(tl.int64) * len_q + rows, rows, len_q, 0.0, EVEN_M)
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh
        mask_base = KeyMask + b * stride_maskb
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

        for start_n in range(0, key_end, BLOCK_N):
            cols = start_n + offs_n
            key_ok = tl.load(mask_base + cols, mask=cols < key_end, other=0) != 0
            k = _load_tile(k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                           cols, len_k, offs_d, EVEN_N, HEAD_DIM, BLOCK_D)  # fmt: skip
            v = _load_tile(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                           cols, len_k, offs_d, EVEN_N, HEAD_DIM, BLOCK_D)  # fmt: skip
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.math.exp2(s - lse[:, None])
            p = tl.where(key_ok[None, :], p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)

        _store_tile(dq_ptrs, dq * sm_scale, rows, len_q, offs_d, EVEN_M, HEAD_DIM, BLOCK_D)


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


def _on_device(device: torch.device):
    # Triton launches on the current CUDA device and its current stream; make that
    # the tensors' device, whatever device is current in the caller.
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _grid(num_blocks: int, batch_heads: int) -> tuple[int]:
    # One axis: CUDA's grid axes 1 and 2 stop at 65,535, axis 0 at 2^31 - 1.
    size = num_blocks * batch_heads
    if size > _INT32_MAX:
        raise ValueError(f"fused attention needs {size} programs, more than one launch allows")
    return (size,)


def _check_slice_extent(name: str, t: torch.Tensor) -> None:
    # Offsets inside one (batch, head) slice are int32 in the kernels; the slice's
    # span must fit (batch and head offsets are int64).
    span = sum((size - 1) * stride for size, stride in zip(t.shape[2:], t.stride()[2:]))
    if span > _INT32_MAX:
        raise ValueError(
            f"{name}: one (batch, head) slice spans {span} elements, more than the kernels' "
            "int32 offsets within a slice can address"
        )


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_mask, key_end, sm_scale):
        batch, heads, len_q, head_dim = q.shape
        len_k = k.shape[2]
        block_m, block_n, block_d = _block_sizes(head_dim)
        # [B, Lq, H, D] storage viewed as [B, H, Lq, D]: merging heads afterwards is free.
        out = torch.empty(batch, len_q, heads, head_dim, dtype=q.dtype, device=q.device)
        out = out.transpose(1, 2)
        lse = torch.empty(batch * heads, len_q, dtype=torch.float32, device=q.device)
        if out.numel() > 0 and len_k == 0:
            out.zero_()
            lse.fill_(float("inf"))
        elif out.numel() > 0:
            num_m_blocks = triton.cdiv(len_q, block_m)
            with _on_device(q.device):
                _attention_forward_kernel[_grid(num_m_blocks, batch * heads)](
                    q, k, v, key_mask, key_end, out, lse,
                    *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                    key_mask.stride(0),
                    heads, len_q, len_k, num_m_blocks, sm_scale * _LOG2E,
                    HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
                    EVEN_M=len_q % block_m == 0, EVEN_N=len_k % block_n == 0,
                    PRECISION=_dot_precision(q.dtype),
                )  # fmt: skip
        ctx.save_for_backward(q, k, v, key_mask, key_end, out, lse)
        ctx.sm_scale = sm_scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, key_mask, key_end, out, lse = ctx.saved_tensors
        batch, heads, len_q, head_dim = q.shape
        len_k = k.shape[2]
        need_dq, need_dk, need_dv = ctx.needs_input_grad[:3]
        if q.numel() == 0 or k.numel() == 0:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None, None
        _check_slice_extent("grad_out", grad_out)
        block_m, block_n, block_d = _block_sizes(head_dim)
        sm_scale = ctx.sm_scale
        constants = dict(
            HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
            EVEN_M=len_q % block_m == 0, EVEN_N=len_k % block_n == 0,
            PRECISION=_dot_precision(q.dtype),
        )  # fmt: skip
        num_m_blocks = triton.cdiv(len_q, block_m)
        num_n_blocks = triton.cdiv(len_k, block_n)
        dq = dk = dv = None
        with _on_device(q.device):
            delta = torch.empty(batch * heads, len_q, dtype=torch.float32, device=q.device)
            _attention_backward_preprocess_kernel[_grid(num_m_blocks, batch * heads)](
                out, grad_out, delta,
                *out.stride(), *grad_out.stride(),
                heads, len_q, num_m_blocks,
                HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_D=block_d, EVEN_M=constants["EVEN_M"],
            )  # fmt: skip
            if need_dk or need_dv:
                dk = torch.empty_like(k)
                dv = torch.empty_like(v)
                _attention_backward_dkdv_kernel[_grid(num_n_blocks, batch * heads)](
                    q, k, v, key_mask, key_end, grad_out, lse, delta, dk, dv,
                    *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(),
                    *dk.stride(), *dv.stride(),
                    key_mask.stride(0),
                    heads, len_q, len_k, num_n_blocks, sm_scale, sm_scale * _LOG2E,
                    **constants,
                )  # fmt: skip
            if need_dq:
                dq = torch.empty_like(q)
                _attention_backward_dq_kernel[_grid(num_m_blocks, batch * heads)](
                    q, k, v, key_mask, key_end, grad_out, lse, delta, dq,
                    *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dq.stride(),
                    key_mask.stride(0),
                    heads, len_q, len_k, num_m_blocks, sm_scale, sm_scale * _LOG2E,
                    **constants,
                )  # fmt: skip
        return dq, dk, dv, None, None, None


def key_lengths_from_mask(key_mask: torch.Tensor) -> torch.Tensor:
    """int32 [B]: per batch element, the index of its last True key + 1 (0 if none).

    `fused_attention` computes this from `key_mask` on every call; a caller that runs
    several attentions over the same mask can compute it once and pass `key_lengths`.
    """
    mask = _bool_key_mask(key_mask)
    if mask.dim() != 2:
        raise ValueError(f"key_mask must be [batch, len_k], got shape {tuple(mask.shape)}")
    batch, len_k = mask.shape
    if len_k == 0:
        return torch.zeros(batch, dtype=torch.int32, device=mask.device)
    positions = torch.arange(1, len_k + 1, dtype=torch.int32, device=mask.device)
    return torch.where(mask, positions, 0).amax(dim=1).to(torch.int32)


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
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_slice_extent(name, t)


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
    key_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q k^T * sm_scale, keys where key_mask) v, with the Triton kernels.

    q: [B, H, Lq, D]; k, v: [B, H, Lk, D], one dtype (fp32, fp16, bf16) and device,
    any strides. key_mask: [B, Lk], bool (True = attend) or integer (nonzero =
    attend); floating masks raise TypeError. key_lengths: optional integer [B]; key
    j of batch element b is attended only if j < key_lengths[b] (and key_mask allows
    it). Without it, it is `key_lengths_from_mask(key_mask)`; either way keys at or
    past it are never read.
    Returns [B, H, Lq, D] (a view whose storage is laid out [B, Lq, H, D]).
    """
    _check_qkv(q, k, v)
    batch, _, _, head_dim = q.shape
    len_k = k.shape[2]
    if key_mask is not None:
        if not isinstance(key_mask, torch.Tensor):
            raise TypeError(f"key_mask must be a torch.Tensor, got {type(key_mask).__name__}")
        if key_mask.device != q.device:
            raise ValueError(f"key_mask is on {key_mask.device}, q on {q.device}")
        if tuple(key_mask.shape) != (batch, len_k):
            raise ValueError(f"key_mask must be [batch, len_k] = {(batch, len_k)}, got {tuple(key_mask.shape)}")
        key_mask = _bool_key_mask(key_mask)
    if key_lengths is not None:
        if not isinstance(key_lengths, torch.Tensor):
            raise TypeError(f"key_lengths must be a torch.Tensor, got {type(key_lengths).__name__}")
        if key_lengths.dtype == torch.bool or key_lengths.dtype.is_floating_point or key_lengths.dtype.is_complex:
            raise TypeError(f"key_lengths must be an integer tensor, got {key_lengths.dtype}")
        if key_lengths.device != q.device:
            raise ValueError(f"key_lengths is on {key_lengths.device}, q on {q.device}")
        if tuple(key_lengths.shape) != (batch,):
            raise ValueError(f"key_lengths must be [batch] = {(batch,)}, got {tuple(key_lengths.shape)}")
        key_end = key_lengths.clamp(0, len_k).to(torch.int32).contiguous()
    elif key_mask is not None:
        key_end = key_lengths_from_mask(key_mask)
    else:
        key_end = torch.full((batch,), len_k, dtype=torch.int32, device=q.device)
    if key_mask is None:
        key_mask = torch.ones(batch, len_k, dtype=torch.bool, device=q.device)
    # uint8 shares bool's storage, and Triton loads bytes more portably than i1.
    key_mask = key_mask.contiguous().view(torch.uint8)
    if sm_scale is None:
        sm_scale = head_dim**-0.5
    check_fused_attention_usable(q.device)
    return _FusedAttention.apply(q, k, v, key_mask, key_end, float(sm_scale))
