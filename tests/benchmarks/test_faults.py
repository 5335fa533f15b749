"""benchmarks/faults.py: one of its rows runs for real (2-rank deepspeed-launcher jobs), and
its command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import faults  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(1800)  # shards, a reference job and two jobs, on a loaded machine
def test_flipped_byte_row_is_ok(tmp_path):
    """One row end to end; the MLflow-server row's resend is tested in tests/train/test_tracking.py."""
    bench = faults.Bench(tmp_path, seed=0)
    try:
        bench.build_shards()
        rows = faults.run_rows(bench, ["flipped-byte"])
    finally:
        bench.close()
    (flipped,) = rows
    assert flipped.ok, flipped.observed
    assert float(flipped.gap) <= faults.TOLERANCE
    cut = 3 * faults.SAVE_EVERY
    assert f"global_step{cut}/mp_rank_00_model_states.pt flipped" in flipped.observed
    assert f"resumed from global_step{cut - faults.SAVE_EVERY}; finished" in flipped.observed
    # Every job of the row left its log, and no job is left running.
    logs = sorted(p.name for p in (tmp_path / "logs").glob("*.log"))
    assert logs == ["flipped-byte-1.log", "flipped-byte-2.log", "reference.log"]
    assert all(job.proc.poll() is not None for job in bench.jobs)
    table = faults.table(rows)
    assert table.count("| OK") == 1 and "FAIL" not in table


def test_a_failed_check_makes_its_row_fail_and_the_others_run(tmp_path):
    class Broken(faults.Bench):
        def flipped_byte(self, row):
            raise faults.RowFailed("the resume started from global_step12, not global_step8")

        def truncated_shard(self, row):
            row.observed = "named and counted"

    rows = faults.run_rows(Broken(tmp_path, seed=0), ["flipped-byte", "truncated-shard"])
    assert [r.ok for r in rows] == [False, True]
    assert rows[0].observed == "FAILED CHECK: the resume started from global_step12, not global_step8"
    table = faults.table(rows)
    assert "| FAIL" in table and "| OK" in table


def test_only_rejects_an_unknown_row():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "faults.py"), "--only", "flipped-byte,nope"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert result.returncode == 2
    assert "--only: unknown rows ['nope']" in result.stderr
