"""Training metrics over a logging window, summed over ranks once per window.

Throughput counts what the batches really held, not the configured batch size:
batches are bucketed by a frame budget, so a "micro batch" of at most M utterances
often holds fewer. samples/s = real utterances of all ranks / wall time of the
window; tokens/s and frames/s count real (unpadded) tokens and frames the same way.

Losses are accumulated on the device and only read at the end of a window, so a
step does not wait for the host.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

_COUNT_KEYS = ("samples", "tokens", "frames", "flops", "data_wait_s", "steps", "micro_steps")


def batch_counts(batch: Mapping[str, Any]) -> dict[str, float]:
    """Real utterances, tokens and frames of a batch, read on the host before transfer."""
    return {
        "samples": float(batch["input_ids"].shape[0]),
        "tokens": float(batch["text_mask"].sum()),
        "frames": float(batch["audio_mask"].sum()),
    }


def memory_bytes() -> float:
    """Peak device memory on GPU; resident set size of the process on CPU."""
    if torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated())
    import psutil

    return float(psutil.Process(os.getpid()).memory_info().rss)


class MetricsWindow:
    def __init__(
        self,
        device: torch.device,
        world_size: int,
        all_reduce: Callable[[torch.Tensor, str], None],
        peak_flops: float | None = None,
        loss_keys: tuple[str, ...] = ("loss", "mlm_loss", "mcam_loss"),
    ) -> None:
        self.loss_keys = loss_keys
        self.device = device
        self.world_size = world_size
        self.all_reduce = all_reduce
        self.peak_flops = peak_flops
        self.reset()

    def reset(self) -> None:
        self.counts = dict.fromkeys(_COUNT_KEYS, 0.0)
        self.losses = torch.zeros(len(self.loss_keys), dtype=torch.float64, device=self.device)
        self.started = time.perf_counter()

    def add_micro_step(self, counts: Mapping[str, float], flops: float, data_wait_s: float, out: Mapping[str, torch.Tensor]) -> None:
        for key, value in counts.items():
            self.counts[key] += value
        self.counts["flops"] += flops
        self.counts["data_wait_s"] += data_wait_s
        self.counts["micro_steps"] += 1
        self.losses += torch.stack([out[k].detach().double() for k in self.loss_keys])

    def add_step(self) -> None:
        self.counts["steps"] += 1

    def summarize(self) -> dict[str, float]:
        """Global metrics of the window (a collective: every rank must call it)."""
        elapsed = time.perf_counter() - self.started
        local = torch.tensor([self.counts[k] for k in _COUNT_KEYS], dtype=torch.float64, device=self.device)
        summed = torch.cat([local, self.losses])
        self.all_reduce(summed, "sum")
        peak_mem = torch.tensor([memory_bytes()], dtype=torch.float64, device=self.device)
        self.all_reduce(peak_mem, "max")
        values = dict(zip(_COUNT_KEYS + self.loss_keys, summed.tolist()))
        micro = max(values["micro_steps"], 1.0)
        out = {f"train/{k}": values[k] / micro for k in self.loss_keys}
        out["perf/samples_per_s"] = values["samples"] / elapsed
        out["perf/tokens_per_s"] = values["tokens"] / elapsed
        out["perf/frames_per_s"] = values["frames"] / elapsed
        out["perf/flops_per_s"] = values["flops"] / elapsed
        # Time spent waiting on the loader, as a share of the window's wall time, averaged
        # over ranks.
        out["perf/data_wait_share"] = values["data_wait_s"] / (elapsed * self.world_size)
        # Every rank takes every step, so the sum over ranks is world x steps.
        out["perf/step_time_s"] = elapsed * self.world_size / max(values["steps"], 1.0)
        if self.peak_flops:
            out["perf/mfu"] = values["flops"] / elapsed / (self.peak_flops * self.world_size)
        out["sys/memory_gb_max_rank"] = peak_mem.item() / 2**30
        self.reset()
        return out
