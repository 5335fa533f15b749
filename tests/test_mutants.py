"""The mutation check of tests/mutants.py: every anchor still matches the code, an
anchor that does not is an error, and (slow) one mutant is caught end to end.

tests/mutants.py never runs this file on its copies: under a mutant the anchor of that
mutant is gone, so the first test would fail for that reason alone.
"""

from __future__ import annotations

import subprocess
import sys

import mutants
import pytest


def test_every_mutant_applies_once_to_the_tree_and_its_target_files_exist():
    assert len({m.name for m in mutants.MUTANTS}) == len(mutants.MUTANTS)
    for m in mutants.MUTANTS:
        texts = mutants.mutated_sources(m, mutants.REPO)
        for path, text in texts.items():
            assert text != (mutants.REPO / path).read_text(encoding="utf-8"), (m.name, path)
        assert m.targets and all((mutants.REPO / t).is_file() for t in m.targets), m.name
        assert mutants.SELF_TEST not in m.targets


def test_an_anchor_missing_from_the_code_or_found_twice_is_an_error(tmp_path):
    edit = mutants.Edit("pkg/mod.py", "x = 1\n", "x = 2\n")
    mutant = mutants.Mutant("demo", "x changed", (edit,), ("tests/test_x.py",))
    (tmp_path / "pkg").mkdir()
    for text, count in (("x = 3\n", 0), ("x = 1\nx = 1\n", 2)):
        (tmp_path / "pkg" / "mod.py").write_text(text)
        with pytest.raises(mutants.MutantError, match=f"anchor found {count} times in pkg/mod.py"):
            mutants.mutated_sources(mutant, tmp_path)
    (tmp_path / "pkg" / "mod.py").write_text("y = 0\nx = 1\n")
    assert mutants.mutated_sources(mutant, tmp_path) == {"pkg/mod.py": "y = 0\nx = 2\n"}


@pytest.mark.slow
def test_the_runner_catches_the_checkpoint_hash_mutant(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(mutants.REPO / "tests" / "mutants.py"), "--only", "checkpoint-hash",
         "--workdir", str(tmp_path)],
        cwd=mutants.REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| checkpoint-hash "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "yes"
    assert cells[3].startswith("tests/train/test_checkpoint_files.py::")
    assert list(tmp_path.iterdir()) == []  # the copies are removed
