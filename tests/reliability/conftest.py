"""Fixtures of the reliability suite: the CLI run in this process through ``kdistill.cli.main`` (so the
error handling users see is what is tested), and one tiny cart-pole pipeline shared by the tests."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def _run(capsys, args) -> Result:
    from kdistill.cli.app import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


@pytest.fixture
def cli(capsys, one_torch_thread):
    """``cli("eval", "cartpole", ...)`` -> Result(code, out, err)."""
    os.environ.pop("KDISTILL_DEBUG", None)
    return lambda *args: _run(capsys, args)


def assert_one_line_error(res: Result, *words: str, as_json: bool = False) -> str:
    """Exit 2, and the error is one line on stderr starting with ``error:`` and holding ``words``, after any
    progress display; no traceback. With ``as_json``, stdout is ``{"error": the same line}``."""
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert res.code == 2, (res.code, res.err, res.out)
    assert lines and lines[-1].startswith("error: "), res.err
    assert sum(line.startswith("error") for line in lines) == 1, res.err
    assert "Traceback" not in res.err
    line = lines[-1]
    for w in words:
        assert w in line, (w, line)
    if as_json:
        doc = json.loads(res.out)
        assert set(doc) == {"error"} and doc["error"] == line[len("error: "):]
    return line


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """A tiny cart-pole teacher (one PPO iteration), its expert data, an HN-MLP student and an export.

    Tests copy what they change (``copy_of``)."""
    import torch
    from click.testing import CliRunner

    from kdistill.cli.app import app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pipeline")
    paths = {"root": root, "teacher": root / "teacher", "expert": root / "expert", "student": root / "student",
             "export": root / "export" / "train-00"}

    def kd(*args):
        res = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
        assert res.exit_code == 0, res.output

    try:
        kd("teacher", "train", "cartpole", "--num-tasks", "2", "--steps", "4096", "--threads", "1",
           "--out", paths["teacher"])
        kd("expert", "collect", "cartpole", "--teacher", paths["teacher"], "--num-tasks", "2",
           "--samples-per-task", "64", "--envs", "4", "--out", paths["expert"])
        kd("distill", "cartpole", "--data", paths["expert"], "--student-preset", "small", "--preset", "demo",
           "--epochs", "2", "--batch", "64", "--checkpoint-every", "1", "--threads", "1", "--out", paths["student"])
        kd("export", "cartpole", "--student", paths["student"], "--task", "train-00", "--out", paths["export"])
    finally:
        torch.set_num_threads(threads)
    return paths


@pytest.fixture
def copy_of(tmp_path):
    """``copy_of(path)``: a private copy of a file or folder in this test's tmp_path."""

    def copy(path: Path) -> Path:
        dest = tmp_path / ("copy-" + path.name)
        if path.is_dir():
            shutil.copytree(path, dest)
        else:
            shutil.copy2(path, dest)
        return dest

    return copy
