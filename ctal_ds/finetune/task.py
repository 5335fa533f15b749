"""The fine-tuning task object that the engine loop of pre-training drives.

It wraps what differs from pre-training (open_clip's shape: one object with model
and loss, used for training, evaluation only and fine-tuning alike):

- ``model``: CTALForSequenceTask, whose forward returns loss = task loss +
  orthogonal_weight x L_orth; ``loss_parts`` names the three for the health checks
  and the step metrics;
- ``train_stream``: epochs of the training split through ``FinetuneCollator``;
- ``evaluate``: the dev split after each epoch, feeding model selection;
- ``test``: the test split with the selected weights, and the task's test report;
- ``state_dict``: the selection, saved with every checkpoint.

The trainer (``ctal_ds.train.trainer.Trainer``) is the one pre-training uses; so are
its checkpoints, health checks, stop requests and tracking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ctal_ds.data.collate import FinetuneCollator
from ctal_ds.finetune.batches import EpochPlan, EpochStream
from ctal_ds.finetune.data import SplitSamples
from ctal_ds.finetune.predict import Predictions, predict
from ctal_ds.finetune.reports import Report, ReportSettings, write_test_report
from ctal_ds.finetune.selection import ModelSelection
from ctal_ds.model import CTALForSequenceTask
from ctal_ds.model.flops import text_layer_flops, training_flops
from ctal_ds.model.pretrained import WEIGHTS_NAME
from ctal_ds.tasks.base import TaskSpec


def unlabelled(meta: Mapping[str, Any]) -> int:
    """Label of a test utterance whose class the task does not know (an unseen speaker)."""
    return -1


def collator_for(spec: TaskSpec, labelled: bool = True) -> FinetuneCollator:
    dtype = torch.float32 if spec.kind == "regression" else torch.int64
    return FinetuneCollator(label=spec.label_of if labelled else unlabelled, dtype=dtype)


def module_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """The full weights of the engine's module (None on ranks other than 0 under ZeRO-3)."""
    if getattr(engine, "zero_optimization_partition_weights", lambda: False)():
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()


def load_module_weights(engine: Any, directory: Path) -> None:
    """Put a saved model directory's weights into the engine's module, on every rank."""
    state = load_file(str(Path(directory) / WEIGHTS_NAME))
    module = engine.module
    if getattr(engine, "zero_optimization_partition_weights", lambda: False)():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
            if engine.global_rank == 0:
                module.load_state_dict(state)
        return
    module.load_state_dict(state)


class FinetuneTask:
    name = "finetune"
    loss_parts = ("loss", "task_loss", "orth_loss")

    def __init__(
        self,
        spec: TaskSpec,
        split: SplitSamples,
        model: CTALForSequenceTask,
        plan: EpochPlan,
        out: Path,
        rank: int = 0,
        world: int = 1,
        eval_batch_size: int = 16,
        report: ReportSettings | None = None,
        tokenizer: Path | None = None,
        features: dict[str, Any] | None = None,
    ) -> None:
        self.spec, self.split, self.model, self.plan = spec, split, model, plan
        self.out = Path(out)
        self.rank, self.world = rank, world
        self.eval_batch_size = eval_batch_size
        self.report_settings = report or ReportSettings()
        self.tokenizer = tokenizer
        self.features = features  # the shards' FeatureConfig, saved beside each selected model
        self.selection = ModelSelection(spec, self.out / "selection", is_main=rank == 0)
        self.steps_per_epoch = plan.steps_per_epoch(len(split.train))
        # The speaker test split holds unseen speakers: no class to label them with.
        self._test_collate = collator_for(spec, labelled=spec.kind != "speaker")

    # What the trainer asks for ------------------------------------------------------

    def train_stream(self) -> EpochStream:
        return EpochStream(self.split.train, self.plan, collator_for(self.spec), self.rank)

    def flops(self, batch: dict[str, Any]) -> float:
        """Training matmul FLOPs of the backbone (the heads are negligible)."""
        config = self.model.config
        text = batch["text_mask"].sum(1).tolist()
        if self.model.task_config.modality == "text":  # the audio stream is not run
            return 3.0 * sum(config.num_text_layers * text_layer_flops(config, n) for n in text)
        return float(training_flops(config, text, batch["audio_mask"].sum(1).tolist(), 0, 0))

    def evaluate(self, engine: Any, step: int) -> dict[str, float]:
        """Dev metrics after an epoch; the best weights so far are kept for test."""
        preds = self.predict(engine, "dev")
        metrics = self.spec.metrics(preds.scores, preds.labels)
        epoch = step // self.steps_per_epoch
        self.selection.update(step, metrics, lambda target: self._save_weights(engine, target), epoch)
        logged = {f"dev/{k}": float(v) for k, v in metrics.items()}
        logged[f"dev/best_{self.selection.metric}"] = float(self.selection.best_value)
        logged["epoch"] = float(epoch)
        return logged

    def state_dict(self) -> dict[str, Any]:
        return {"selection": self.selection.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selection.load_state_dict(state["selection"])

    def after_save(self, tag_dir: Path) -> None:
        self.selection.prune()

    # Evaluation ---------------------------------------------------------------------

    def predict(self, model: Callable[[dict[str, Any]], dict[str, torch.Tensor]], part: str) -> Predictions:
        collate = self._test_collate if part == "test" else collator_for(self.spec)
        device = getattr(model, "device", None) or next(model.parameters()).device
        return predict(model, self.split.part(part), collate, device, self.eval_batch_size, self.rank, self.world)

    def test(self, engine: Any, title: str = "") -> tuple[Report, Predictions]:
        """The selected weights on the test split, with the task's report (rank 0 writes it)."""
        load_module_weights(engine, self.selection.best_dir())
        preds = self.predict(engine, "test")
        if self.rank != 0:
            return Report({}), preds
        metas = {s.meta["id"]: s.meta for s in self.split.test}
        report = write_test_report(self.spec, preds, metas, self.out, self.report_settings, title)
        return report, preds

    def _save_weights(self, engine: Any, target: Path) -> None:
        state = module_state_dict(engine)
        if self.rank == 0:
            self.model.save_pretrained(
                target, tokenizer_file=self.tokenizer, state_dict=state, feature_config=self.features,
                label_names=self.spec.label_names,
            )
