"""Stand-in for launch/pretrain.py and launch/finetune.py: only their side of the batch
scripts' contract, so the scripts' signal and requeue handling is tested in seconds.

Copied as ``launch/pretrain.py`` and ``launch/finetune.py`` into a scratch ``REPO``.
Each rank prints its argv, then stops the way the real trainer does, through
``ctal_ds.train.stop.StopRequest`` (SIGUSR1, SIGTERM or ``--exit-at-step``), and exits 0
unfinished, as after its checkpoint. A requeued job (SLURM_RESTART_COUNT >= 1)
finishes at once. Rank 0 leaves the marker each script reads: ``<out>/status.json``
(pre-training, on every exit) or ``<out>/results.json`` (fine-tuning, only when
finished).
"""

import json
import os
import sys
import time
from pathlib import Path

from ctal_ds.train.stop import StopRequest

argv = sys.argv[1:]
out = Path(argv[argv.index("--out") + 1])
rank = os.environ["SLURM_PROCID"]
restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
exit_at = int(argv[argv.index("--exit-at-step") + 1]) if "--exit-at-step" in argv else None
stop = StopRequest(exit_at_step=exit_at)
stop.install()
print(f"[stand-in] rank {rank} restart {restart} argv {json.dumps(argv)}", flush=True)

step, finished = 0, restart >= 1
while not finished and not stop.code(step):
    time.sleep(0.05)
    step += 1
reason = "finished" if finished else stop.describe(stop.code(step))
print(f"[stand-in] rank {rank} restart {restart} stops: {reason}", flush=True)
if rank == "0":
    if Path(__file__).name == "pretrain.py":
        status = {"step": step, "finished": finished, "reason": reason}
        (out / "status.json").write_text(json.dumps(status) + "\n")
    elif finished:
        (out / "results.json").write_text("{}\n")
