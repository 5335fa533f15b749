"""The training loop around a DeepSpeed engine, for any task (ctal_ds/train/task.py).

One optimizer step = `gradient_accumulation_steps` micro steps. Every micro step calls
`engine.backward(loss)` and `engine.step()`; the engine scales the loss by
1/accumulation itself and only updates weights at the accumulation boundary, so the
loss is never divided here.

At each boundary, before the update, one small all-reduce (max over ranks) carries
which loss parts went non-finite on any rank and whether any rank was asked to stop.
Every rank therefore takes the same decision at the same step: fail before a bad
update, or finish the step, checkpoint together and exit 0 on a stop request.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ctal_ds.train.checkpoint import Checkpointer
from ctal_ds.train.config import WatchdogConfig
from ctal_ds.train.health import HealthMonitor, TrainingDiverged, loss_scale
from ctal_ds.train.metrics import MetricsWindow, batch_counts
from ctal_ds.train.stop import StopRequest
from ctal_ds.train.task import PretrainTask, Task, all_reduce, to_device
from ctal_ds.train.tracking import NullTracker
from ctal_ds.train.watchdog import Watchdog

# Every checkpoint a run saved, one JSON line each, in the checkpoints root (rank 0).
HISTORY = "history.jsonl"


@dataclass
class Outcome:
    step: int
    finished: bool  # reached the configured steps
    reason: str  # why the loop ended


class Trainer:
    """Runs the loop; checkpointed through `state_dict`, the task's and the stream's state.

    `cfg` is a RunConfig or any config with the same `out`, `loop`, `checkpoint` and
    `peak_flops` fields (fine-tuning's FinetuneConfig).
    """

    def __init__(
        self,
        cfg: Any,
        engine: Any,
        train_stream: Iterable[dict[str, Any]],
        checkpointer: Checkpointer,
        tracker: NullTracker,
        monitor: HealthMonitor,
        stop: StopRequest,
        rank: int,
        world_size: int,
        task: Task | None = None,
        client_state: dict[str, Any] | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        # An iterable with state_dict/load_state_dict (the shard loader); iterated lazily
        # so that a resumed state is loaded before its workers start.
        self.train_stream = train_stream
        self._train_iter: Iterator[dict[str, Any]] | None = None
        self.checkpointer = checkpointer
        self.tracker = tracker
        self.monitor = monitor
        self.stop = stop
        self.rank = rank
        self.world_size = world_size
        self.task: Task = task if task is not None else PretrainTask()
        # Saved with every checkpoint beside the trainer state (run id, configs).
        self.client_state = dict(client_state or {})
        self.seen = {"samples": 0.0, "tokens": 0.0, "frames": 0.0}
        self.window = MetricsWindow(engine.device, world_size, all_reduce, cfg.peak_flops, self.task.loss_parts)
        self._lr_used = float(engine.get_lr()[0])
        # Told of every completed step and of each evaluation and checkpoint; None: off.
        self.watchdog = watchdog if watchdog is not None else Watchdog(WatchdogConfig(factor=0), rank)

    @property
    def step(self) -> int:
        return int(self.engine.global_steps)

    # State ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def rank_state_dict(self) -> dict[str, Any]:
        """What differs between ranks: the loader position and the data seen."""
        state = {"seen": dict(self.seen)}
        if hasattr(self.train_stream, "state_dict"):
            state["loader"] = self.train_stream.state_dict()
        return state

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        """`elastic`: the state comes from another world size (a universal checkpoint);
        the loader then starts at its next epoch instead of mid-epoch."""
        self.seen = dict(state.get("seen", self.seen))
        if "loader" in state:
            if state.get("elastic"):
                self.train_stream.load_state_dict(state["loader"], strict=False)
            else:
                self.train_stream.load_state_dict(state["loader"])
            self._train_iter = None

    def resume(self, tag_dir: Path, load_optimizer: bool = True) -> dict[str, Any]:
        client, rank_state = self.checkpointer.load(self.engine, tag_dir, load_optimizer)
        self.load_rank_state_dict(rank_state)
        if "task" in client:
            self.task.load_state_dict(client["task"])
        if client.get("trainer", {}).get("step", self.step) != self.step:
            raise RuntimeError(f"{tag_dir}: trainer step {client['trainer']['step']} != engine step {self.step}")
        return client

    def save(self) -> Path:
        state = {**self.client_state, "trainer": self.state_dict(), "task": self.task.state_dict()}
        tag_dir = self.checkpointer.save(self.engine, self.step, state, self.rank_state_dict())
        self.task.after_save(tag_dir)
        if self.tracker.active:
            # The shards stay out of the tracking store. Two tags name the newest one and
            # the hash of its manifest (which lists every file's sha256); every save is
            # one line of the artifact checkpoints/history.jsonl, so the tag list of a
            # run does not grow with its length.
            digest = hashlib.sha256((tag_dir / "complete.json").read_bytes()).hexdigest()
            self.tracker.set_tags(
                {"checkpoint.latest": str(tag_dir.resolve()), "checkpoint.latest_manifest_sha256": digest}
            )
            history = self.checkpointer.root / HISTORY
            entry = {"tag": tag_dir.name, "step": self.step, "path": str(tag_dir.resolve()),
                     "manifest_sha256": digest, "time": time.time()}  # fmt: skip
            with history.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
            self.tracker.log_artifact(history, "checkpoints")
        return tag_dir

    # One optimizer step ---------------------------------------------------------------

    def train_step(self) -> int:
        """Run the micro steps of one optimizer step; returns the agreed stop code."""
        engine, parts = self.engine, self.task.loss_parts
        bad = torch.zeros(len(parts), device=engine.device)
        while True:
            t0 = time.perf_counter()
            batch = self._next_batch()
            waited = time.perf_counter() - t0
            counts = batch_counts(batch)
            flops = self.task.flops(batch)
            out = engine(to_device(batch, engine.device))
            values = torch.stack([out[p].detach().float() for p in parts])
            bad = torch.maximum(bad, (~torch.isfinite(values)).float())
            engine.backward(out[parts[0]])
            boundary = engine.is_gradient_accumulation_boundary()
            if boundary:
                code = self._agree_before_update(bad)
                skipped_before = engine.skipped_steps
            self._engine_step()
            self.window.add_micro_step(counts, flops, waited, out)
            for key, value in counts.items():
                self.seen[key] += value
            if boundary:
                self.window.add_step()
                skipped = engine.skipped_steps > skipped_before
                self.monitor.after_step(self.step, skipped, loss_scale(engine), self._lr_used)
                return code

    def _agree_before_update(self, bad: torch.Tensor) -> int:
        """The one collective per step: max over ranks of the non-finite flags and the
        stop code. Raises (on every rank alike) before a bad update is applied."""
        code = torch.tensor([float(self.stop.code(self.step + 1))], device=self.engine.device)
        flags = torch.cat([bad, code])
        all_reduce(flags, "max")
        *bad_parts, code_value = flags.tolist()
        self._lr_used = self.engine.get_lr()[0]
        self.monitor.check_finite(
            self.step + 1,
            dict(zip(self.task.loss_parts, (f > 0 for f in bad_parts))),
            self._lr_used,
            loss_scale(self.engine),
        )
        return int(code_value)

    def _next_batch(self) -> dict[str, Any]:
        # A torch DataLoader draws its workers' base seed from the global RNG when its
        # iterator starts. A resumed run starts it at another point of the RNG sequence
        # than an uninterrupted run, which would shift every later dropout mask; forking
        # keeps the training RNG sequence independent of the loader.
        with torch.random.fork_rng(devices=[]):
            if self._train_iter is None:
                self._train_iter = iter(self.train_stream)
            return next(self._train_iter)

    def _engine_step(self) -> None:
        try:
            self.engine.step()
        except Exception as err:
            if HealthMonitor.is_deepspeed_min_scale_error(err):
                raise TrainingDiverged(
                    self.monitor.collapse_message(self.step + 1, loss_scale(self.engine), self._lr_used)
                ) from err
            raise

    # Periodic work --------------------------------------------------------------------

    def log(self) -> dict[str, float]:
        """Step metrics of the window since the last log (a collective)."""
        damage = getattr(self.train_stream, "damage", None)  # the shard loader's DamageLog
        damaged = [len(damage.bad_shards), len(damage.bad_samples)] if damage is not None else [0, 0]
        seen = torch.tensor(
            [*(self.seen[k] for k in ("samples", "tokens", "frames")), *damaged],
            dtype=torch.float64, device=self.engine.device,
        )  # fmt: skip
        all_reduce(seen, "sum")
        metrics = self.window.summarize()
        metrics.update(
            {
                "train/lr": float(self._lr_used),
                "progress/samples_seen": seen[0].item(),
                "progress/tokens_seen": seen[1].item(),
                "progress/frames_seen": seen[2].item(),
                "train/skipped_steps": float(self.engine.skipped_steps),
            }
        )
        if damage is not None:
            # Each rank's distinct shards and samples skipped as damaged so far (each named
            # in a warning when that rank first met it), summed over ranks: shards are dealt
            # afresh every epoch, so one damaged shard met by two ranks counts twice.
            metrics["data/damaged_shards"], metrics["data/damaged_samples"] = seen[3].item(), seen[4].item()
        norm = self.engine.get_global_grad_norm()
        if norm is not None:
            metrics["train/grad_norm"] = float(norm)
        scale = loss_scale(self.engine)
        if scale is not None:
            metrics["train/loss_scale"] = scale
        self.tracker.log_metrics(self.step, metrics)
        return metrics

    def evaluate(self) -> dict[str, float]:
        """The task's evaluation (a collective), logged at the current step."""
        # Evaluation loaders start DataLoader iterators too: keep them off the training RNG.
        with torch.random.fork_rng(devices=[]):
            metrics = self.task.evaluate(self.engine, self.step)
        if metrics:
            self.tracker.log_metrics(self.step, metrics)
        return metrics

    # The loop -------------------------------------------------------------------------

    def train(self) -> Outcome:
        loop, total = self.cfg.loop, self.cfg.loop.steps
        save_every = self.cfg.checkpoint.save_every
        bar = tqdm(total=total, initial=self.step, disable=self.rank != 0, desc=self.task.name,
                   dynamic_ncols=True, mininterval=2)  # fmt: skip
        self.window.reset()
        code = 0
        try:
            while self.step < total:
                code = self.train_step()
                step = self.step
                self.watchdog.step_done(step)
                bar.update(1)
                if step % loop.log_every == 0 or step == total or code:
                    metrics = self.log()
                    bar.set_postfix(loss=f"{metrics['train/' + self.task.loss_parts[0]]:.3f}",
                                    lr=f"{metrics['train/lr']:.2e}")  # fmt: skip
                # Evaluation comes before saving: the RNG state a checkpoint keeps is the
                # one the next step of an uninterrupted run starts from.
                if loop.eval_every and (step % loop.eval_every == 0 or step == total):
                    with self.watchdog.phase("evaluation"):
                        self.evaluate()
                if (save_every and step % save_every == 0) or step == total or code:
                    with self.watchdog.phase("checkpoint"):
                        self.save()
                        self.tracker.flush()
                if code:
                    break
        finally:
            bar.close()
            # Stop the loader's workers now, while the process can still join them.
            if hasattr(self.train_stream, "close"):
                self.train_stream.close()
            self._train_iter = None
        finished = self.step >= total
        reason = "finished" if finished else self.stop.describe(code)
        if self.rank == 0:
            status = {"step": self.step, "finished": finished, "reason": reason}
            (Path(self.cfg.out) / "status.json").write_text(json.dumps(status) + "\n")
        return Outcome(self.step, finished, reason)
