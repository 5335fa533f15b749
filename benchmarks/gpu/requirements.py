"""List the requirements of ctal-ds that the running python does not satisfy.

    python benchmarks/gpu/requirements.py            # one line per requirement, with what is installed
    python benchmarks/gpu/requirements.py --missing  # only the unmet ones, as pip arguments

Reads INSTALL_REQUIRES from setup.py (without running it) and adds triton, the one
[dev] extra the fused attention kernel needs. Used by benchmarks/gpu_check.sh to
install only what a machine lacks.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import sys

from common import REPO

EXTRA = ["triton>=3.0"]


def project_requirements() -> list[str]:
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "INSTALL_REQUIRES" for t in node.targets):
            return [*ast.literal_eval(node.value), *EXTRA]
    raise RuntimeError("setup.py has no INSTALL_REQUIRES list")


def check(requirement: str) -> tuple[str, str | None, bool]:
    """(name, installed version or None, satisfied)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare python: any installed version counts
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        try:
            return name, importlib.metadata.version(name), True
        except importlib.metadata.PackageNotFoundError:
            return name, None, False
    req = Requirement(requirement)
    try:
        installed = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        return req.name, None, False
    return req.name, installed, req.specifier.contains(installed, prereleases=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--missing", action="store_true", help="print only unmet requirements, space-separated")
    args = p.parse_args(argv)
    rows = [(r, *check(r)) for r in project_requirements()]
    if args.missing:
        print(" ".join(r for r, _, _, ok in rows if not ok))
        return 0
    for requirement, _, installed, ok in rows:
        print(f"{'ok     ' if ok else 'MISSING'}  {requirement:<24} installed: {installed or 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
