"""What a test does when something it needs is missing from the machine.

Locally a missing prerequisite skips the test, naming it. Under CI (``CI`` set to
true, as CI services do) it fails the test instead: a suite that skips its multi-node
or tracking tests for want of a package would otherwise pass with them unrun.

Only prerequisites of the project go through here (its required packages, the dev
tools ``make install`` puts in place, a SLURM cluster the tests can install); a test
that needs hardware the machine may lack (a CUDA GPU) keeps skipping everywhere.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the calling test (or module) for ``reason``; under CI, fail it for ``reason``."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing prerequisite fails instead of skipping)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(condition: object, reason: str) -> None:
    """``skip_or_fail(reason)`` unless ``condition`` holds."""
    if not condition:
        skip_or_fail(reason)


def require_module(name: str, why: str = "") -> ModuleType:
    """The imported module ``name``; ``skip_or_fail`` saying why if it cannot be imported."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        skip_or_fail(f"cannot import {name}{f' ({why})' if why else ''}: {err}")
