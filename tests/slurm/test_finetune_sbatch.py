"""launch/slurm/finetune.sbatch, unmodified, running launch/finetune.py on two nodes of
the loopback cluster: a scratch tiny model on one fold of the demo corpus's
IEMOCAP-layout utterances."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from . import ctal_jobs as jobs
from .conftest import REPO, made_once

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="session")
def emotion_shards(tmp_path_factory, demo_shards) -> Path:
    """Emotion shards of the demo corpus, with the pre-training shards' tokenizer."""

    def make(directory):
        subprocess.run(
            [sys.executable, "launch/prepare_data.py", "--corpus", str(demo_shards.parent / "corpus" / "iemocap"),
             "--tokenizer", str(demo_shards / "train" / "tokenizer.json"), "--samples-per-shard", "4",
             "--out", str(directory / "emotion"), "--quiet"],
            check=True, capture_output=True, text=True, cwd=REPO, timeout=300,
        )  # fmt: skip
        return {"shards": str(directory / "emotion")}

    return Path(made_once(tmp_path_factory, "emotion-shards", make)["shards"])


def test_unmodified_script_fine_tunes_on_two_nodes(slurm_cluster, emotion_shards, tmp_path):
    out = tmp_path / "run"
    env = jobs.job_env(
        REPO=str(REPO), PYTHON=sys.executable, DS_CONFIG=str(REPO / "ds_configs" / "cpu.json"), TASK="emotion",
        SHARDS=str(emotion_shards), OUT=str(out),
        FINETUNE_ARGS="--scratch --preset tiny --fold 1 --epochs 2 --micro-batch-size 2 --log-every 1 "
                      "--task-setting dev_fraction=0.25",
    )  # fmt: skip
    job = slurm_cluster.sbatch(
        jobs.FINETUNE_SBATCH, options=jobs.CPU_OPTIONS, env=env, cwd=tmp_path
    )
    info = slurm_cluster.wait_job(job, timeout=420)
    log = jobs.read_log(jobs.default_log(tmp_path, "ctal-finetune", job))
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "0"), log[-6000:]
    assert [(rank, node) for rank, _, node, _ in jobs.rank_map(log)] == [(0, 0), (1, 1)]
    assert "world size 2 from SLURM_STEP_NUM_TASKS" in log
    assert "[ctal-ds] emotion (scratch) finished" in log
    result = json.loads((out / "results.json").read_text())
    assert [split["split"] for split in result["splits"]] == ["fold1"]
    assert all(split["finished"] for split in result["splits"])
    assert "requeueing" not in log
