"""What the trainer drives: a task object that knows its losses, FLOPs and evaluation.

The loop, checkpoints, health checks, stopping rules and tracking are the same for
pre-training and fine-tuning (`ctal_ds.finetune.task.FinetuneTask`); a task supplies
what differs:

- `loss_parts`: keys of the model's output checked for non-finite values and averaged
  into the step metrics; the first is the loss that is back-propagated;
- `flops(batch)`: training FLOPs of a batch, for FLOP/s and MFU;
- `evaluate(engine, step)`: metrics on held-out data, run on every rank (collectives);
- `state_dict` / `load_state_dict`: saved with every checkpoint;
- `after_save(tag_dir)`: called on every rank once a checkpoint is complete.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist


class Task(Protocol):
    name: str
    loss_parts: tuple[str, ...]

    def flops(self, batch: dict[str, Any]) -> float: ...
    def evaluate(self, engine: Any, step: int) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def after_save(self, tag_dir: Path) -> None: ...


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def all_reduce(tensor: torch.Tensor, op: str) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])


class PretrainTask:
    """MLM + MCAM pre-training (paper section 3.2) with validation on held-out shards."""

    name = "pretrain"
    loss_parts = ("loss", "mlm_loss", "mcam_loss")

    def __init__(
        self,
        flops_fn: Callable[[dict[str, Any]], float] = lambda batch: 0.0,
        valid_stream: Callable[[], Iterator[dict[str, Any]]] | None = None,
        eval_batches: int = 0,
    ) -> None:
        self.flops_fn = flops_fn
        self.valid_stream = valid_stream
        self.eval_batches = eval_batches

    def flops(self, batch: dict[str, Any]) -> float:
        return self.flops_fn(batch)

    @torch.no_grad()
    def evaluate(self, engine: Any, step: int) -> dict[str, float]:
        """`eval_batches` batches per rank (0: the whole set), the same count on every
        rank so that ZeRO-3's parameter gathers pair up; token- and frame-weighted means
        of the sums over all ranks."""
        if self.valid_stream is None:
            return {}
        engine.eval()
        sums = torch.zeros(5, dtype=torch.float64, device=engine.device)
        stream = self.valid_stream()
        try:
            for batch in itertools.islice(stream, self.eval_batches or None):
                out = engine(to_device(batch, engine.device))
                tokens, frames = out["mlm_tokens"].double(), out["mcam_frames"].double()
                correct = out.get("mlm_correct", torch.zeros((), device=engine.device)).double()
                sums += torch.stack(
                    [out["mlm_loss"].double() * tokens, tokens, out["mcam_loss"].double() * frames, frames, correct]
                )
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        all_reduce(sums, "sum")
        engine.train()
        mlm_sum, tokens, mcam_sum, frames, correct = sums.tolist()
        metrics = {}
        if tokens:
            metrics["valid/mlm_loss"] = mlm_sum / tokens
            metrics["valid/mlm_accuracy"] = correct / tokens
        if frames:
            metrics["valid/mcam_loss"] = mcam_sum / frames
        metrics["valid/loss"] = metrics.get("valid/mlm_loss", 0.0) + metrics.get("valid/mcam_loss", 0.0)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def after_save(self, tag_dir: Path) -> None:
        pass
