"""The UNIMAL locomotion tasks as a Gymnasium environment: flat terrain (``ft``), variable terrain (``vt``) and
obstacles (``obstacle``), chosen with ``task=``.

``UnimalEnv(robot="NAME")`` plays one robot; ``UnimalEnv(robot=[names...], sampler=S)`` plays several
and picks the robot of each episode at reset with ``S.sample(rng)`` (uniform if no sampler is given).
Each robot is compiled once per process and reused across resets.

Task (reference, flat terrain): reward = x-velocity of the torso body origin over the 0.02 s control
step; the episode terminates when the torso height above the floor falls to half the robot's
original height or below; 1000 steps end it as truncated; reset adds U(-0.005, 0.005) to every
qpos and qvel entry. Actions have 24 slots (2 joint slots x 12 limbs); padded slots are ignored and
MuJoCo clamps controls to [-1, 1]. A step on which MuJoCo warns (NaN, divergence, full arena) ends
the episode as terminated with ``info["unstable"] = True`` and reward 0.

Terrain tasks (kdistill_unimal.terrain, docs/terrain.md): the same, on a height field redrawn at every reset;
the observation adds ``extero``, the 1410 terrain heights around the torso relative to the ground under it; the
torso height is measured above the ground under it, the fall threshold is 0.3 (``vt``) or 0.5 (``obstacle``) of
the original height, and coming within 1 m of the corridor's side also terminates.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np

from kdistill.errors import DataError, KdistillError, MissingDataError, UnknownNameError, closest, unknown_name
from kdistill_unimal import features as F
from kdistill_unimal.arena import assemble
from kdistill_unimal.data import find_robot_set, list_splits
from kdistill_unimal.robot import Robot, Sim, read_metadata
from kdistill_unimal.terrain import HFIELD_OBS_SIZE
from kdistill_unimal.terrain import TASKS as TERRAINS

MAX_EPISODE_STEPS = 1000
STAND_HEIGHT_RATIO = 0.5  # ft: falling below this fraction of the original height ends the episode
RESET_NOISE = 0.005
TASKS = ("ft", *TERRAINS)  # the paper's three environments


def check_task(task: str) -> str:
    if task not in TASKS:
        raise unknown_name("UNIMAL task", str(task), TASKS)
    return task


def stand_height_ratio(task: str) -> float:
    return STAND_HEIGHT_RATIO if task == "ft" else TERRAINS[task].stand_height_ratio

_robots: dict[tuple[str, str], Robot] = {}
_robots_lock = threading.Lock()


class RobotLibrary:
    """The robots of one data folder, plus any folders of robot files added with ``add_folder``; each robot
    is compiled on first use and cached for the process.

    With ``allow_missing=True`` a missing robot set is not an error (the library then holds only the robots of
    the folders added to it).
    """

    def __init__(self, data_dir: str | Path | None = None, allow_missing: bool = False):
        try:
            self.root: Path | None = find_robot_set(data_dir).resolve()
        except MissingDataError:
            if not allow_missing:
                raise
            self.root = None
        self.splits = list_splits(self.root) if self.root is not None else {}
        self._where: dict[str, str] = {}
        self._files: dict[str, tuple[Path, Path]] = {}  # robots from added folders: (xml, metadata)
        self.folders: list[Path] = []
        for split, names in self.splits.items():
            for name in names:
                self._where.setdefault(name, split)

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def add_folder(self, folder: str | Path) -> list[str]:
        """Add a folder of robot files; returns its robot names (sorted). Nothing is compiled here.

        The folder holds ``xml/NAME.xml`` with ``metadata/NAME.json``, or ``NAME.xml`` files with their metadata
        beside them (``NAME.json``) or in ``metadata/``. A name that is already known with other files is an error.
        """
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise DataError(f"--robots-dir {folder}: no such folder; pass a folder of UNIMAL robot files "
                            f"(NAME.xml with metadata NAME.json).")
        xml_dir = folder / "xml" if (folder / "xml").is_dir() else folder
        meta_dir = folder / "metadata" if (folder / "metadata").is_dir() else xml_dir
        try:
            names = sorted(e.name[:-4] for e in os.scandir(xml_dir)
                           if e.name.endswith(".xml") and not e.name.startswith(".") and e.is_file())
        except OSError as exc:
            raise DataError(f"cannot list the robots in {xml_dir} ({exc.strerror}); fix its permissions.") from None
        if not names:
            raise DataError(f"--robots-dir {folder} holds no UNIMAL robot files (NAME.xml, with NAME.json beside it "
                            f"or in metadata/, or xml/ and metadata/ folders).")
        resolved = folder.resolve()
        for name in names:
            files = (xml_dir / f"{name}.xml", meta_dir / f"{name}.json")
            if name in self._where:
                old = self.paths(name)
                if all(_same_bytes(a, b) for a, b in zip(old, files)):
                    continue
                raise DataError(f"robot {name!r} of {folder} is also in {self._where[name]} with different files; "
                                f"rename one of them (task names must be unique).")
            self._where[name] = str(resolved)
            self._files[name] = files
        if resolved not in self.folders:
            self.folders.append(resolved)
        return names

    def split_of(self, name: str) -> str:
        if name not in self._where:
            guess = closest(str(name), self._where)
            hint = f" Did you mean {guess!r}?" if guess else ""
            where = [f"{self.root}/{{{','.join(self.splits)}}}/xml"] if self.root is not None else []
            where += [str(f) for f in self.folders]
            raise UnknownNameError(f"unknown UNIMAL robot {name!r}.{hint} The robots are the .xml files in "
                                   f"{' and '.join(where) or 'no folder'} ({len(self._where)} robots).")
        return self._where[name]

    def paths(self, name: str) -> tuple[Path, Path]:
        split = self.split_of(name)
        if name in self._files:
            return self._files[name]
        return self.root / split / "xml" / f"{name}.xml", self.root / split / "metadata" / f"{name}.json"

    def get(self, name: str, task: str = "ft") -> Robot:
        """The robot compiled in the arena of ``task`` (once per process and task)."""
        xml, meta = self.paths(name)
        key = (str(xml), name, task)
        robot = _robots.get(key)
        if robot is None:
            with _robots_lock:
                robot = _robots.get(key)
                if robot is None:
                    robot = Robot(assemble(xml, read_metadata(meta, name), name=name, task=task))
                    _robots[key] = robot
        return robot


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


class _Uniform:
    def __init__(self, tasks: Sequence[str]):
        self.tasks = list(tasks)

    def sample(self, rng: np.random.Generator, slot: int | None = None) -> str:
        return self.tasks[int(rng.integers(len(self.tasks)))]


def observation_space(task: str = "ft") -> gym.spaces.Dict:
    T, A = F.MAX_LIMBS, F.JOINT_SLOTS
    spaces = {
        "obs": gym.spaces.Box(-np.inf, np.inf, (T, F.OBS_FEATURES), np.float32),
        "obs_mask": gym.spaces.Box(0, 1, (T,), np.bool_),
        "act_mask": gym.spaces.Box(0, 1, (T * A,), np.bool_),
        "context": gym.spaces.Box(-np.inf, np.inf, (T, F.CONTEXT_FEATURES), np.float32),
    }
    if task != "ft":
        spaces["extero"] = gym.spaces.Box(-np.inf, np.inf, (HFIELD_OBS_SIZE,), np.float32)
    return gym.spaces.Dict(spaces)


def action_space() -> gym.spaces.Box:
    return gym.spaces.Box(-1.0, 1.0, (F.MAX_LIMBS * F.JOINT_SLOTS,), np.float32)


class UnimalEnv(gym.Env):
    """Locomotion (``task`` ft, vt or obstacle) for one UNIMAL robot, or several switched at reset."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, robot: str | Sequence[str], data_dir: str | Path | None = None, sampler=None,
                 max_episode_steps: int = MAX_EPISODE_STEPS, render_mode: str | None = None,
                 library: RobotLibrary | None = None, task: str = "ft"):
        self.task = check_task(task)
        self.library = library or RobotLibrary(data_dir)
        names = [robot] if isinstance(robot, str) else list(robot)
        if not names:
            raise ValueError("robot must name at least one UNIMAL robot")
        self.robots = [self.library.get(n, task) for n in names]  # compiles (and validates) every robot now
        self._by_name = {r.name: r for r in self.robots}
        self.sampler = sampler or _Uniform(names)
        self.max_episode_steps = int(max_episode_steps)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = observation_space(task)
        self.action_space = action_space()
        self._terrain = task != "ft"
        self._hfield_stale = False
        self._sims: dict[str, Sim] = {}
        self.sim: Sim | None = None
        self._steps = 0
        self._renderer = None

    # task ------------------------------------------------------------------------------------------------
    @property
    def robot(self) -> Robot:
        return (self.sim.robot if self.sim is not None else self.robots[0])

    def _switch(self, name: str) -> None:
        if name not in self._by_name:
            raise unknown_name("UNIMAL robot of this env", name, self._by_name)
        sim = self._sims.get(name)
        if sim is None:
            sim = self._sims[name] = self._by_name[name].new_sim()
        self.sim = sim
        self._fall_height = stand_height_ratio(self.task) * sim.robot.orig_height

    def _observation(self) -> dict[str, np.ndarray]:
        r = self.sim.robot
        out = {"obs": self.sim.observe(), "obs_mask": r.obs_mask.copy(), "act_mask": r.act_mask.copy(),
               "context": r.context.copy()}
        if self._terrain:
            out["extero"] = self.sim.observe_hfield()
        return out

    # gymnasium API -------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        name = (options or {}).get("robot")
        if name is None:
            name = self.robots[0].name if len(self.robots) == 1 else self.sampler.sample(self.np_random)
        self._switch(name)
        self.sim.reset(self.np_random, RESET_NOISE)
        self._hfield_stale = True
        self._steps = 0
        return self._observation(), {"task": name}

    def step(self, action):
        if self.sim is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        sim = self.sim
        reward, unstable = sim.step(np.asarray(action).reshape(-1))
        self._steps += 1
        info = {"task": sim.robot.name}
        obs = self._observation()
        if unstable:
            info["unstable"] = True
            for key in ("obs", "extero"):
                if key in obs:
                    obs[key] = np.nan_to_num(obs[key], nan=0.0, posinf=0.0, neginf=0.0)
            return obs, 0.0, True, False, info
        terminated = bool(sim.torso_height() <= self._fall_height or (self._terrain and sim.near_edge()))
        truncated = (not terminated) and self._steps >= self.max_episode_steps
        return obs, float(reward), terminated, truncated, info

    def render(self):
        if self.render_mode != "rgb_array" or self.sim is None:
            return None
        import mujoco

        if self._renderer is None or self._renderer_model is not self.sim.model:
            self.close()
            try:
                self._renderer = mujoco.Renderer(self.sim.model, 360, 480)
            except Exception as exc:  # no OpenGL context: MuJoCo raises its own FatalError, or others
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise KdistillError(
                    f"offscreen rendering needs OpenGL (MUJOCO_GL={os.environ.get('MUJOCO_GL', 'unset')}): install "
                    f"EGL (Debian: apt-get install libegl1 libegl-mesa0) or OSMesa (libosmesa6, with "
                    f"MUJOCO_GL=osmesa) and start a new process. MuJoCo said: {first}") from None
            self._renderer_model = self.sim.model
            self._camera = mujoco.MjvCamera()
            self._camera.type = mujoco.mjtCamera.mjCAMERA_TRACKING
            self._camera.trackbodyid = 1
            self._camera.distance, self._camera.elevation, self._camera.azimuth = 4.0, -20.0, 90.0
        if self._terrain and self._hfield_stale:
            # the renderer copies the height field when it is made; a reset redrew it since (tests/test_render.py)
            mujoco.mjr_uploadHField(self.sim.model, self._renderer._mjr_context, 0)
            self._hfield_stale = False
        self._renderer.update_scene(self.sim.data, self._camera)
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
