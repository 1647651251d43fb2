"""Skips that a CI run may not take: a missing tool or file skips the test on a developer machine, and fails it in CI
(``CI`` set), so that CI never passes by skipping."""

from __future__ import annotations

import importlib
import os

import pytest

IN_CI = bool(os.environ.get("CI"))


def skip_outside_ci(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason}; CI must run this test")
    pytest.skip(reason)


def import_outside_ci_or_skip(module: str):
    """The module; outside CI a missing one skips the test, in CI its ImportError fails it."""
    return importlib.import_module(module) if IN_CI else pytest.importorskip(module)
