"""A real two-node SLURM 22.05 cluster on loopback, for end-to-end launch tests.

Every daemon (munged, slurmctld, one slurmd per node) runs as root in its own
session with all of its state, sockets and logs under one work directory, so
several clusters can live on one machine and nothing under /etc is touched.
Clients find the cluster through ``SLURM_CONF`` (see :meth:`env`); the munge
socket is named in slurm.conf's ``AuthInfo``, so clients need nothing else.
"""

from __future__ import annotations

import atexit
import os
import random
import re
import shlex
import shutil
import signal as signal_module
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ctal_ds.apt import INSTALL_LOCK, SEARCH_PATH, PackagesUnavailable, apt_install

PACKAGES = ("slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
# Daemons live in sbin, which is not on every user's PATH (e.g. under sudo -E or CI shells).
_SEARCH_PATH = SEARCH_PATH

# Job states after which a job never runs again on its own (REQUEUED and PENDING are not).
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)

# Unix socket paths (munge socket, slurmstepd sockets "<spool>/<node>_<job>.<step>")
# are limited to 107 bytes; a work directory longer than this leaves too little room.
_MAX_RUNDIR_LEN = 60
# Ports are drawn below Linux's default ephemeral range (32768-60999), so outgoing
# connections cannot take them between the check and the daemon's bind().
_PORT_RANGE = (20000, 32000)
_PORT_ATTEMPTS = 3
_INSTALL_LOCK = INSTALL_LOCK


class ClusterUnavailable(RuntimeError):
    """This machine cannot host the cluster (not root, no apt, packages not installable)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ClusterStartError(RuntimeError):
    """The daemons were installed but the cluster did not come up; carries their logs."""


class _PortInUse(ClusterStartError):
    pass


class JobStateError(AssertionError):
    """A job ended in a state the caller was not waiting for."""


def _find(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# What a launcher sets for torch.distributed; never inherited by a job.
DISTRIBUTED_VARS = frozenset(
    {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE"}
)


def pick_free_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` distinct loopback ports that nothing listens on right now."""
    rng = rng or random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(*_PORT_RANGE)
        if port not in ports and _port_is_free(port):
            ports.append(port)
    return ports


def parse_scontrol_record(line: str) -> dict[str, str]:
    """Parse one ``scontrol show ... -o`` line into ``{key: value}``.

    Values may contain spaces (``Reason=...``, ``Command=script arg``) and '='
    (``TRES=cpu=2,node=2``), so a field ends only where the next ``Key=`` starts.
    """
    fields: dict[str, str] = {}
    for token in re.split(r"\s+(?=[A-Za-z][\w/:]*=)", line.strip()):
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


class LoopbackSlurmCluster:
    """Controller plus ``len(nodes)`` compute nodes, all on 127.0.0.1.

    ``ports`` is ``(slurmctld, node1, node2, ...)``; by default free ports are picked
    and, if another process takes one before a daemon binds it, the start is retried
    with fresh ports.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        nodes: Sequence[str] = ("n1", "n2"),
        cpus_per_node: int = 2,
        ports: Sequence[int] | None = None,
        partition: str = "debug",
        kill_wait: int = 30,
        start_timeout: float = 120.0,
    ):
        if ports is not None and len(ports) != len(nodes) + 1:
            raise ValueError(f"ports needs {len(nodes) + 1} entries (slurmctld + one per node)")
        self.workdir = Path(workdir).resolve()
        self.nodes = tuple(nodes)
        self.cpus_per_node = cpus_per_node
        self.partition = partition
        self.kill_wait = kill_wait
        self.start_timeout = start_timeout
        self._fixed_ports = tuple(ports) if ports is not None else None
        self.ports: tuple[int, ...] = ()
        # Unique per instance, so the logs and job records of clusters running side by
        # side (one per xdist worker) can be told apart.
        self.cluster_name = f"ctal{uuid.uuid4().hex[:8]}"
        self.conf_path = self.workdir / "slurm.conf"
        self.log_dir = self.workdir / "log"
        self._rundir: Path | None = None
        self._own_rundir = False
        self._procs: dict[str, subprocess.Popen] = {}
        self._bin: dict[str, str] = {}

    # ------------------------------------------------------------------ set-up

    def install_packages(self) -> None:
        """Make sure the SLURM and munge binaries exist, installing them with apt if needed."""
        missing = [name for name in DAEMONS + CLIENTS if _find(name) is None]
        if missing:
            self._apt_install(missing)
        self._bin = {name: _find(name) for name in DAEMONS + CLIENTS}
        still_missing = sorted(name for name, path in self._bin.items() if path is None)
        if still_missing:
            raise ClusterUnavailable(
                f"{', '.join(still_missing)} missing after installing {' '.join(PACKAGES)}"
            )

    def _apt_install(self, missing: list[str]) -> None:
        try:
            apt_install(PACKAGES, missing, lambda: all(_find(name) for name in missing),
                        lock=_INSTALL_LOCK, search_path=_SEARCH_PATH)  # fmt: skip
        except PackagesUnavailable as err:
            raise ClusterUnavailable(err.reason) from err

    def start(self) -> None:
        """Start munged, slurmctld and the slurmds; return once every node is idle."""
        if self._procs:
            raise RuntimeError("cluster already started")
        if not self._bin:
            self.install_packages()
        if self._fixed_ports:
            busy = [p for p in self._fixed_ports if not _port_is_free(p)]
            if busy:
                raise ClusterStartError(f"ports {busy} are already in use")
        attempts = 1 if self._fixed_ports else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self.ports = self._fixed_ports or tuple(pick_free_ports(len(self.nodes) + 1))
            try:
                self._prepare_dirs(attempt)
                self._start_daemons()
                # Daemons must not outlive an interpreter that exits without teardown.
                atexit.register(self.stop)
                return
            except _PortInUse:
                # Another program bound one of the ports after we checked it.
                self.stop()
                if attempt == attempts:
                    raise
            except BaseException:
                self.stop()
                raise

    def _prepare_dirs(self, attempt: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if attempt > 1:
            # Keep the failed attempt's logs for diagnosis, out of the way of the next.
            self.log_dir.rename(self.workdir / f"log-attempt{attempt - 1}")
        self.log_dir.mkdir(exist_ok=True)
        rundir = self.workdir / "run"
        if len(str(rundir)) > _MAX_RUNDIR_LEN:
            rundir = Path(tempfile.mkdtemp(prefix="slurm-"))
            self._own_rundir = True
        else:
            # A retry must not recover the previous attempt's controller state.
            shutil.rmtree(rundir, ignore_errors=True)
        rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sub in ("state", "munge", *(f"spool/{node}" for node in self.nodes)):
            (rundir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._rundir = rundir

    @property
    def running(self) -> bool:
        """Whether any of this cluster's daemons is alive."""
        return any(proc.poll() is None for proc in self._procs.values())

    @property
    def pids(self) -> dict[str, int]:
        """Daemon pids by name: ``munged``, ``slurmctld``, ``slurmd-<node>``."""
        return {name: proc.pid for name, proc in self._procs.items()}

    def leftover_pids(self) -> list[int]:
        """Processes still carrying this cluster's environment (daemons, steps, jobs)."""
        return [pid for pid in _pids_with_env(self._env_marker) if pid != os.getpid()]

    def job_pids(self, job_id: int) -> list[int]:
        """Processes of job ``job_id`` still alive: its batch shell, its steps' tasks and
        whatever they started (all carry SLURM_JOB_ID)."""
        job = b"\0SLURM_JOB_ID=" + str(job_id).encode() + b"\0"
        return [pid for pid in _pids_with_env(self._env_marker, job) if pid != os.getpid()]

    @property
    def _env_marker(self) -> bytes:
        return b"\0SLURM_CONF=" + os.fsencode(self.conf_path) + b"\0"

    @property
    def munge_socket(self) -> Path:
        return self._rundir / "munge" / "munge.socket"

    def _start_daemons(self) -> None:
        self._start_munge()
        self.conf_path.write_text(self.slurm_conf())
        self._spawn("slurmctld", [self._bin["slurmctld"], "-D", "-f", str(self.conf_path)])
        self._wait_for(self._controller_up, "slurmctld to answer scontrol ping")
        for node in self.nodes:
            self._spawn(
                f"slurmd-{node}",
                [self._bin["slurmd"], "-D", "-N", node, "-f", str(self.conf_path)],
            )
        self._wait_for(self._nodes_idle, f"nodes {', '.join(self.nodes)} to be idle")

    def _start_munge(self) -> None:
        key = self._rundir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        munge_dir = self._rundir / "munge"
        # --force: munged refuses to run when any ancestor of its files is writable by
        # others (e.g. /tmp); the directories it owns here are private. In the foreground
        # it logs to stderr (log/munged.stderr).
        self._spawn(
            "munged",
            [
                self._bin["munged"], "--foreground", "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
        )  # fmt: skip
        self._wait_for(self.munge_socket.exists, "munged to create its socket")

    def slurm_conf(self) -> str:
        run = self._rundir
        ctld_port, *node_ports = self.ports
        lines = [
            f"ClusterName={self.cluster_name}",
            # slurmctld refuses to start unless this names its own short hostname.
            f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # A short credential lifetime is what lets a requeued job start again within
            # seconds instead of the default two minutes.
            f"AuthInfo=socket={self.munge_socket},cred_expire=5",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={run / 'state'}",
            f"SlurmdSpoolDir={run / 'spool'}/%n",
            f"SlurmctldPidFile={run / 'slurmctld.pid'}",
            f"SlurmdPidFile={run}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir}/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No systemd and no writable cgroup tree here: track processes by /proc.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2,bf_interval=1",
            "JobRequeue=1",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            # Nodes advertise the configured CPUs, not the host's, so a 2-core machine
            # can still model nodes with several tasks each.
            "SlurmdParameters=config_overrides",
            # Completed jobs stay visible to scontrol (there is no accounting daemon).
            "MinJobAge=3600",
            # Seconds between SIGTERM and SIGKILL when a job is cancelled or requeued:
            # production's default. A rank's checkpoint and exit after TERM take several
            # seconds on a busy machine (most of it the interpreter's shutdown), so a
            # shorter grace period kills jobs that would exit cleanly on a real cluster.
            f"KillWait={self.kill_wait}",
            "InactiveLimit=0",
            "SlurmdTimeout=60",
            "SlurmctldTimeout=60",
        ]
        for node, port in zip(self.nodes, node_ports):
            lines.append(
                f"NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} Port={port} "
                f"CPUs={self.cpus_per_node} State=UNKNOWN"
            )
        lines.append(
            f"PartitionName={self.partition} Nodes={','.join(self.nodes)} Default=YES "
            "MaxTime=INFINITE State=UP"
        )
        return "\n".join(lines) + "\n"

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.log_dir / f"{name}.stderr", "ab") as out:
            self._procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(with_python=False),
                # Own session: a terminal's Ctrl-C reaches pytest only, whose teardown
                # then stops the daemons in order.
                start_new_session=True,
            )

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            self._check_daemons_alive()
            if ready():
                return
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"timed out after {self.start_timeout:.0f}s waiting for {what}\n"
                    + self.diagnostics()
                )
            time.sleep(0.2)

    def _check_daemons_alive(self) -> None:
        dead = {name: p.returncode for name, p in self._procs.items() if p.poll() is not None}
        # A daemon logs "fatal:" (e.g. its port is taken) a moment before it exits.
        fatal = [
            log.name
            for log in self.log_dir.glob("*.stderr")
            if "fatal:" in log.read_text(errors="replace")
        ]
        if not dead and not fatal:
            return
        logs = self.diagnostics()
        error = _PortInUse if "Address already in use" in logs else ClusterStartError
        raise error(f"daemon(s) failed during start-up: exited {dead}, fatal in {fatal}\n{logs}")

    def _controller_up(self) -> bool:
        # Ping only once slurmctld has bound its port: if another program holds the port,
        # scontrol would wait on that program for the full MessageTimeout (10 s).
        log = self.log_dir / "slurmctld.log"
        if not (log.exists() and "Running as primary controller" in log.read_text()):
            return False
        try:
            result = self.run(["scontrol", "ping"], check=False, timeout=3)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0 and "UP" in result.stdout

    def _nodes_idle(self) -> bool:
        states = self.node_states()
        return set(states) == set(self.nodes) and all(s == "idle" for s in states.values())

    # ------------------------------------------------------------------ tear-down

    def stop(self) -> None:
        """Cancel every job, stop all daemons and anything they left running. Idempotent."""
        if self._procs:
            self._stop_processes()
        if self._own_rundir and self._rundir is not None:
            shutil.rmtree(self._rundir, ignore_errors=True)
            self._own_rundir = False

    def _stop_processes(self) -> None:
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self._cancel_all_jobs()
        # slurmds first so they stop their steps, then the controller, then munge.
        order = [n for n in self._procs if n.startswith("slurmd-")] + ["slurmctld", "munged"]
        for name in order:
            proc = self._procs.get(name)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # Left-overs if scancel could not reach them: slurmstepd (it calls setsid, so it
        # leaves slurmd's session) and job processes. The daemons pass their environment,
        # with this cluster's SLURM_CONF, to the steps, and sbatch/srun pass it to the jobs.
        for _ in range(3):
            leftovers = self.leftover_pids()
            for pid in leftovers:
                try:
                    os.kill(pid, signal_module.SIGKILL)
                except ProcessLookupError:
                    pass
            if not leftovers:
                break
            time.sleep(0.2)
        self._procs.clear()

    def _cancel_all_jobs(self) -> None:
        # Best effort: whatever a hung controller leaves running is killed by stop().
        try:
            job_ids = self._queued_job_ids()
            if not job_ids:
                return
            self.run(["scancel", "--full", *job_ids], check=False, timeout=15)
            # Jobs that ignore TERM end only at SIGKILL, KillWait seconds later.
            deadline = time.monotonic() + self.kill_wait + 15
            while self._queued_job_ids() and time.monotonic() < deadline:
                time.sleep(0.5)
        except subprocess.TimeoutExpired:
            pass

    def _queued_job_ids(self) -> list[str]:
        return self.run(["squeue", "-h", "-o", "%i"], check=False, timeout=15).stdout.split()

    def __enter__(self) -> LoopbackSlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients

    def env(self, with_python: bool = True) -> dict[str, str]:
        """Environment for SLURM clients (sbatch, srun, squeue, scontrol, ...) of this cluster.

        SLURM variables inherited from an enclosing job are dropped: srun run from
        inside a job would otherwise attach to that job's allocation on another cluster.
        So are the torch.distributed rendezvous variables of this process (a test that
        started a process group in it exports them): jobs find their ranks from SLURM.
        With ``with_python`` the running interpreter's bin directory leads PATH, as after
        activating the virtualenv, so ``python`` in batch scripts and srun steps is ours.
        """
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_"))
            and k not in DISTRIBUTED_VARS
        }
        env["SLURM_CONF"] = str(self.conf_path)
        path = env.get("PATH", os.defpath)
        if with_python:
            path = os.pathsep.join([str(Path(sys.executable).parent), path])
        env["PATH"] = path
        return env

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster; output captured as text.

        ``env`` entries are added to (and override) :meth:`env`.
        """
        argv = list(argv)
        if self._bin.get(argv[0]):
            argv[0] = self._bin[argv[0]]
        full_env = self.env()
        full_env.update(env or {})
        result = subprocess.run(
            argv, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, shlex.join(argv), result.stdout, result.stderr
            )
        return result

    def node_states(self) -> dict[str, str]:
        """``{node: state}`` as sinfo reports it (``idle``, ``alloc``, ``down*``, ...)."""
        result = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False)
        if result.returncode != 0:
            return {}
        return dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())

    def sbatch(
        self,
        script: str | os.PathLike,
        *script_args: str,
        options: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
    ) -> int:
        """Submit ``script`` with sbatch ``options``; return the job id.

        The job starts in ``cwd`` (default: this process's working directory), with
        :meth:`env` plus ``env`` as its environment (sbatch's default ``--export=ALL``).
        """
        result = self.run(
            ["sbatch", "--parsable", *options, str(script), *script_args], env=env, cwd=cwd
        )
        return int(result.stdout.strip().split(";")[0])

    def job_info(self, job_id: int) -> dict[str, str]:
        """The job's fields from ``scontrol show job -o`` (``JobState``, ``Restarts``, ...)."""
        result = self.run(["scontrol", "show", "job", "-o", str(job_id)])
        return parse_scontrol_record(result.stdout.splitlines()[0])

    def job_state(self, job_id: int) -> str:
        return self.job_info(job_id)["JobState"]

    def wait_job(
        self,
        job_id: int,
        states: Iterable[str] = TERMINAL_STATES,
        timeout: float = 120,
        poll: float = 0.5,
    ) -> dict[str, str]:
        """Poll until the job's state is one of ``states``; return its :meth:`job_info`.

        Raises :class:`JobStateError` if the job ends in a terminal state not in
        ``states`` and ``TimeoutError`` after ``timeout`` seconds; both carry the job
        record and the daemons' logs.
        """
        wanted = frozenset(states)
        deadline = time.monotonic() + timeout
        while True:
            info = self.job_info(job_id)
            state = info["JobState"]
            if state in wanted:
                return info
            if state in TERMINAL_STATES:
                raise JobStateError(
                    f"job {job_id} ended {state}, waited for {sorted(wanted)}: {info}\n"
                    + self.diagnostics()
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} still {state} after {timeout:.0f}s, waited for "
                    f"{sorted(wanted)}: {info}\n" + self.diagnostics()
                )
            time.sleep(poll)

    def wait_job_processes_gone(self, job_id: int, timeout: float = 60, poll: float = 0.2) -> None:
        """Poll until no process of job ``job_id`` is left (:meth:`job_pids`): from then
        on nothing the job runs, its batch script included, can act on it any more.
        Raises ``TimeoutError`` after ``timeout`` seconds, naming the processes left."""
        deadline = time.monotonic() + timeout
        while pids := self.job_pids(job_id):
            if time.monotonic() > deadline:
                commands = {pid: _cmdline(pid) for pid in pids}
                raise TimeoutError(
                    f"job {job_id} still has processes after {timeout:.0f}s: {commands}; "
                    f"job record {self.job_info(job_id)}\n" + self.diagnostics()
                )
            time.sleep(poll)

    def requeue(self, job_id: int) -> None:
        """``scontrol requeue``: stop the job and queue it again (SLURM_RESTART_COUNT += 1)."""
        self.run(["scontrol", "requeue", str(job_id)])

    def signal(self, job_id: int, sig: str | int = "USR1", batch: bool = True) -> None:
        """``scancel --signal``: to the batch shell only (``batch``), else to the job's steps."""
        name = sig if isinstance(sig, str) else signal_module.Signals(sig).name
        name = name.removeprefix("SIG")
        self.run(["scancel", f"--signal={name}", *(["--batch"] if batch else []), str(job_id)])

    def cancel(self, job_id: int) -> None:
        self.run(["scancel", str(job_id)])

    def diagnostics(self, lines: int = 40) -> str:
        """The tail of every daemon log, for failure messages."""
        parts = []
        for log in sorted(self.log_dir.glob("*")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name} (last {lines} lines) ---\n" + "\n".join(text))
        return "\n".join(parts)


def wait_for_text(path: str | os.PathLike, text: str, timeout: float = 60) -> str:
    """Wait until the file at ``path`` (e.g. a job's output) contains ``text``; return it all."""
    path = Path(path)
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else None
        if content is not None and text in content:
            return content
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{text!r} not in {path} after {timeout:.0f}s; it holds:\n"
                + (content if content is not None else "<no such file>")
            )
        time.sleep(0.2)


def _pids_with_env(*markers: bytes) -> Iterable[int]:
    """Processes whose environment holds every one of ``markers`` (``b"\\0NAME=value\\0"``)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = b"\0" + Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if all(marker in environ for marker in markers):
            yield int(entry.name)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "<gone>"
