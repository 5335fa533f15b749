"""Fixtures for tests that submit real jobs to a two-node SLURM cluster on loopback.

Every test in this directory is marked ``slow``. Under ``pytest -n N`` each worker
that runs one of these tests starts its own cluster (own ports, name, state and
munge key, so clusters cannot interfere), and the tests take turns across workers:
their jobs start several processes each and the machines have few cores.
"""

import fcntl
from pathlib import Path

import pytest

from .cluster import ClusterUnavailable, LoopbackSlurmCluster

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if _HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _one_slurm_test_at_a_time(tmp_path_factory):
    # The parent of the base temp dir is shared by all xdist workers of one run.
    lock_path = tmp_path_factory.getbasetemp().parent / "ctal-ds-slurm-tests.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A started :class:`LoopbackSlurmCluster` with nodes n1 and n2, 2 CPUs each."""
    cluster = LoopbackSlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.install_packages()
    except ClusterUnavailable as exc:
        pytest.skip(f"cannot run a loopback SLURM cluster here: {exc.reason}")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
