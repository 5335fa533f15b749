"""A checkpoint write that never finishes, to kill a job at a known point inside a save.

Copied as ``sitecustomize.py`` into a directory that leads ``PYTHONPATH``, so every
Python process of the job loads it at start-up with the script left unchanged. It acts
only where ``STALL_SAVE_TAG`` is set and ``SLURM_PROCID`` equals ``STALL_SAVE_RANK``:
there, the first ``torch.save`` of a ZeRO optimizer-state file into a directory named
``STALL_SAVE_TAG`` writes the first half of the serialised bytes (a truncated file, as a
killed writer leaves), creates the file ``STALL_SAVE_FLAG`` and sleeps until the
process is killed. This is a large checkpoint whose write outlasts scancel's grace
period (KillWait), made deterministic: the test kills the job once the flag exists.
"""

import io
import os
import time
from pathlib import Path


def _install(tag: str, flag: Path) -> None:
    import torch

    real_save = torch.save

    def stalling_save(obj, f, *args, **kwargs):
        path = Path(f) if isinstance(f, (str, os.PathLike)) else None
        if path is None or path.parent.name != tag or not path.name.endswith("optim_states.pt"):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(path, "wb") as out:
            out.write(data[: len(data) // 2])
        flag.write_text(f"{path}\n")
        while True:  # SIGTERM only sets the trainer's stop flag; SIGKILL ends this
            time.sleep(60)

    torch.save = stalling_save


if os.environ.get("STALL_SAVE_TAG") and os.environ.get("SLURM_PROCID") == os.environ.get(
    "STALL_SAVE_RANK", "1"
):
    _install(os.environ["STALL_SAVE_TAG"], Path(os.environ["STALL_SAVE_FLAG"]))
