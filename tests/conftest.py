"""Shared by every test directory: ``prerequisites`` (how a test reports something it
needs that is missing) is importable from all of them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["pytester"]
