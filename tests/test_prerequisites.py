"""A missing prerequisite skips a test locally and fails it under CI."""

from __future__ import annotations

from pathlib import Path

import pytest
from prerequisites import require, require_module, skip_or_fail


@pytest.mark.parametrize("value", ["true", "True", "1"])
def test_under_ci_a_missing_prerequisite_fails_with_the_reason(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="no loopback cluster here"):
        skip_or_fail("no loopback cluster here")
    with pytest.raises(pytest.fail.Exception, match="cannot import ctal_ds_no_such_module"):
        require_module("ctal_ds_no_such_module")
    with pytest.raises(pytest.fail.Exception, match="needs a thing"):
        require(False, "needs a thing")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_outside_ci_a_missing_prerequisite_skips_with_the_reason(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no loopback cluster here"):
        skip_or_fail("no loopback cluster here")
    with pytest.raises(pytest.skip.Exception, match="cannot import ctal_ds_no_such_module"):
        require_module("ctal_ds_no_such_module")


def test_a_present_prerequisite_neither_skips_nor_fails(monkeypatch):
    monkeypatch.setenv("CI", "true")
    require(True, "never shown")
    assert require_module("json").dumps([1]) == "[1]"


def test_a_module_that_cannot_import_a_required_package_fails_under_ci(pytester, monkeypatch):
    pytester.syspathinsert(Path(__file__).parent)
    pytester.makepyfile(
        test_needs_a_missing_package="""
        from prerequisites import require_module

        missing = require_module("ctal_ds_no_such_module", "the tracking store")


        def test_uses_it():
            pass
        """,
        test_needs_nothing="def test_other():\n    pass\n",
    )
    reason = "*cannot import ctal_ds_no_such_module (the tracking store)*"
    monkeypatch.setenv("CI", "true")
    failed = pytester.runpytest_inprocess("-p", "no:xdist", "-p", "no:cacheprovider")
    assert failed.ret == pytest.ExitCode.INTERRUPTED  # a collection error
    failed.stdout.fnmatch_lines([reason])
    monkeypatch.delenv("CI")
    skipped = pytester.runpytest_inprocess("-p", "no:xdist", "-p", "no:cacheprovider", "-rs")
    assert skipped.ret == pytest.ExitCode.OK and skipped.parseoutcomes() == {"passed": 1, "skipped": 1}
    skipped.stdout.fnmatch_lines([reason])
