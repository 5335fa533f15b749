"""Speed of CTAL's attentions: the fused Triton kernel against torch's kernels, in bf16.

    python benchmarks/gpu/attention_speed.py [--shapes text,audio,cross] [--pads 0,0.5] [--json PATH]

Shapes (batch x heads x query length x key length x head dim):

    text   64 x 12 x  512 x  512 x 64   text self-attention
    audio   8 x 12 x 3000 x 3000 x 64   audio self-attention (37.5 s at 80 frames/s)
    cross   8 x 12 x 3000 x  512 x 64   audio queries over text keys
    tiny    2 x  2 x   64 x   48 x 16   for checking this script on CPU (--device cpu,
                                        the fused kernel under TRITON_INTERPRET=1)

Padding is tail padding of the keys (each batch element's real keys first), spread
around the given mean share; every implementation gets the same mask:

    fused        ctal_ds.model.triton_attention.fused_attention (skips padded key blocks)
    sdpa         F.scaled_dot_product_attention with a bool mask, torch's own dispatch
    sdpa-effic   the same, pinned to the memory-efficient backend
    sdpa-cudnn   the same, pinned to the cuDNN backend
    flex         torch.nn.attention.flex_attention, compiled, key-padding BlockMask
    flash-nomask SDPA's flash backend without any mask: a ceiling, not the same result

Each is timed forward only and forward + backward (triton.testing.do_bench, median),
both with autograd on, as in training (so a forward saves what its backward needs;
FlexAttention compiles once per shape).
TFLOP/s count the full unpadded matrices whatever the padding: 4 B H Lq Lk D for the
forward, 2.5 times that more for the backward (3.5 x in all). With padding this is an
effective rate: an implementation that skips padding does less work for the same count.
Each masked implementation's output is compared with the fused one's (max abs
difference over the whole output), so that a wrong mask does not pass as a fast one.

It also runs SDPA with a bool mask on a batch element whose keys are all masked, per
backend, and prints whether that row comes back as 0, NaN or something else.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from common import print_table, write_json

SHAPES = {
    "text": (64, 12, 512, 512, 64),
    "audio": (8, 12, 3000, 3000, 64),
    "cross": (8, 12, 3000, 512, 64),
    "tiny": (2, 2, 64, 48, 16),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Largest max |out - fused out| that counts as the same result (else flagged MISMATCH).
SAME_RESULT = {"bf16": 3e-2, "fp16": 5e-3, "fp32": 1e-4}
IMPLS = ("fused", "sdpa", "sdpa-effic", "sdpa-cudnn", "flex", "flash-nomask")


def key_lengths(batch: int, len_k: int, padding: float) -> torch.Tensor:
    if padding == 0:
        return torch.full((batch,), len_k, dtype=torch.int32)
    keep = 1.0 - padding
    spread = [keep + 0.5 * keep * (2 * b / max(batch - 1, 1) - 1) for b in range(batch)]
    return torch.tensor([max(1, min(len_k, round(len_k * s))) for s in spread], dtype=torch.int32)


def sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([{"effic": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                         "flash": SDPBackend.FLASH_ATTENTION}[name]])  # fmt: skip


class Flex:
    """flex_attention compiled once per process; a BlockMask per (lengths, shape)."""

    def __init__(self) -> None:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self.create_block_mask = create_block_mask
        # One compilation per shape (and per new mask function); allow more than the default.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        self.fn = torch.compile(flex_attention, dynamic=False)

    def block_mask(self, lengths: torch.Tensor, batch: int, len_q: int, len_k: int):
        def key_padding(b, h, q_idx, kv_idx):
            return kv_idx < lengths[b]

        return self.create_block_mask(key_padding, batch, None, len_q, len_k, device=lengths.device)


def make_call(impl: str, q, k, v, mask, lengths, flex: Flex | None):
    """A function running the forward pass of `impl` on these inputs."""
    if impl == "fused":
        from ctal_ds.model.triton_attention import fused_attention

        key_end = lengths.to(torch.int32)
        return lambda: fused_attention(q, k, v, mask, key_lengths=key_end)
    if impl == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    if impl in ("sdpa-effic", "sdpa-cudnn"):
        backend = impl.split("-")[1]

        def call():
            with sdpa_backend(backend):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])

        return call
    if impl == "flash-nomask":

        def call():
            with sdpa_backend("flash"):
                return F.scaled_dot_product_attention(q, k, v)

        return call
    if impl == "flex":
        block_mask = flex.block_mask(lengths, q.shape[0], q.shape[2], k.shape[2])
        return lambda: flex.fn(q, k, v, block_mask=block_mask)
    raise ValueError(impl)


def wall_clock_bench(fn, warmup_ms: int, rep_ms: int, params) -> float:
    """Median ms of fn() by the host clock (CPU runs only: no device queue to drain)."""
    times = []
    deadline = time.perf_counter() + (warmup_ms + rep_ms) / 1000
    while len(times) < 3 or time.perf_counter() < deadline:
        for t in params:
            t.grad = None
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)[len(times) // 2]


def bench(fn, backward: bool, grad_out, params, warmup_ms: int, rep_ms: int) -> float:
    """Median milliseconds of fn() (and its backward), with autograd on either way."""
    step = (lambda: fn().backward(grad_out)) if backward else fn
    if grad_out.device.type != "cuda":
        return wall_clock_bench(step, warmup_ms, rep_ms, params)
    from triton.testing import do_bench

    return do_bench(step, warmup=warmup_ms, rep=rep_ms, grad_to_none=params, return_mode="median")


def fully_masked_row_check(device) -> list[list[str]]:
    """SDPA with a bool mask on a batch element with no real key: what comes back, per backend."""
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(2, 2, 64, 64, device=device, dtype=torch.bfloat16, generator=g) for _ in range(3))
    mask = torch.ones(2, 64, dtype=torch.bool, device=device)
    mask[1] = False
    rows = []
    for name, ctx in (("default dispatch", None), ("efficient", "effic"), ("cudnn", "cudnn")):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        try:
            if ctx is None:
                out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask[:, None, None, :])
            else:
                with sdpa_backend(ctx):
                    out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask[:, None, None, :])
            out.backward(torch.ones_like(out))
        except RuntimeError as err:
            rows.append([name, "not run: " + str(err).splitlines()[0][:80], ""])
            continue

        def describe(t):
            t = t.float()
            if torch.isnan(t).any():
                return "NaN"
            return "0 (exact)" if t.count_nonzero().item() == 0 else f"nonzero (max {t.abs().max().item():.3g})"

        rows.append([name, describe(out[1]), describe(qq.grad[1])])
    return rows


def tflops(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def describe(row: dict) -> str:
    if "error" in row:
        return row["error"]
    text = (f"fwd {row['fwd_ms']:.3f} ms ({tflops(row['fwd_tflops'])} TFLOP/s), fwd+bwd "
            f"{row['fwd_bwd_ms']:.3f} ms ({tflops(row['fwd_bwd_tflops'])} TFLOP/s), first call {row['first_call_s']:.1f} s")
    if "max_diff_vs_fused" in row:
        text += f", max |diff| vs fused {row['max_diff_vs_fused']:.2e}" + ("" if row["same_result"] else " MISMATCH")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="audio,cross,text", help=f"comma-separated from {list(SHAPES)}")
    p.add_argument("--pads", default="0,0.5", help="mean padded share of the keys, comma-separated")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated from {list(IMPLS)}")
    p.add_argument("--warmup-ms", type=int, default=25)
    p.add_argument("--rep-ms", type=int, default=100)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES),
                   help="bf16 (default); fp32 for the CPU check (the interpreter's bf16 is wrong)")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only to check the script itself")
    p.add_argument("--json", help="write the timings to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("attention_speed: no CUDA device (--device cpu checks the script, not the speed)", file=sys.stderr)
        return 2
    on_gpu = device.type == "cuda"
    dtype = DTYPES[args.dtype]
    impls = args.impls.split(",")
    flex = None
    if "flex" in impls:
        try:
            flex = Flex()
        except ImportError as err:
            print(f"flex_attention unavailable: {err}")
            impls.remove("flex")
    device_name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"{device_name}, torch {torch.__version__}, {args.dtype}; TFLOP/s count the full "
          "unpadded matrices: 4*B*H*Lq*Lk*D forward, 3.5x that forward+backward")
    results, problems = [], []
    for shape_name in args.shapes.split(","):
        batch, heads, len_q, len_k, dim = SHAPES[shape_name]
        for pad in (float(x) for x in args.pads.split(",")):
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v, grad_out = (torch.randn(batch, heads, n, dim, device=device, dtype=dtype, generator=g)
                                 for n in (len_q, len_k, len_k, len_q))  # fmt: skip
            lengths = key_lengths(batch, len_k, pad).to(device)
            mask = torch.arange(len_k, device=device)[None, :] < lengths[:, None]
            flops_fwd = 4 * batch * heads * len_q * len_k * dim
            reference = None
            for impl in impls:
                params = [t.requires_grad_() for t in (q, k, v)]
                row = {"shape": shape_name, "pad": pad, "impl": impl}
                try:
                    started = time.perf_counter()
                    fn = make_call(impl, q, k, v, mask, lengths, flex)
                    out = fn().detach()
                    if on_gpu:
                        torch.cuda.synchronize()
                    row["first_call_s"] = time.perf_counter() - started
                    if impl == "fused":
                        reference = out.float()
                    elif reference is not None and impl != "flash-nomask":
                        row["max_diff_vs_fused"] = (out.float() - reference).abs().max().item()
                        row["same_result"] = row["max_diff_vs_fused"] <= SAME_RESULT[args.dtype]
                    row["fwd_ms"] = bench(fn, False, grad_out, params, args.warmup_ms, args.rep_ms)
                    row["fwd_bwd_ms"] = bench(fn, True, grad_out, params, args.warmup_ms, args.rep_ms)
                    row["fwd_tflops"] = flops_fwd / row["fwd_ms"] / 1e9
                    row["fwd_bwd_tflops"] = 3.5 * flops_fwd / row["fwd_bwd_ms"] / 1e9
                except Exception as err:  # a backend without a kernel for this case, a compile failure
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''}"
                    if impl == "fused":
                        problems.append(f"{shape_name} pad {pad}: fused failed: {row['error']}")
                results.append(row)
                q.grad = k.grad = v.grad = None
                print(f"  {shape_name:<5} pad {pad:.1f} {impl:<12} {describe(row)}", flush=True)
            del q, k, v, grad_out
            if on_gpu:
                torch.cuda.empty_cache()

    print(f"\n{args.dtype}, median ms (TFLOP/s of the unpadded count); fastest masked: among the "
          "implementations with a key mask whose output matches the fused one's")
    table = []
    for shape_name in args.shapes.split(","):
        for pad in (float(x) for x in args.pads.split(",")):
            rows = [r for r in results if r["shape"] == shape_name and r["pad"] == pad]
            for mode in ("fwd", "fwd_bwd"):
                timed = [r for r in rows if f"{mode}_ms" in r]
                cells = {r["impl"]: f"{r[f'{mode}_ms']:.3f} ({tflops(r[f'{mode}_tflops'])})" for r in timed}
                masked = [r for r in timed if r["impl"] != "flash-nomask" and r.get("same_result", True)]
                winner = min(masked, key=lambda r: r[f"{mode}_ms"])["impl"] if masked else "-"
                table.append([shape_name, f"{pad:.1f}", mode.replace("_", "+"),
                              *[cells.get(i, "n/a") for i in impls], winner])  # fmt: skip
    print_table(["shape", "pad", "pass", *impls, "fastest masked"], table)
    print("\nSDPA, bool mask, a batch element whose keys are all masked (bf16):")
    masked_rows = fully_masked_row_check(device)
    print_table(["backend", "out of that row", "dq of that row"], masked_rows)
    write_json(args.json, {"device": device_name, "torch": torch.__version__,
                           "results": results, "sdpa_fully_masked": masked_rows})  # fmt: skip
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
