"""Rank discovery and process-group start-up for every way ctal-ds gets launched.

DeepSpeed reads only RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT;
when one of the five is missing it falls back to MPI discovery and fails on machines
without MPI. This module fills all five from whichever launcher started us:

- the deepspeed launcher and torchrun set them already;
- plain `srun` sets only SLURM_* variables (no ssh, one task per GPU): ranks from
  SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS, the rendezvous on the first node of the
  job's node list at a port derived from SLURM_JOB_ID;
- a bare `python launch/pretrain.py` sets nothing: one process, world size 1.

`discover` is a pure function of an environment mapping so it can be tested without
a cluster.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import timedelta

DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

# Rendezvous ports derived from the job id fall in [15000, 30000): below the Linux
# ephemeral range (32768+), so they do not collide with client sockets, and two jobs
# sharing a first node get different ports unless their ids differ by a multiple of
# 15000.
_PORT_BASE, _PORT_SPAN = 15000, 15000

# Default limits of the process group, in seconds: the rendezvous and the rank map (ranks
# of a large job may start minutes apart), then every later collective.
STARTUP_TIMEOUT_S = 600.0
COLLECTIVE_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class RankInfo:
    rank: int
    local_rank: int
    world_size: int
    node_rank: int
    master_addr: str
    master_port: int
    # Which launcher the numbers came from, and the variable that gave the world size:
    # printed at start so a wrong world size can be traced to its source.
    source: str
    world_size_var: str
    # Ranks on this host; counted from the rank map once the process group is up.
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def env(self) -> dict[str, str]:
        return {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def parse_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM node list such as `gpu[01-03,07],login1` into host names.

    Covers one bracket group per host pattern with ranges and zero padding, which is
    what SLURM prints for homogeneous clusters; `scontrol show hostnames` is preferred
    when it is installed.
    """
    hosts: list[str] = []
    for prefix, group, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain.strip())
            continue
        for part in group.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                width = len(lo)
                hosts.extend(f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi) + 1))
            else:
                hosts.append(f"{prefix}{part}")
    return hosts


def _scontrol(*args: str) -> str | None:
    if not shutil.which("scontrol"):
        return None
    try:
        return subprocess.run(
            ["scontrol", *args], check=True, capture_output=True, text=True, timeout=30
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None


def first_node_address(nodelist: str) -> str:
    """Where rank 0 listens: the first node of the list, as SLURM itself reaches it.

    The node's NodeAddr (what slurmctld uses) is preferred to its name, which need not
    resolve on every cluster; without scontrol the list is expanded here.
    """
    listed = _scontrol("show", "hostnames", nodelist)
    host = listed.split()[0] if listed and listed.split() else parse_nodelist(nodelist)[0]
    record = _scontrol("show", "node", "-o", host) or ""
    match = re.search(r"\bNodeAddr=(\S+)", record)
    return match.group(1) if match else host


def port_from_job_id(job_id: str) -> int:
    return _PORT_BASE + int(job_id) % _PORT_SPAN


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def discover(
    env: Mapping[str, str],
    node_address: Callable[[str], str] = lambda nodelist: parse_nodelist(nodelist)[0],
    pick_port: Callable[[], int] = free_port,
) -> RankInfo:
    """Rank, world and rendezvous of this process, from its environment alone."""
    if "RANK" in env and "WORLD_SIZE" in env:
        if "CROSS_RANK" in env:
            source = "deepspeed launcher"
        elif "TORCHELASTIC_RUN_ID" in env:
            source = "torchrun"
        else:
            source = "environment"
        world = int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", "0")))
        node_rank = int(env.get("CROSS_RANK", env.get("GROUP_RANK", env.get("SLURM_NODEID", "0"))))
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else _default_port(env, pick_port)
        return RankInfo(int(env["RANK"]), local_rank, world, node_rank, addr, port, source, "WORLD_SIZE")

    if "SLURM_PROCID" in env:
        # Inside an srun step SLURM_STEP_NUM_TASKS is the step's size; SLURM_NTASKS is
        # the allocation's, which equals it for the one-step jobs our sbatch runs.
        world_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        if world_var not in env:
            raise RuntimeError("SLURM_PROCID is set but neither SLURM_STEP_NUM_TASKS nor SLURM_NTASKS")
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
        if "MASTER_ADDR" in env:
            addr = env["MASTER_ADDR"]
        elif nodelist:
            addr = node_address(nodelist)
        else:
            addr = "127.0.0.1"
        return RankInfo(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            world_size=int(env[world_var]),
            node_rank=int(env.get("SLURM_NODEID", "0")),
            master_addr=addr,
            master_port=int(env["MASTER_PORT"]) if "MASTER_PORT" in env else _default_port(env, pick_port),
            source="slurm (srun)",
            world_size_var=world_var,
        )

    return RankInfo(
        rank=0,
        local_rank=0,
        world_size=1,
        node_rank=0,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(env["MASTER_PORT"]) if "MASTER_PORT" in env else pick_port(),
        source="single process (no launcher)",
        world_size_var="none: no launcher variables set",
    )


def _default_port(env: Mapping[str, str], pick_port: Callable[[], int]) -> int:
    if "SLURM_JOB_ID" in env:
        return port_from_job_id(env["SLURM_JOB_ID"])
    return pick_port()


def export(info: RankInfo, environ: MutableMapping[str, str] = os.environ) -> None:
    """Write all five variables DeepSpeed needs, so it never tries MPI discovery."""
    environ.update(info.env())


def init_distributed(
    env: MutableMapping[str, str] = os.environ,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
    collective_timeout_s: float = COLLECTIVE_TIMEOUT_S,
) -> RankInfo:
    """Discover ranks, export them, start the process group and print the rank map.

    The rendezvous and the rank map's all-gather run under `startup_timeout_s`; then
    every collective runs under `collective_timeout_s`, set on the default group and as
    torch's default for groups created later (DeepSpeed builds its own world and
    data-parallel groups without naming a timeout). A collective past its timeout raises
    on the ranks waiting in it.
    """
    import deepspeed
    import torch.distributed as torch_dist
    from deepspeed.accelerator import get_accelerator

    info = discover(env, node_address=first_node_address)
    export(info, env)
    # Before the first collective: NCCL would otherwise put every rank of a node on GPU 0.
    get_accelerator().set_device(info.local_rank)
    deepspeed.init_distributed(auto_mpi_discovery=False, timeout=timedelta(seconds=startup_timeout_s))
    row = (info.rank, info.local_rank, info.node_rank, socket.gethostname())
    rows: list = [None] * info.world_size
    torch_dist.all_gather_object(rows, row)
    set_collective_timeout(timedelta(seconds=collective_timeout_s))
    info = dataclasses.replace(info, local_world_size=sum(r[3] == row[3] for r in rows))
    if info.is_main:
        print(
            f"[ctal-ds] world size {info.world_size} from {info.world_size_var} "
            f"({info.source}); rendezvous {info.master_addr}:{info.master_port}",
            flush=True,
        )
        print("[ctal-ds] rank map: rank local_rank node host", flush=True)
        for r in rows:
            print(f"[ctal-ds]   {r[0]:>4} {r[1]:>10} {r[2]:>4} {r[3]}", flush=True)
        print(
            f"[ctal-ds] timeouts: process-group start-up {startup_timeout_s:g} s, "
            f"collectives {collective_timeout_s:g} s",
            flush=True,
        )
    return info


def set_collective_timeout(timeout: timedelta) -> None:
    """The timeout of the default group's collectives and of every group created later."""
    import torch.distributed.distributed_c10d as c10d

    c10d._set_pg_timeout(timeout)
    # `new_group(timeout=None)` reads these module defaults when it is called.
    c10d.default_pg_timeout = timeout
    c10d.default_pg_nccl_timeout = timeout
