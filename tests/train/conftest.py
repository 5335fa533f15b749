"""Fixtures of the training tests: demo shards built once per session, and the
environment every DeepSpeed process of these tests shares."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# DeepSpeed JIT-builds its CPU comm op on first use; one cache for every test process.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """Train and valid shards of the small demo corpus: 28 + 8 utterances, 3 per shard,
    so two ranks with one loader worker each have shards to spare."""
    root = tmp_path_factory.mktemp("demo")
    run = dict(check=True, capture_output=True, text=True, cwd=REPO, timeout=300)
    subprocess.run([sys.executable, "launch/make_demo_corpus.py", "--out", str(root / "corpus"), "--small",
                    "--workers", "1", "--quiet"], **run)  # fmt: skip
    subprocess.run([sys.executable, "launch/prepare_data.py", "--corpus", str(root / "corpus" / "librispeech"),
                    "--out", str(root / "shards"), "--holdout-fraction", "0.2", "--samples-per-shard", "3",
                    "--quiet"], **run)  # fmt: skip
    return root / "shards"
