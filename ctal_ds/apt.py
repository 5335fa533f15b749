"""Debian packages installed on demand, for tools that are not Python packages.

The loopback SLURM cluster of the tests (slurm daemons, munge) and the MLflow UI check
(chromium, chromium-driver) need programs that pip cannot provide. When they are
missing and the process is root on a machine with apt-get, they are installed: one
``apt-get install`` and, if that fails (fresh machines often have no package lists),
``apt-get update`` and a second try. Every step waits a bounded time and a failure
names what it waited for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Held while installing, so that parallel processes (test workers) do not run apt-get at
# once: apt's own locks would make all but one of them fail.
INSTALL_LOCK = Path(tempfile.gettempdir()) / "ctal-ds-apt.lock"
# apt-get install on a slow mirror, and apt-get update before the retry.
APT_INSTALL_TIMEOUT_S = 1200
APT_UPDATE_TIMEOUT_S = 600
# sbin is not on every user's PATH (e.g. under sudo -E or CI shells).
SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"]
)


class PackagesUnavailable(RuntimeError):
    """The packages are missing and cannot be installed here (not root, no apt, apt failed)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@contextlib.contextmanager
def hold_flock(path: Path, what: str, timeout: float):
    """Hold an exclusive flock on ``path``. Raises ``TimeoutError`` naming ``what`` when
    another process still holds it after ``timeout`` seconds."""
    with open(path, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"waited {timeout:.0f}s for {what} (lock {path}); another process still holds it"
                    ) from None
                time.sleep(0.5)
        yield


def find(name: str, search_path: str = SEARCH_PATH) -> str | None:
    return shutil.which(name, path=search_path)


def apt_install(
    packages: Sequence[str],
    missing: Sequence[str],
    installed: Callable[[], bool],
    *,
    lock: Path = INSTALL_LOCK,
    search_path: str = SEARCH_PATH,
    install_timeout: float = APT_INSTALL_TIMEOUT_S,
    update_timeout: float = APT_UPDATE_TIMEOUT_S,
) -> None:
    """``apt-get install packages``, for the programs ``missing`` (named in errors), unless
    ``installed()`` holds once the install lock is taken (another process installed them).
    Raises :class:`PackagesUnavailable` saying why when they cannot be installed."""
    what = f"{', '.join(missing)} not installed"
    if os.geteuid() != 0:
        raise PackagesUnavailable(f"{what} and not root, so cannot apt-get install them")
    apt = find("apt-get", search_path)
    if apt is None:
        raise PackagesUnavailable(f"{what} and there is no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [apt, "-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends", *packages]
    wait = 2 * install_timeout + update_timeout
    with hold_flock(lock, f"another process installing {' '.join(packages)}", wait):
        if installed():
            return
        try:
            result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=install_timeout)
            if result.returncode != 0:
                subprocess.run([apt, "update"], env=env, capture_output=True, text=True, timeout=update_timeout)
                result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=install_timeout)
        except subprocess.TimeoutExpired as err:
            raise PackagesUnavailable(f"{' '.join(err.cmd)} did not finish within {err.timeout:.0f}s") from err
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise PackagesUnavailable(f"apt-get install {' '.join(packages)} failed: {tail}")
