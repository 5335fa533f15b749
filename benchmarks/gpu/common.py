"""Helpers shared by the probes of benchmarks/gpu_check.sh."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Dense (no sparsity) tensor-core peaks in FLOP/s from NVIDIA's data sheets, by a
# substring of torch.cuda.get_device_name(). bf16 and fp16 peaks are equal on these
# parts. More specific names come first.
PEAK_FLOPS = (
    ("H200", {"bf16": 989e12, "fp16": 989e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12}),  # SXM5 (the name reads "H100 80GB HBM3")
    ("A100", {"bf16": 312e12, "fp16": 312e12}),
)


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of the named device in `precision`, or None if it is not in the table."""
    for key, peaks in PEAK_FLOPS:
        if key.lower() in device_name.lower():
            return peaks.get(precision)
    return None


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=1, default=str) + "\n")


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()
