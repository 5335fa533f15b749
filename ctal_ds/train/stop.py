"""Requests to stop early and cleanly: checkpoint at the next step boundary, exit 0.

SLURM sends SIGUSR1 (`--signal=B:USR1@120`, forwarded by the batch script) or
SIGTERM (pre-emption, scancel) some time before it kills a job. A handler only sets a
flag: saving from inside a signal handler would interleave with the collective
calls of the step in flight. The trainer reads `code()` on every rank at every step
boundary and takes the maximum over ranks, so a signal delivered to one rank stops
them all at the same step.
"""

from __future__ import annotations

import signal
import time

NONE, EXIT_AT_STEP, TIME_LIMIT, SIGNAL = 0, 1, 2, 3
REASONS = {EXIT_AT_STEP: "--exit-at-step reached", TIME_LIMIT: "--time-limit-min reached", SIGNAL: "signal"}


class StopRequest:
    def __init__(self, exit_at_step: int | None = None, time_limit_min: float | None = None) -> None:
        self.exit_at_step = exit_at_step
        self.deadline = None if time_limit_min is None else time.monotonic() + 60 * time_limit_min
        self.signal_name: str | None = None

    def install(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signal_name = signal.Signals(signum).name

    def code(self, step: int) -> int:
        """This rank's reason to stop after `step` (the highest applies), 0 for none."""
        if self.signal_name is not None:
            return SIGNAL
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return TIME_LIMIT
        if self.exit_at_step is not None and step >= self.exit_at_step:
            return EXIT_AT_STEP
        return NONE

    def describe(self, code: int) -> str:
        if code == SIGNAL and self.signal_name:
            return f"{self.signal_name} received"
        return REASONS.get(code, "")
