"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kdistill_unimal  # noqa: F401  (chooses MuJoCo's headless OpenGL backend before anything imports mujoco)

DEFAULT_UNIMAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "unimal"


@pytest.fixture(scope="session")
def unimal_dir() -> Path:
    """The UNIMAL robots folder (KDISTILL_UNIMAL_DIR, else ../shared/unimal).

    Missing robots skip the test on a developer machine but fail it in CI (CI set), so a CI run can
    never pass by silently skipping the robot tests.
    """
    path = Path(os.environ.get("KDISTILL_UNIMAL_DIR") or DEFAULT_UNIMAL_DIR)
    if not (path / "train" / "xml").is_dir():
        message = f"UNIMAL robots not found in {path} (set KDISTILL_UNIMAL_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def one_torch_thread():
    """Tiny matmuls run on one torch thread: spin-waiting threads are much slower when the cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
