"""Build (JIT) DeepSpeed's FusedAdam CUDA op and check one step against torch's AdamW.

    python benchmarks/gpu/fused_adam_build.py

DeepSpeed wheels built without ops compile FusedAdam with nvcc and ninja on first use,
into $TORCH_EXTENSIONS_DIR; later processes with the same torch, CUDA and
TORCH_CUDA_ARCH_LIST load it from there. Run before the training probes, this puts
the build's time on its own line instead of inside the first training run's start-up.
Exit status 1 if the op does not build or its step differs from torch.optim.AdamW.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.parse_args(argv)
    if not torch.cuda.is_available():
        print("fused_adam_build: needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"TORCH_EXTENSIONS_DIR={os.environ.get('TORCH_EXTENSIONS_DIR', '(torch default)')} "
          f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(all visible)')}", flush=True)
    started = time.perf_counter()
    from deepspeed.ops.adam import FusedAdam
    from deepspeed.ops.op_builder import FusedAdamBuilder

    FusedAdamBuilder().load(verbose=False)
    print(f"FusedAdam op loaded in {time.perf_counter() - started:.1f} s", flush=True)

    torch.manual_seed(0)
    weights = torch.randn(4096, 256, device="cuda")
    grads = [torch.randn_like(weights) for _ in range(3)]
    a = torch.nn.Parameter(weights.clone())
    b = torch.nn.Parameter(weights.clone())
    ours = FusedAdam([a], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, adam_w_mode=True)
    theirs = torch.optim.AdamW([b], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    diff = (a - b).abs().max().item()
    ok = diff <= 1e-6
    print(f"3 steps vs torch.optim.AdamW: max |difference| {diff:.2e} ({'ok' if ok else 'FAILED'}, limit 1e-6)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
