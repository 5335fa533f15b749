"""Fixtures for tests that submit real jobs to a two-node SLURM cluster on loopback.

Every test in this directory is marked ``slow``. Under ``pytest -n N`` each worker
that runs one of these tests starts its own cluster (own ports, name, state and
munge key, so clusters cannot interfere), and the tests take turns across workers:
their jobs start several processes each and the machines have few cores. Results
that several tests read (demo shards, the reference training runs) are made once per
pytest run and shared by all workers (:func:`made_once`).
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prerequisites import skip_or_fail

from ctal_ds.apt import hold_flock

from .cluster import ClusterUnavailable, LoopbackSlurmCluster

_HERE = Path(__file__).parent
REPO = _HERE.parents[1]

# DeepSpeed JIT-builds its CPU comm op on first use; jobs and tests share one cache.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))


# How long a worker waits for a lock another worker holds: the SLURM turn (held for one
# test, whose function is bounded by its module's timeout mark and whose fixtures by
# their own waits) or a shared result being made. An hour is far past any of them.
LOCK_WAIT_S = 3600


def pytest_collection_modifyitems(items):
    for item in items:
        if _HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


_turn_depth = 0


@contextlib.contextmanager
def slurm_turn(tmp_path_factory):
    """Hold the machine-wide turn for running SLURM jobs (re-entrant within a process).

    The parent of the base temp dir is shared by all xdist workers of one run (and by
    concurrent runs of the same user), so their jobs never compete for the cores.
    """
    global _turn_depth
    if _turn_depth:
        _turn_depth += 1
        try:
            yield
        finally:
            _turn_depth -= 1
        return
    lock = tmp_path_factory.getbasetemp().parent / "ctal-ds-slurm-tests.lock"
    with hold_flock(lock, "the turn to run SLURM jobs", LOCK_WAIT_S):
        _turn_depth = 1
        try:
            yield
        finally:
            _turn_depth = 0


@pytest.fixture(autouse=True)
def _one_slurm_test_at_a_time(tmp_path_factory):
    with slurm_turn(tmp_path_factory):
        yield


def made_once(tmp_path_factory, name: str, make) -> dict:
    """``make(directory) -> dict`` run once per pytest run, whichever worker asks first.

    The result is kept as JSON beside the directory; other workers (and later tests)
    read it back. Without xdist the run's own base temp is used, so nothing is ever
    shared with another pytest run.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    directory, result = shared / name, shared / f"{name}.json"
    with hold_flock(shared / f"{name}.lock", f"another worker making {name}", LOCK_WAIT_S):
        if result.is_file():
            return json.loads(result.read_text())
        # A worker that failed half-way leaves its files; start clean.
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir()
        value = make(directory)
        result.write_text(json.dumps(value))
        return value


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A started :class:`LoopbackSlurmCluster` with nodes n1 and n2, 2 CPUs each."""
    cluster = LoopbackSlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.install_packages()
    except ClusterUnavailable as exc:
        skip_or_fail(f"cannot run a loopback SLURM cluster here: {exc.reason}")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _build_demo_shards(root: Path) -> dict:
    run = dict(check=True, capture_output=True, text=True, cwd=REPO, timeout=300)
    subprocess.run([sys.executable, "launch/make_demo_corpus.py", "--out", str(root / "corpus"), "--small",
                    "--workers", "1", "--quiet"], **run)  # fmt: skip
    subprocess.run([sys.executable, "launch/prepare_data.py", "--corpus", str(root / "corpus" / "librispeech"),
                    "--out", str(root / "shards"), "--holdout-fraction", "0.2", "--samples-per-shard", "3",
                    "--quiet"], **run)  # fmt: skip
    return {"shards": str(root / "shards")}


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """Train and valid shards of the small demo corpus (as tests/train builds them):
    28 + 8 utterances, 3 per shard, so two ranks with one loader worker each have
    shards to spare. Built once per pytest run."""
    return Path(made_once(tmp_path_factory, "demo-shards", _build_demo_shards)["shards"])
