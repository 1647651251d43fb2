"""The toy domain under another name, ``fragile``, whose env kills its own process once, mid-episode: loaded as a
plugin file next to ``ppo_toy.py`` (tests/test_ray.py: a Ray worker lost mid-task is retried)."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

from kdistill import hookimpl

# by path, as a plugin file is loaded: a Ray worker has no tests/ folder on its import path
_spec = importlib.util.spec_from_file_location("fragile_toy_base", Path(__file__).with_name("ppo_toy.py"))
_toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_toy)

MARKER_ENV = "KDISTILL_TEST_KILL_MARKER"  # a file path: the first process to step 10 times creates it and dies
_steps = 0


class FragileEnv(_toy.ToyEnv):
    def step(self, action):
        global _steps
        _steps += 1
        marker = os.environ.get(MARKER_ENV)
        if marker and _steps == 10 and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)


class FragileDomain(_toy.ToyDomain):
    name = "fragile"

    def make_env(self, task, **kwargs):
        return FragileEnv(task)


@hookimpl
def register_domains(register):
    register("fragile", FragileDomain)
