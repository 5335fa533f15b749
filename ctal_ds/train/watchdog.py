"""End a rank whose training makes no progress, with every thread's stack in the log.

A rank that hangs (a collective whose peer died or stopped, a stuck data loader, a
filesystem that stopped answering) would otherwise hold its allocation until the
collective timeout or the job's time limit. Each rank runs one `Watchdog` thread; the
trainer reports every completed optimizer step (`step_done`) and brackets evaluation and
checkpointing (`phase`). When nothing completes within the limit, the watchdog prints a
line naming the rank, the host, the last completed step and how long it waited, dumps
the Python stack of every thread (`faulthandler`) to stderr, and ends the process with
`os._exit(EXIT_CODE)`. The launcher (deepspeed, torchrun, `srun --kill-on-bad-exit`)
then ends the other ranks.

The limit:

- once a step time is known: max(`floor_s`, `factor` x the median of the last `window`
  step times). A step time is the time from the previous step's completion (or the end
  of an evaluation or checkpoint phase) to this step's completion;
- until then, i.e. until the second step of this process completes (engine build,
  resume, loader start, the first steps and their compilation), and during each
  evaluation and checkpoint: `startup_s`. The end of a phase counts as progress, and a
  phase's time never enters the step times.

`factor` 0 switches the watchdog off. The clock is injectable, so tests drive the limit
with a fake time source while the thread itself is real.
"""

from __future__ import annotations

import faulthandler
import os
import socket
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ctal_ds.train.config import WatchdogConfig

# Exit status of a rank the watchdog ended (0 clean, 2 configuration, 3 diverged).
EXIT_CODE = 4


def describe(cfg: WatchdogConfig) -> str:
    """One line for the start-up log."""
    if not cfg.enabled:
        return "watchdog off (--watchdog-factor 0)"
    return (
        f"watchdog: an optimizer step may take max({cfg.floor_s:g} s, {cfg.factor:g} x the median of the "
        f"last {cfg.window} step times); {cfg.startup_s:g} s before the first step time is known and for "
        f"each evaluation and checkpoint; past that a rank dumps its threads' stacks and exits {EXIT_CODE}"
    )


class Watchdog:
    """One rank's watchdog; `start()` begins the start-up allowance.

    `on_stall(message)` replaces the default action (print, dump the stacks, exit); it
    runs once, on the watchdog thread. `poll_s` is how often the thread looks.
    """

    def __init__(
        self,
        cfg: WatchdogConfig,
        rank: int,
        host: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 1.0,
        on_stall: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.rank = rank
        self.host = host if host is not None else socket.gethostname()
        self.clock = clock
        self.poll_s = poll_s
        self.on_stall = on_stall if on_stall is not None else dump_stacks_and_exit
        self.step_times: deque[float] = deque(maxlen=max(1, cfg.window))
        self.last_step: int | None = None
        self.phase_name: str | None = None
        self.fired = False
        self.polls = 0  # checks made by the thread
        self._since = clock()  # last progress: start, step completion, phase end
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    # What the trainer reports ---------------------------------------------------------

    def start(self) -> Watchdog:
        """Start the thread (once); the start-up allowance runs from now."""
        with self._lock:
            self._since = self.clock()
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"ctal-watchdog-rank{self.rank}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 2 * self.poll_s))

    def step_done(self, step: int) -> None:
        """Optimizer step `step` completed on this rank."""
        with self._lock:
            now = self.clock()
            if self.last_step is not None:
                self.step_times.append(now - self._since)
            self.last_step = step
            self._since = now

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Evaluation or checkpointing: limited by `startup_s`; its end is progress."""
        with self._lock:
            self.phase_name, self._since = name, self.clock()
        try:
            yield
        finally:
            with self._lock:
                self.phase_name, self._since = None, self.clock()

    # The rule -------------------------------------------------------------------------

    def limit(self) -> tuple[float, str]:
        """The current limit in seconds and where it comes from."""
        cfg = self.cfg
        if self.phase_name is not None:
            return cfg.startup_s, f"the start-up allowance, during {self.phase_name}"
        if not self.step_times:
            return cfg.startup_s, "the start-up allowance, no step time known yet"
        median = statistics.median(self.step_times)
        if cfg.factor * median > cfg.floor_s:
            return cfg.factor * median, f"{cfg.factor:g} x median step time {median:.3g} s"
        return cfg.floor_s, f"the floor; {cfg.factor:g} x median step time {median:.3g} s is less"

    def check(self) -> bool:
        """One look: fire when the time since the last progress exceeds the limit."""
        if not self.enabled or self.fired:
            return self.fired
        with self._lock:
            waited = self.clock() - self._since
            limit, why = self.limit()
            if waited <= limit:
                return False
            self.fired = True
            message = self._message(waited, limit, why)
        self.on_stall(message)
        return True

    def _message(self, waited: float, limit: float, why: str) -> str:
        last = "none in this process" if self.last_step is None else str(self.last_step)
        what = f"{self.phase_name} made no progress" if self.phase_name else "no optimizer step completed"
        return (
            f"[ctal-ds] watchdog: rank {self.rank} on {self.host}: {what} for {waited:.0f} s "
            f"(limit {limit:.0f} s: {why}); last completed step {last}. Stacks of all threads follow; "
            f"exiting with code {EXIT_CODE}"
        )

    def _run(self) -> None:
        while not self._stopped.wait(self.poll_s):
            fired = self.check()
            self.polls += 1
            if fired:
                return


def dump_stacks_and_exit(message: str) -> None:
    """The default stall action: the message, every thread's stack, `os._exit(EXIT_CODE)`."""
    stream = sys.stderr if _has_fileno(sys.stderr) else sys.__stderr__
    # The leading newline ends a progress bar's line (tqdm writes `\r` without one).
    print(f"\n{message}", file=stream, flush=True)
    faulthandler.dump_traceback(file=stream, all_threads=True)
    print(f"[ctal-ds] watchdog: rank exits with code {EXIT_CODE}", file=stream, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_CODE)


def _has_fileno(stream: object) -> bool:
    try:
        stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return True
