"""The loopback cluster behaves like the production SLURM features the launcher relies on:
multi-node steps, batch-shell signals, requeue, and environment/working-directory propagation.
"""

import os
import signal
import socket
import sys
import textwrap
import time

import pytest
from prerequisites import skip_or_fail

from . import cluster as cluster_module
from .cluster import (
    ClusterStartError,
    ClusterUnavailable,
    LoopbackSlurmCluster,
    wait_for_text,
)


def _write_script(path, body):
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body).lstrip())
    return path


def _task_records(output):
    """Lines ``key=value key=value ...`` printed by tasks, one dict per task."""
    return [
        dict(field.split("=", 1) for field in line.split())
        for line in output.splitlines()
        if line.startswith("rank=")
    ]


def test_srun_spreads_two_tasks_over_two_nodes(slurm_cluster):
    result = slurm_cluster.run(
        ["srun", "-N2", "-n2", "bash", "-c",
         'echo "rank=$SLURM_PROCID node=$SLURM_NODEID ntasks=$SLURM_NTASKS host=$SLURMD_NODENAME"'],
    )  # fmt: skip
    tasks = _task_records(result.stdout)
    assert sorted((t["rank"], t["node"]) for t in tasks) == [("0", "0"), ("1", "1")]
    assert {t["ntasks"] for t in tasks} == {"2"}
    assert sorted(t["host"] for t in tasks) == ["n1", "n2"]


def test_batch_trap_gets_usr1_and_requeue_restarts_with_restart_count(slurm_cluster, tmp_path):
    # The first run waits for signals; the run after the requeue finishes on its own.
    script = _write_script(
        tmp_path / "requeue.sbatch",
        """
        trap 'echo "got USR1 restart=${SLURM_RESTART_COUNT:-0}"' USR1
        echo "start restart=${SLURM_RESTART_COUNT:-0}"
        if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then exit 0; fi
        # Short sleeps: bash runs a trap only between foreground commands.
        while :; do sleep 0.2; done
        """,
    )
    out = tmp_path / "requeue.out"
    job = slurm_cluster.sbatch(
        script,
        options=["-N1", "-n1", "--requeue", "--signal=B:USR1@60", "--time=5",
                 "--open-mode=append", f"--output={out}"],
    )  # fmt: skip
    slurm_cluster.wait_job(job, states={"RUNNING"}, timeout=120)
    wait_for_text(out, "start restart=0")

    slurm_cluster.signal(job, "USR1", batch=True)
    wait_for_text(out, "got USR1 restart=0", timeout=60)
    assert slurm_cluster.job_state(job) == "RUNNING", "USR1 to a trapping batch shell ended it"

    slurm_cluster.requeue(job)
    info = slurm_cluster.wait_job(job, states={"COMPLETED"}, timeout=120)
    assert info["Restarts"] == "1"
    output = out.read_text()
    assert output.index("got USR1 restart=0") < output.index("start restart=1"), output


def test_two_node_step_sees_ranks_master_addr_venv_and_cwd(slurm_cluster, tmp_path):
    # The rank mapping the launcher does: SLURM_* per task, MASTER_ADDR from the node list.
    task = tmp_path / "task.py"
    task.write_text(
        textwrap.dedent(
            """
            import os, sys
            e = os.environ
            print(f"rank={e['SLURM_PROCID']} local={e['SLURM_LOCALID']} node={e['SLURM_NODEID']}",
                  f"host={e['SLURMD_NODENAME']} master={e['MASTER_ADDR']} world={e['SLURM_NTASKS']}",
                  f"python={sys.executable} cwd={os.getcwd()}")
            """
        )
    )
    script = _write_script(
        tmp_path / "ranks.sbatch",
        f"""
        MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
        export MASTER_ADDR
        echo "batch cwd=$PWD"
        srun python {task}
        """,
    )
    out = tmp_path / "ranks.out"
    job = slurm_cluster.sbatch(
        script, options=["-N2", "--ntasks-per-node=2", f"--output={out}"], cwd=tmp_path
    )
    info = slurm_cluster.wait_job(job, timeout=120)
    output = out.read_text()
    assert info["JobState"] == "COMPLETED", output
    assert f"batch cwd={tmp_path}" in output

    tasks = sorted(_task_records(output), key=lambda t: int(t["rank"]))
    layout = [(t["rank"], t["local"], t["node"], t["host"]) for t in tasks]
    assert layout == [
        ("0", "0", "0", "n1"),
        ("1", "1", "0", "n1"),
        ("2", "0", "1", "n2"),
        ("3", "1", "1", "n2"),
    ]
    assert {t["master"] for t in tasks} == {"n1"}
    assert {t["world"] for t in tasks} == {"4"}
    assert {t["python"] for t in tasks} == {sys.executable}
    assert {t["cwd"] for t in tasks} == {str(tmp_path)}
    # Node names need not resolve; the address SLURM itself uses for the master node does.
    node = slurm_cluster.run(["scontrol", "show", "node", "-o", "n1"]).stdout
    assert "NodeAddr=127.0.0.1" in node


def _listening_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _installed_cluster(workdir, **kwargs):
    cluster = LoopbackSlurmCluster(workdir, **kwargs)
    try:
        cluster.install_packages()
    except ClusterUnavailable as exc:
        skip_or_fail(f"cannot run a loopback SLURM cluster here: {exc.reason}")
    return cluster


def test_start_retries_with_fresh_ports_when_a_port_is_taken(tmp_path, monkeypatch):
    # The race the retry exists for: a port is free when picked, taken before slurmctld binds.
    taken = _listening_socket()
    real_pick = cluster_module.pick_free_ports
    picks = []

    def pick_taken_first(count):
        ports = real_pick(count)
        if not picks:
            ports[0] = taken.getsockname()[1]
        picks.append(ports)
        return ports

    monkeypatch.setattr(cluster_module, "pick_free_ports", pick_taken_first)
    cluster = _installed_cluster(tmp_path / "c")
    with taken, cluster:
        assert cluster.running
        assert cluster.node_states() == {"n1": "idle", "n2": "idle"}
        assert len(picks) == 2
        assert cluster.ports == tuple(picks[1])
    first_attempt_log = tmp_path / "c" / "log-attempt1" / "slurmctld.log"
    assert "Address already in use" in first_attempt_log.read_text()


def test_start_with_a_taken_fixed_port_fails_before_starting_any_daemon(tmp_path):
    with _listening_socket() as taken:
        port = taken.getsockname()[1]
        cluster = _installed_cluster(tmp_path / "c", ports=(port, port + 1, port + 2))
        with pytest.raises(ClusterStartError, match=f"ports .*{port}.* already in use"):
            cluster.start()
    assert cluster.pids == {}


def test_stop_kills_daemons_steps_and_jobs_even_when_the_controller_died(tmp_path):
    cluster = _installed_cluster(tmp_path / "c")
    script = _write_script(
        tmp_path / "long.sbatch",
        """
        srun sleep 600 &
        echo started
        sleep 600
        """,
    )
    out = tmp_path / "long.out"
    with cluster:
        job = cluster.sbatch(script, options=["-N2", "-n2", f"--output={out}"])
        cluster.wait_job(job, states={"RUNNING"}, timeout=120)
        wait_for_text(out, "started")
        deadline = time.monotonic() + 120
        while cluster.run(["squeue", "-h", "-s", "-j", str(job)]).stdout.count("\n") < 2:
            assert time.monotonic() < deadline, "the srun step never started"
            time.sleep(0.2)
        # Job, step, slurmstepds and daemons: more processes than the daemons alone.
        assert len(cluster.leftover_pids()) > len(cluster.pids)
        # Without a controller, scancel cannot reach the job; stop() must still clean up.
        os.kill(cluster.pids["slurmctld"], signal.SIGKILL)
    assert cluster.leftover_pids() == []


def _fake_apt(tmp_path, monkeypatch, works_after_update: bool):
    """An apt-get that records its calls and, on a successful install, puts stub SLURM and
    munge binaries in the only directory searched: a machine without them, as CI starts."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "apt-calls"
    bin_dir.mkdir()
    names = " ".join(cluster_module.DAEMONS + cluster_module.CLIENTS)
    can_install = f"[ -f {tmp_path}/updated ]" if works_after_update else "false"
    _write_script(
        bin_dir / "apt-get",
        f"""
        echo "$*" >> {calls}
        case "$*" in
            *update*) touch {tmp_path}/updated ;;
            *install*)
                {can_install} || {{ echo "E: Unable to locate package slurmctld" >&2; exit 100; }}
                for name in {names}; do
                    printf '#!/bin/sh\\n' > {bin_dir}/$name && chmod +x {bin_dir}/$name
                done ;;
        esac
        """,
    ).chmod(0o755)
    monkeypatch.setattr(cluster_module, "_SEARCH_PATH", str(bin_dir))
    monkeypatch.setattr(cluster_module, "_INSTALL_LOCK", tmp_path / "apt.lock")
    monkeypatch.setattr(cluster_module.os, "geteuid", lambda: 0)
    install = "-o DPkg::Lock::Timeout=300 install -y --no-install-recommends " + " ".join(
        cluster_module.PACKAGES
    )
    return bin_dir, calls, install


def test_missing_packages_are_installed_after_fetching_package_lists(tmp_path, monkeypatch):
    bin_dir, calls, install = _fake_apt(tmp_path, monkeypatch, works_after_update=True)
    cluster = LoopbackSlurmCluster(tmp_path / "c")
    cluster.install_packages()
    # Fresh machines often have no package lists: the first install fails, update, retry.
    assert calls.read_text().splitlines() == [install, "update", install]
    assert {os.path.dirname(path) for path in cluster._bin.values()} == {str(bin_dir)}


def test_packages_that_cannot_be_installed_make_the_cluster_unavailable(tmp_path, monkeypatch):
    _, calls, install = _fake_apt(tmp_path, monkeypatch, works_after_update=False)
    with pytest.raises(ClusterUnavailable, match="Unable to locate package slurmctld"):
        LoopbackSlurmCluster(tmp_path / "c").install_packages()
    assert calls.read_text().splitlines() == [install, "update", install]


def test_missing_packages_without_root_make_the_cluster_unavailable(tmp_path, monkeypatch):
    _fake_apt(tmp_path, monkeypatch, works_after_update=True)
    monkeypatch.setattr(cluster_module.os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterUnavailable, match="not root"):
        LoopbackSlurmCluster(tmp_path / "c").install_packages()
    assert not (tmp_path / "apt-calls").exists()
