"""Multi-head attention with one switch over three backends of the same math.

- `sdpa`: torch's scaled_dot_product_attention with a boolean key-padding mask. The
  default: on CPU it dispatches to a fused flash kernel (fp32 and bf16) as long as
  attention dropout is 0.
- `eager`: softmax(Q K^T / sqrt(d)) V written out; the reference the others are
  tested against.
- `fused`: the Triton flash-attention kernels of `triton_attention`, for CUDA.

All three treat `key_mask` (True = real key) the same way and return zeros for a
query that has no real key, as SDPA does.

`MultiHeadAttention` keeps separate `query`, `key` and `value` Linear modules (the
state_dict keys of checkpoints and exports); with `fuse_projections` it runs them as
one matmul: self-attention concatenates the three weights into a [3H, H] projection, cross-attention
the key and value weights into a [2H, H] projection of the context. The concatenation
copies 3 H^2 weights per call, against one larger matmul instead of three and one
gradient matmul for the input instead of three plus their sum. It is off by default:
on a CPU with AMX the bf16 training step measured 3-15 % slower fused (the strided
Q/K/V views of the fused output and the gradient assembled back into one [B, L, 3H]
tensor cost more than the two matmuls saved). Under DeepSpeed ZeRO-3
each Linear's weights are gathered only inside that Linear's own forward, so there
(parameters carrying `ds_id`) the three projections run separately.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctal_ds.model.triton_attention import check_fused_attention_usable, fused_attention


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Reference attention; q [B, H, Lq, D], k/v [B, H, Lk, D], key_mask bool [B, Lk]."""
    keep = key_mask[:, None, None, :]
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    # Masked keys get exactly zero weight (exp underflows); multiplying by the mask
    # also zeroes rows that have no real key at all, which softmax alone would spread
    # uniformly over padding.
    probs = torch.softmax(scores, dim=-1) * keep
    probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs.to(v.dtype), v)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=dropout_p
    )


def triton_fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    if dropout_p > 0:
        raise ValueError("the fused Triton attention kernel has no attention dropout")
    return fused_attention(q, k, v, key_mask)


ATTENTION_FUNCTIONS = {
    "sdpa": sdpa_attention,
    "eager": eager_attention,
    "fused": triton_fused_attention,
}


def set_fused_projections(model: nn.Module, enabled: bool) -> int:
    """Switch the fused Q/K/V projection of every MultiHeadAttention in `model`; returns
    how many modules were switched."""
    modules = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    for module in modules:
        module.fuse_projections = enabled
    return len(modules)


class MultiHeadAttention(nn.Module):
    """Multi-head attention of queries from `x` over keys/values from `context`.

    Self-attention passes no context; the audio stream's cross-attention passes the
    final text states H_w^N and the text mask (section 3.1.3).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout: float,
        attn_impl: str,
        fuse_projections: bool = False,
    ):
        super().__init__()
        if attn_impl not in ATTENTION_FUNCTIONS:
            raise ValueError(f"unknown attn_impl {attn_impl!r}; choose from {list(ATTENTION_FUNCTIONS)}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = dropout
        self.attn_impl = attn_impl
        # One matmul for Q, K, V (self-attention) or K, V (cross-attention); the same
        # parameters either way, so it may be switched on a built or loaded model.
        self.fuse_projections = fuse_projections
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _fused_projection(self, x: torch.Tensor, *linears: nn.Linear) -> tuple[torch.Tensor, ...]:
        """`linears` applied to x as one matmul, each output split into heads [B, heads, L, D]."""
        weight = torch.cat([linear.weight for linear in linears])
        bias = torch.cat([linear.bias for linear in linears])
        batch, length, _ = x.shape
        projected = F.linear(x, weight, bias)
        heads = projected.view(batch, length, len(linears), self.num_heads, self.head_dim)
        return heads.permute(2, 0, 3, 1, 4).unbind(0)

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, Lq, H]; context [B, Lk, H] (defaults to x); key_mask bool [B, Lk]."""
        if self.attn_impl == "fused":
            check_fused_attention_usable(x.device)
        fuse = self.fuse_projections and not hasattr(self.query.weight, "ds_id")
        if fuse and context is None:
            q, k, v = self._fused_projection(x, self.query, self.key, self.value)
        elif fuse:
            q = self._split_heads(self.query(x))
            k, v = self._fused_projection(context, self.key, self.value)
        else:
            context = x if context is None else context
            q = self._split_heads(self.query(x))
            k = self._split_heads(self.key(context))
            v = self._split_heads(self.value(context))
        dropout_p = self.dropout if self.training else 0.0
        attended = ATTENTION_FUNCTIONS[self.attn_impl](q, k, v, key_mask, dropout_p)
        batch, length, hidden = x.shape
        return self.output(attended.transpose(1, 2).reshape(batch, length, hidden))
