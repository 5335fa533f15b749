"""Correctness of the fused Triton attention against an fp64 reference.

    python benchmarks/gpu/attention_correctness.py                    # on a CUDA GPU
    python benchmarks/gpu/attention_correctness.py --device cpu --impls eager,sdpa
    TRITON_INTERPRET=1 python benchmarks/gpu/attention_correctness.py --device cpu --impls fused --cases tiny

Every case draws q, k, v and grad_out in the tested dtype, and computes the reference
from those same (rounded) values in fp64 on the same device: softmax over the keys the
mask allows, exact zero weight on the others, and out = 0 for a query with no key.
Outputs and the gradients dq, dk, dv are compared by

    error = max |x - ref| / max |ref|     (per tensor, over the whole batch)

against a tolerance per dtype (TOLERANCES below, printed with the results). fp32 runs
with TF32 off. The first dtype of --dtypes (bf16 on CUDA) runs every shape, the
others the four shapes of EVERY_DTYPE (each new shape compiles the kernels anew). With --baseline sdpa, torch's scaled_dot_product_attention in the same
dtype is measured the same way, for scale: it is not checked.

Checks beyond the error (each one a row that passes or fails):

- exact zeros: a batch element with no real key gets out = 0 and dq = 0, and every
  masked key gets dk = dv = 0, bit for bit. Padded keys and values are filled with
  large finite values, so a leak through the mask shows in the error too;
- masks: an int64 0/1 mask gives the same bits as the bool mask; key_lengths= masks
  the keys at and past it whatever the mask says (fused only);
- determinism: three identical runs give bit-identical outputs and gradients (the
  kernels use no atomics), else the largest difference is printed;
- large offset (fused, CUDA): B=1000, T=3000, 12 heads x 64 in bf16, [B, T, H, D]
  layout (the model's), 2.3e9 elements per tensor, so batch offsets pass 2^31; batch
  elements on both sides of the 2^31 boundary are checked against the reference;
- large grid (fused, CUDA): B x H = 67,200 (over CUDA's 65,535 limit of grid axes 1
  and 2), checked whole against the reference.

Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

import torch
from common import print_table, write_json

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Largest accepted error (as defined in the module docstring) for out and for dq/dk/dv.
TOLERANCES = {
    "fp32": {"out": 1e-5, "grad": 1e-4},
    "fp16": {"out": 2e-3, "grad": 5e-3},
    "bf16": {"out": 1.6e-2, "grad": 4e-2},
}
# What padded (masked) keys and values hold: large, finite, so leaks are visible.
PAD_VALUE = 30.0


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    batch: int
    heads: int
    len_q: int
    len_k: int
    head_dim: int
    padding: float  # mean share of keys that are padding
    empty: bool = False  # make the last batch element's keys all padding
    holes: bool = False  # also mask ~10 % of the keys inside each element's length
    every_dtype: bool = True  # False: only in the first dtype of --dtypes


# Shapes run in every dtype; the others only in the first one (bf16 by default). Each
# new shape compiles the kernels again, which is most of this probe's time.
EVERY_DTYPE = {(128, 128, 64, 0.5), (1000, 1000, 64, 0.5), (3000, 512, 64, 0.5), (200, 200, 12, 0.5)}


def standard_cases() -> list[Case]:
    cases = []
    for lq, lk in ((40, 40), (128, 128), (1000, 1000), (3000, 3000), (3000, 512), (512, 3000)):
        for pad in (0.0, 0.5):
            batch, heads = (2, 2) if max(lq, lk) >= 1000 else (3, 4)
            cases.append(Case(f"L{lq}x{lk}_d64_pad{int(pad * 100)}", batch, heads, lq, lk, 64, pad,
                              empty=pad > 0, holes=pad > 0 and lq == 128,
                              every_dtype=(lq, lk, 64, pad) in EVERY_DTYPE))  # fmt: skip
    for d in (12, 16):
        cases.append(Case(f"L200x200_d{d}_pad50", 3, 4, 200, 200, d, 0.5, empty=True, holes=True,
                          every_dtype=(200, 200, d, 0.5) in EVERY_DTYPE))  # fmt: skip
    return cases


def tiny_cases() -> list[Case]:
    return [
        Case("tiny_L40_d16_pad0", 2, 2, 40, 40, 16, 0.0),
        Case("tiny_L40x24_d12_pad50", 3, 2, 40, 24, 12, 0.5, empty=True, holes=True),
    ]


def key_lengths_for(case: Case) -> list[int]:
    """Per batch element; spread evenly around (1 - padding) x len_k."""
    if case.padding == 0:
        lengths = [case.len_k] * case.batch
    else:
        keep = 1.0 - case.padding
        spread = [keep + (0.5 * keep) * (2 * b / max(case.batch - 1, 1) - 1) for b in range(case.batch)]
        lengths = [max(1, min(case.len_k, round(case.len_k * s))) for s in spread]
    if case.empty:
        lengths[-1] = 0
    return lengths


def make_mask(case: Case, lengths: list[int], device, generator) -> torch.Tensor:
    positions = torch.arange(case.len_k, device=device)
    mask = positions[None, :] < torch.tensor(lengths, device=device)[:, None]
    if case.holes:
        holes = torch.rand(case.batch, case.len_k, generator=generator, device=device) < 0.1
        mask &= ~holes
    return mask


def make_inputs(case: Case, dtype, device, seed: int = 0, layout: str = "bhld"):
    g = torch.Generator(device=device).manual_seed(seed)
    lengths = key_lengths_for(case)
    mask = make_mask(case, lengths, device, g)

    def draw(length):
        if layout == "blhd":  # [B, L, H, D] storage seen as [B, H, L, D], as the model's projections
            return torch.randn(case.batch, length, case.heads, case.head_dim, generator=g, device=device,
                               dtype=dtype).transpose(1, 2)  # fmt: skip
        return torch.randn(case.batch, case.heads, length, case.head_dim, generator=g, device=device, dtype=dtype)

    q, k, v, grad_out = draw(case.len_q), draw(case.len_k), draw(case.len_k), draw(case.len_q)
    pad = ~mask[:, None, :, None]
    k = k.masked_fill(pad, PAD_VALUE)
    v = v.masked_fill(pad, -PAD_VALUE)
    return q, k, v, grad_out, mask


def reference(q, k, v, mask, grad_out):
    """fp64 attention with exact zeros for masked keys and key-less queries."""
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    keep = mask[:, None, None, :]
    scores = scores.masked_fill(~keep, float("-inf"))
    row_max = scores.amax(-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)
    total = weights.sum(-1, keepdim=True)
    probs = weights / torch.where(total > 0, total, torch.ones_like(total))
    out = torch.matmul(probs, v)
    out.backward(grad_out.double())
    return out.detach(), q.grad, k.grad, v.grad


def run_impl(impl: str, q, k, v, mask, grad_out, key_lengths=None):
    """Forward + backward of one implementation; returns (out, dq, dk, dv) in its dtype."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    if impl == "fused":
        from ctal_ds.model.triton_attention import fused_attention

        out = fused_attention(q, k, v, mask, key_lengths=key_lengths)
    elif impl == "sdpa":
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    elif impl == "eager":
        from ctal_ds.model.attention import eager_attention

        out = eager_attention(q, k, v, mask)
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().item()
    diff = (x.double() - ref).abs().max().item()
    return diff / scale if scale > 0 else diff


class Report:
    """Checks as they complete: printed, and the JSON file rewritten, after each one
    (a probe cut short by its time limit keeps what it found)."""

    def __init__(self, json_path: str | None = None, header: dict | None = None) -> None:
        self.rows: list[dict] = []
        self.json_path = json_path
        self.header = header or {}

    def add(self, check: str, impl: str, dtype: str, case: str, ok: bool, detail: str, **values) -> None:
        self.rows.append({"check": check, "impl": impl, "dtype": dtype, "case": case, "ok": bool(ok),
                          "detail": detail, **values})  # fmt: skip
        print(f"{'ok    ' if ok else 'FAILED'}  {check:<12} {impl:<6} {dtype:<5} {case:<26} {detail}", flush=True)
        write_json(self.json_path, {**self.header, "checks": self.rows})

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if not r["ok"]]


def zero_checks(outs, mask, lengths) -> list[str]:
    """Names of the exact-zero properties that do not hold."""
    out, dq, dk, dv = outs
    problems = []
    empty = torch.tensor([n == 0 for n in lengths], device=mask.device)
    if empty.any():
        if out[empty].count_nonzero().item():
            problems.append(f"out != 0 for a key-less element (max {out[empty].abs().max().item():.3g})")
        if dq[empty].count_nonzero().item():
            problems.append(f"dq != 0 for a key-less element (max {dq[empty].abs().max().item():.3g})")
    masked = ~mask[:, None, :, None].expand_as(dk)
    for name, grad in (("dk", dk), ("dv", dv)):
        leaked = grad[masked]
        if leaked.numel() and leaked.count_nonzero().item():
            problems.append(f"{name} != 0 at masked keys (max {leaked.abs().max().item():.3g})")
    return problems


def check_case(case: Case, impls, dtypes, baseline, device, report: Report) -> None:
    for dname in dtypes:
        dtype = DTYPES[dname]
        tol = TOLERANCES[dname]
        q, k, v, grad_out, mask = make_inputs(case, dtype, device)
        lengths = key_lengths_for(case)
        ref = reference(q, k, v, mask, grad_out)
        base = None
        if baseline != "none":
            try:
                base = [rel_error(x, r) for x, r in zip(run_impl(baseline, q, k, v, mask, grad_out), ref)]
            except RuntimeError as err:  # e.g. no kernel for this shape
                print(f"        baseline {baseline} failed: {str(err).splitlines()[0][:120]}")
        for impl in impls:
            started = time.perf_counter()
            outs = run_impl(impl, q, k, v, mask, grad_out)
            errors = [rel_error(x, r) for x, r in zip(outs, ref)]
            limits = [tol["out"], tol["grad"], tol["grad"], tol["grad"]]
            ok = all(math.isfinite(e) and e <= lim for e, lim in zip(errors, limits))
            detail = " ".join(f"{n}={e:.2e}" for n, e in zip(("out", "dq", "dk", "dv"), errors))
            detail += f" (tol {tol['out']:.0e}/{tol['grad']:.0e})"
            if base is not None:
                detail += f"; {baseline} " + " ".join(f"{e:.1e}" for e in base)
            detail += f"; {time.perf_counter() - started:.2f} s"
            report.add("accuracy", impl, dname, case.name, ok, detail, errors=errors, baseline=base)
            if not mask.all():
                problems = zero_checks(outs, mask, lengths)
                report.add("exact-zeros", impl, dname, case.name, not problems, "; ".join(problems) or "hold")


def check_masks(case: Case, device, report: Report) -> None:
    """Integer masks and key_lengths (fused only)."""
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    dname = "fp32" if dtype == torch.float32 else "bf16"
    q, k, v, grad_out, mask = make_inputs(case, dtype, device, seed=1)
    as_bool = run_impl("fused", q, k, v, mask, grad_out)
    as_int = run_impl("fused", q, k, v, mask.long(), grad_out)
    same = all(torch.equal(a, b) for a, b in zip(as_bool, as_int))
    report.add("int-mask", "fused", dname, case.name, same, "same bits as the bool mask" if same else "differs")
    # key_lengths below what the mask allows: keys at or past it count as masked.
    cut = torch.tensor([max(0, n // 2) for n in key_lengths_for(case)], device=device, dtype=torch.int32)
    cut_mask = mask & (torch.arange(case.len_k, device=device)[None, :] < cut[:, None])
    outs = run_impl("fused", q, k, v, mask, grad_out, key_lengths=cut)
    ref = reference(q, k, v, cut_mask, grad_out)
    errors = [rel_error(x, r) for x, r in zip(outs, ref)]
    tol = TOLERANCES[dname]
    ok = all(e <= lim for e, lim in zip(errors, [tol["out"]] + [tol["grad"]] * 3))
    problems = zero_checks(outs, cut_mask, cut.tolist())
    report.add("key_lengths", "fused", dname, case.name, ok and not problems,
               " ".join(f"{n}={e:.2e}" for n, e in zip(("out", "dq", "dk", "dv"), errors)) + (
                   "; " + "; ".join(problems) if problems else ""))  # fmt: skip


def check_determinism(case: Case, impls, device, report: Report, runs: int = 3) -> None:
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    dname = "fp32" if dtype == torch.float32 else "bf16"
    q, k, v, grad_out, mask = make_inputs(case, dtype, device, seed=2)
    for impl in impls:
        results = [run_impl(impl, q, k, v, mask, grad_out) for _ in range(runs)]
        diffs = {}
        for name, i in (("out", 0), ("dq", 1), ("dk", 2), ("dv", 3)):
            diffs[name] = max((r[i].double() - results[0][i].double()).abs().max().item() for r in results[1:])
        identical = all(d == 0 for d in diffs.values())
        detail = (f"{runs} runs bit-identical" if identical else
                  "max difference between runs: " + " ".join(f"{n}={d:.3g}" for n, d in diffs.items()))
        report.add("determinism", impl, dname, case.name, identical, detail, diffs=diffs)


def check_large_offset(device, report: Report, batch: int = 1000, length: int = 3000, impl: str = "fused") -> None:
    """Batch offsets past 2^31 elements: check elements on both sides of the boundary."""
    heads, dim = 12, 64
    case = Case(f"B{batch}_T{length}_H{heads}_D{dim}", batch, heads, length, length, dim, 0.3)
    numel = batch * length * heads * dim
    boundary = math.ceil(2**31 / (length * heads * dim))  # first element whose offset is >= 2^31
    started = time.perf_counter()
    q, k, v, grad_out, mask = make_inputs(case, torch.bfloat16, device, seed=3, layout="blhd")
    outs = run_impl(impl, q, k, v, mask, grad_out)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    picks = sorted({0, min(boundary - 1, batch - 1), min(boundary, batch - 1), batch - 1})
    tol = TOLERANCES["bf16"]
    worst = [0.0] * 4
    problems = []
    for b in picks:
        sl = slice(b, b + 1)
        ref = reference(q[sl], k[sl], v[sl], mask[sl], grad_out[sl])
        errs = [rel_error(x[sl], r) for x, r in zip(outs, ref)]
        worst = [max(w, e) for w, e in zip(worst, errs)]
        problems += [f"b={b}: {p}" for p in zero_checks([x[sl] for x in outs], mask[sl], key_lengths_for(case)[sl])]
    ok = all(e <= lim for e, lim in zip(worst, [tol["out"]] + [tol["grad"]] * 3)) and not problems
    detail = (f"{numel / 1e9:.2f}e9 elements per tensor, batch elements {picks} (2^31 boundary at {boundary}): "
              + " ".join(f"{n}={e:.2e}" for n, e in zip(("out", "dq", "dk", "dv"), worst))
              + f"; fwd+bwd incl. compile {elapsed:.1f} s"
              + (f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "")
              + ("; " + "; ".join(problems) if problems else ""))  # fmt: skip
    report.add("large-offset", impl, "bf16", case.name, ok, detail, errors=worst)
    del q, k, v, grad_out, outs
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_large_grid(device, report: Report, batch: int = 5600, heads: int = 12, impl: str = "fused") -> None:
    case = Case(f"B{batch}_H{heads}_L40_d64_pad50", batch, heads, 40, 40, 64, 0.5, empty=True)
    q, k, v, grad_out, mask = make_inputs(case, torch.bfloat16, device, seed=4)
    outs = run_impl(impl, q, k, v, mask, grad_out)
    ref = reference(q, k, v, mask, grad_out)
    errors = [rel_error(x, r) for x, r in zip(outs, ref)]
    tol = TOLERANCES["bf16"]
    problems = zero_checks(outs, mask, key_lengths_for(case))
    ok = all(e <= lim for e, lim in zip(errors, [tol["out"]] + [tol["grad"]] * 3)) and not problems
    detail = (f"B x H = {batch * heads}: " + " ".join(f"{n}={e:.2e}" for n, e in zip(("out", "dq", "dk", "dv"), errors))
              + ("; " + "; ".join(problems) if problems else ""))  # fmt: skip
    report.add("large-grid", impl, "bf16", case.name, ok, detail, errors=errors)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--impls", default="fused", help="comma-separated, checked: fused, sdpa, eager (default fused)")
    p.add_argument("--dtypes", default=None,
                   help="comma-separated; the first gets every shape, the others those of EVERY_DTYPE "
                        "(default: bf16,fp16,fp32 on CUDA, fp32,bf16 on CPU)")
    p.add_argument("--baseline", default=None, choices=["sdpa", "eager", "none"],
                   help="measured for scale, not checked (default: sdpa on CUDA, none on CPU)")
    p.add_argument("--cases", default=None, choices=["standard", "tiny"],
                   help="standard: lengths 40..3000, head dims 64, 12, 16 (default on CUDA); tiny (default on CPU)")
    p.add_argument("--no-large", action="store_true", help="skip the large-offset and large-grid cases")
    p.add_argument("--large-batch", type=int, default=1000, help="batch of the large-offset case (default 1000)")
    p.add_argument("--json", help="write every check's result to this file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("attention_correctness: no CUDA device (use --device cpu)", file=sys.stderr)
        return 2
    impls = [i for i in args.impls.split(",") if i]
    dtypes = (args.dtypes or ("bf16,fp16,fp32" if device.type == "cuda" else "fp32,bf16")).split(",")
    baseline = args.baseline or ("sdpa" if device.type == "cuda" else "none")
    cases = standard_cases() if (args.cases or ("standard" if device.type == "cuda" else "tiny")) == "standard" else tiny_cases()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"impls {impls}, dtypes {dtypes}, baseline {baseline}; TF32 off")
    print("error = max|x - ref| / max|ref| against an fp64 reference; tolerances (out / dq, dk, dv): "
          + ", ".join(f"{d} {t['out']:.0e} / {t['grad']:.0e}" for d, t in TOLERANCES.items()))
    report = Report(args.json, {"device": str(device), "tolerances": TOLERANCES})
    started = time.perf_counter()
    # The first dtype with every shape, then the checks that need no dtype sweep, then
    # the other dtypes with the EVERY_DTYPE shapes.
    for case in cases:
        check_case(case, impls, dtypes[:1], baseline, device, report)
    det_case = next((c for c in cases if c.padding > 0 and c.head_dim == 64 and c.len_q >= 1000), cases[-1])
    check_determinism(det_case, impls, device, report)
    if "fused" in impls:
        check_masks(next(c for c in cases if c.holes), device, report)
        if device.type == "cuda" and not args.no_large:
            check_large_grid(device, report)
            check_large_offset(device, report, batch=args.large_batch)
    for case in cases:
        if case.every_dtype:
            check_case(case, impls, dtypes[1:], baseline, device, report)
    failed = report.failed
    print(f"\n{len(report.rows) - len(failed)} of {len(report.rows)} checks passed "
          f"in {time.perf_counter() - started:.1f} s")
    if failed:
        print_table(["check", "impl", "dtype", "case", "detail"],
                    [[r["check"], r["impl"], r["dtype"], r["case"], r["detail"]] for r in failed])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
