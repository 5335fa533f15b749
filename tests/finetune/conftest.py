"""Fixtures of the fine-tuning tests: task shard sets written on the fly, and one
DeepSpeed process group per test process (fine-tunes run in this process, as
launch/ablate.py runs them)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.setdefault("MPLBACKEND", "Agg")

import task_shards  # noqa: E402


@pytest.fixture(scope="session")
def emotion_shards(tmp_path_factory) -> Path:
    return task_shards.emotion_shards(tmp_path_factory.mktemp("emotion"))


@pytest.fixture(scope="session")
def sentiment_shards(tmp_path_factory) -> Path:
    return task_shards.sentiment_shards(tmp_path_factory.mktemp("sentiment"))


@pytest.fixture(scope="session")
def speaker_shards(tmp_path_factory) -> Path:
    return task_shards.speaker_shards(tmp_path_factory.mktemp("speaker"))


@pytest.fixture(scope="session")
def process_group():
    """World size 1 in this process, started the way the launch scripts start it."""
    import torch.distributed as dist

    from ctal_ds.train.engine import init_process_group

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None) if not dist.is_initialized() else None
    return init_process_group()
