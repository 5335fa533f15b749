"""Model selection on dev: remember the best evaluation and keep its weights.

The checkpoint is chosen on the dev split with the task's ``selection_metric``
(emotion UA, sentiment MAE, speaker accuracy); the test split is never looked at
before training ends. The public release selected IEMOCAP models on the test session;
this class cannot: it only ever sees what the dev evaluation hands it.

The best weights are written, at the moment they are evaluated, to
``<out>/selection/step<N>/`` (a ``save_pretrained`` directory). The choice (step,
value, history) is part of the training state saved in every checkpoint, and a
directory is deleted only once a complete checkpoint records a better one, so a run
killed at any point resumes with the best weights its checkpoint refers to.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctal_ds.tasks.base import TaskSpec

_STEP_DIR = re.compile(r"^step(\d+)$")


class ModelSelection:
    def __init__(self, spec: TaskSpec, root: Path, is_main: bool = True) -> None:
        self.spec = spec
        self.metric = spec.selection_metric
        self.root = Path(root)
        self.is_main = is_main
        self.best_step: int | None = None
        self.best_value: float | None = None
        self.history: list[dict[str, Any]] = []  # every dev evaluation: step, epoch, metrics

    def best_dir(self) -> Path:
        if self.best_step is None:
            raise RuntimeError("no dev evaluation has been made yet")
        return self.root / f"step{self.best_step}"

    def update(self, step: int, metrics: dict[str, float], save: Callable[[Path], None], epoch: int | None = None) -> bool:
        """Record a dev evaluation; if it is the best so far, ``save(dir)`` its weights.

        ``save`` is called on every rank (consolidating ZeRO-3 weights is collective);
        it writes only on the main rank.
        """
        value = float(metrics[self.metric])
        self.history.append({"step": step, "epoch": epoch, **{k: float(v) for k, v in metrics.items()}})
        if not self.spec.is_better(value, self.best_value):
            return False
        target = self.root / f"step{step}"
        if self.is_main and target.exists():
            shutil.rmtree(target)  # left by a run killed after this evaluation
        save(target)
        if self.is_main:
            (target / "selection.json").write_text(
                json.dumps({"step": step, "epoch": epoch, "metric": self.metric, "value": value}, indent=2) + "\n"
            )
        self.best_step, self.best_value = step, value
        return True

    def prune(self) -> None:
        """After a complete checkpoint: drop every kept weight directory but the best."""
        if not self.is_main or not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if _STEP_DIR.match(child.name) and child.is_dir() and int(child.name[4:]) != self.best_step:
                shutil.rmtree(child, ignore_errors=True)

    def summary(self) -> dict[str, Any]:
        return {"metric": self.metric, "best_step": self.best_step, "best_value": self.best_value}

    def state_dict(self) -> dict[str, Any]:
        return {"best_step": self.best_step, "best_value": self.best_value, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_step, self.best_value = state["best_step"], state["best_value"]
        self.history = list(state["history"])
        if self.is_main and self.best_step is not None and not self.best_dir().is_dir():
            raise FileNotFoundError(f"the checkpoint selects {self.best_dir()}, which is missing")
