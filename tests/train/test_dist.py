"""Rank discovery is a pure function of the environment: every launcher, no cluster."""

from __future__ import annotations

import pytest

from ctal_ds.dist import DIST_VARS, discover, export, parse_nodelist, port_from_job_id


def never_called() -> int:
    raise AssertionError("no free port should be picked when the launcher gave one")


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("n[1-2]", ["n1", "n2"]),
        ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
        ("login1", ["login1"]),
        ("a[9-10],b3", ["a9", "a10", "b3"]),
        ("node[008-010]", ["node008", "node009", "node010"]),
    ],
)
def test_parse_nodelist_expands_ranges_with_padding(nodelist, hosts):
    assert parse_nodelist(nodelist) == hosts


def test_srun_task_maps_slurm_variables_and_takes_first_host_as_master():
    env = {
        "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu[03-06]", "SLURM_JOB_ID": "123456",
    }  # fmt: skip
    info = discover(env, pick_port=never_called)
    assert (info.rank, info.local_rank, info.world_size, info.node_rank) == (5, 1, 8, 2)
    assert info.master_addr == "gpu03"
    assert info.master_port == port_from_job_id("123456")
    assert info.source == "slurm (srun)" and info.world_size_var == "SLURM_STEP_NUM_TASKS"


def test_slurm_master_port_differs_between_jobs_and_avoids_ephemeral_range():
    ports = {port_from_job_id(str(j)) for j in range(1000, 1100)}
    assert len(ports) == 100
    assert all(15000 <= p < 30000 for p in ports)


def test_slurm_uses_the_node_address_resolver_and_explicit_master_wins():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "x[1-2]", "SLURM_JOB_ID": "7"}
    assert discover(env, node_address=lambda nodelist: f"addr-of-{nodelist}").master_addr == "addr-of-x[1-2]"
    env |= {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "4242"}
    info = discover(env, node_address=lambda nodelist: "unused")
    assert (info.master_addr, info.master_port, info.world_size_var) == ("10.0.0.1", 4242, "SLURM_NTASKS")


def test_deepspeed_launcher_and_torchrun_variables_take_precedence_over_slurm():
    base = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "h0", "MASTER_PORT": "29500",
            "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}  # fmt: skip
    ds = discover(base | {"CROSS_RANK": "1", "CROSS_SIZE": "2"}, pick_port=never_called)
    assert (ds.rank, ds.local_rank, ds.world_size, ds.node_rank, ds.source) == (3, 1, 4, 1, "deepspeed launcher")
    tr = discover(base | {"TORCHELASTIC_RUN_ID": "x", "GROUP_RANK": "1"}, pick_port=never_called)
    assert (tr.rank, tr.world_size, tr.node_rank, tr.source) == (3, 4, 1, "torchrun")


def test_single_process_without_launcher_sets_all_five_variables():
    info = discover({}, pick_port=lambda: 34567)
    assert (info.rank, info.local_rank, info.world_size) == (0, 0, 1)
    assert info.source.startswith("single process")
    env: dict[str, str] = {}
    export(info, env)
    # DeepSpeed falls back to MPI discovery if any one of them is missing.
    assert set(env) == set(DIST_VARS)
    assert env == {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": "34567"}  # fmt: skip


def test_slurm_without_task_count_is_an_error():
    with pytest.raises(RuntimeError, match="SLURM_NTASKS"):
        discover({"SLURM_PROCID": "0"})
