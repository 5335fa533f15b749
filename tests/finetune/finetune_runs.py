"""Tiny fine-tunes in this process, configured through the fine-tune command line."""

from __future__ import annotations

from pathlib import Path

from ctal_ds.finetune.cli import build_parser, config_from_args
from ctal_ds.finetune.config import FinetuneConfig

REPO = Path(__file__).resolve().parents[2]
DS_CONFIG = REPO / "ds_configs" / "finetune.json"


def finetune_config(task: str, shards: Path, out: Path, *extra: str) -> FinetuneConfig:
    """A scratch tiny model, 3 epochs, lr 3e-3, micro batch 4, logging every step; `extra`
    appends or overrides flags of launch/finetune.py."""
    argv = ["--task", task, "--shards", str(shards), "--out", str(out), "--scratch", "--epochs", "3",
            "--lr", "3e-3", "--micro-batch-size", "4", "--log-every", "1", "--flush-every", "1",
            "--deepspeed_config", str(DS_CONFIG), "--centroid-enrol", "3", *extra]  # fmt: skip
    if task == "emotion":
        argv += ["--task-setting", "dev_fraction=0.25"]
    return config_from_args(build_parser().parse_args(argv))


def launch_script(name: str):
    """A launch/<name>.py script as a module, to call its main(argv) in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"launch_{name}", REPO / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
