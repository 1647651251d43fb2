"""UNIMAL: universal morphology control on MuJoCo (the first kdistill domain).

Importing the package registers the Gymnasium id ``kdistill/Unimal-ft-v0`` (flat-terrain locomotion):
``gymnasium.make("kdistill/Unimal-ft-v0", robot="NAME", data_dir=None)``, and its one-robot sibling with the
robot's own observation and action sizes, ``gymnasium.make("kdistill/Unimal-ft-compact-v0", robot="NAME")``
(``kdistill_unimal.compact``). The terrain tasks have their own ids, the same env with ``task`` set:
``kdistill/Unimal-vt-v0`` (variable terrain) and ``kdistill/Unimal-obstacle-v0`` (obstacles); docs/terrain.md.
"""

from __future__ import annotations

import os as _os

import gymnasium as _gym


def _choose_gl() -> None:
    """Offscreen rendering without a display: MuJoCo picks its OpenGL backend from MUJOCO_GL when it is first
    imported, and its default (GLFW) needs a display. Unless MUJOCO_GL is set or a display is there, use EGL
    (Debian: libegl1 + libegl-mesa0) or else OSMesa (libosmesa6), whichever is installed."""
    if _os.environ.get("MUJOCO_GL") or _os.environ.get("DISPLAY") or _os.environ.get("WAYLAND_DISPLAY"):
        return
    import sys

    if "mujoco" in sys.modules or not sys.platform.startswith("linux"):
        return
    from ctypes.util import find_library

    for backend, lib in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if find_library(lib):
            _os.environ["MUJOCO_GL"] = backend
            _os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return


_choose_gl()

ENV_IDS = {"ft": "kdistill/Unimal-ft-v0", "ft-compact": "kdistill/Unimal-ft-compact-v0",
           "vt": "kdistill/Unimal-vt-v0", "obstacle": "kdistill/Unimal-obstacle-v0"}

if ENV_IDS["ft"] not in _gym.registry:
    # the episode limit lives inside the env (1000 steps -> truncated), so no TimeLimit wrapper here
    _gym.register(id=ENV_IDS["ft"], entry_point="kdistill_unimal.env:UnimalEnv")
if ENV_IDS["ft-compact"] not in _gym.registry:
    _gym.register(id=ENV_IDS["ft-compact"], entry_point="kdistill_unimal.compact:CompactUnimalEnv")
for _task in ("vt", "obstacle"):
    if ENV_IDS[_task] not in _gym.registry:
        _gym.register(id=ENV_IDS[_task], entry_point="kdistill_unimal.env:UnimalEnv", kwargs={"task": _task})
