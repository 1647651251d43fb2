"""The UNIMAL domain: morphology-agnostic locomotion over 202 UNIMAL robots, on flat terrain (``ft``), variable
terrain (``vt``) or among obstacles (``obstacle``): ``UnimalDomain(task_kind=...)``, ``--task`` on the command line."""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import attrs
import numpy as np

import kdistill
from kdistill.errors import KdistillError, unknown_name
from kdistill_unimal import features as F
from kdistill_unimal.terrain import HFIELD_OBS_SIZE

LAYOUT = kdistill.Layout(
    max_tokens=F.MAX_LIMBS,
    obs_features=F.OBS_FEATURES,
    student_features=F.STUDENT_FEATURES,
    context_features=F.CONTEXT_FEATURES,
    actions_per_token=F.JOINT_SLOTS,
)
# the terrain tasks add the height field around the torso (observation key "extero")
TERRAIN_LAYOUT = attrs.evolve(LAYOUT, extero_features=HFIELD_OBS_SIZE)
TASK_KINDS = ("ft", "vt", "obstacle")
DESCRIPTIONS = {
    "ft": "UNIMAL morphologies walking on flat terrain (MuJoCo); tasks are robots, context is morphology",
    "vt": "UNIMAL morphologies crossing variable terrain (slopes, steps, rugged squares; MuJoCo height field); "
          "tasks are robots, context is morphology",
    "obstacle": "UNIMAL morphologies walking among obstacles (MuJoCo height field); tasks are robots, context is "
                "morphology",
}


class UnimalDomain(kdistill.Domain):
    """UNIMAL robots on one kind of ground (``task_kind``: ft, vt, obstacle); a task is a robot name, its context
    the robot's morphology."""

    name = "unimal"
    description = DESCRIPTIONS["ft"]
    layout = LAYOUT
    default_teacher = "metamorph"
    task_kinds = TASK_KINDS
    task_kind = "ft"

    def __init__(self, data_dir: str | os.PathLike | None = None, task_kind: str | None = None, **_ignored):
        self.data_dir = data_dir
        self._library = None
        if task_kind is not None:
            if task_kind not in TASK_KINDS:
                raise unknown_name("UNIMAL task", str(task_kind), TASK_KINDS)
            self.task_kind = task_kind
            self.layout = LAYOUT if task_kind == "ft" else TERRAIN_LAYOUT
            self.description = DESCRIPTIONS[task_kind]

    # data ------------------------------------------------------------------------------------------------
    @property
    def library(self):
        """The robots of the data folder (raises a DataError naming the fetch command if there are none)."""
        if self._library is None:
            from kdistill_unimal.env import RobotLibrary

            self._library = RobotLibrary(self.data_dir)
        return self._library

    def splits(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.library.splits.items()}

    def tasks(self, split: str | None = None, names: Sequence[str] | None = None) -> list[str]:
        if names:
            for n in names:
                self.library.split_of(n)  # unknown robot -> error with the closest name
            return list(names)
        return super().tasks(split)

    def add_task_folder(self, path) -> list[str]:
        """The robots of a folder of UNIMAL files (``--robots-dir``): added to this domain's robots, each one
        validated and compiled now (one-line ``DataError`` naming the file otherwise). The shipped robot set is
        not needed for this."""
        if self._library is None:
            from kdistill_unimal.env import RobotLibrary

            self._library = RobotLibrary(self.data_dir, allow_missing=True)
        names = self._library.add_folder(path)
        for name in names:
            self._library.get(name)
        return names

    def fetch_data(self, source: str | None = None, progress=None) -> dict[str, Any]:
        """Install the robot set into the data folder from ``source`` (folder or archive), or download it."""
        from kdistill_unimal.data import default_location, install

        target, _origin = default_location(self.data_dir)
        result = install(target, source, progress)
        self._library = None
        return result

    # environments ----------------------------------------------------------------------------------------
    def make_env(self, task: str | Sequence[str], **kwargs):
        from kdistill_unimal.env import UnimalEnv

        return UnimalEnv(task, library=self.library, task=self.task_kind, **kwargs)

    def make_vec_env(self, tasks: Sequence[str], num_envs: int, seed: int = 0, sampler=None, **kwargs):
        from kdistill_unimal.vec import UnimalVecEnv

        return UnimalVecEnv(self.library, tasks, num_envs, seed=seed, sampler=sampler, task=self.task_kind, **kwargs)

    def context(self, task: str) -> kdistill.TaskContext:
        robot = self.library.get(task)
        return kdistill.TaskContext(tokens=robot.context.copy(), mask=robot.obs_mask.copy(), act_mask=robot.act_mask.copy())

    # checks ----------------------------------------------------------------------------------------------
    def check(self, tasks: Sequence[str], steps: int = 1000, progress=None, seed: int = 0) -> list[dict[str, Any]]:
        """Load each robot and run ``steps`` random-action steps (resetting when an episode ends)."""
        from kdistill_unimal.env import UnimalEnv

        rows = []
        for k, name in enumerate(tasks):
            split = self.library.split_of(name)
            row: dict[str, Any] = {"name": name, "split": split, "task_kind": self.task_kind, "ok": False, "error": None, "limbs": None,
                                   "dof": None, "steps": 0, "episodes": 0, "unstable": 0, "steps_per_s": None}
            try:
                env = UnimalEnv(name, library=self.library, task=self.task_kind)
                robot = env.robot
                row.update(limbs=robot.num_limbs, dof=robot.dof)
                rng = np.random.default_rng(seed)
                actions = rng.uniform(-1.0, 1.0, (steps, F.MAX_LIMBS * F.JOINT_SLOTS)).astype(np.float32)
                env.reset(seed=seed)
                episodes = unstable = 0
                start = time.perf_counter()
                for i in range(steps):
                    obs, reward, terminated, truncated, info = env.step(actions[i])
                    unstable += bool(info.get("unstable"))
                    if terminated or truncated:
                        episodes += 1
                        env.reset()
                elapsed = time.perf_counter() - start
                if not all(np.isfinite(obs[k]).all() for k in ("obs", "extero") if k in obs):
                    raise RuntimeError("non-finite observation")
                row.update(steps=steps, episodes=episodes, unstable=unstable,
                           steps_per_s=round(steps / elapsed, 1) if elapsed > 0 else None)
                row["ok"] = unstable == 0
                if unstable:
                    row["error"] = f"simulation went unstable {unstable} time(s)"
            except KdistillError as exc:
                row["error"] = str(exc)
            except Exception as exc:  # a check reports every failure instead of stopping at the first
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            if progress:
                progress(name, k + 1, len(tasks))
        return rows

    def describe(self) -> dict[str, Any]:
        from kdistill_unimal.data import default_location

        path, origin = default_location(self.data_dir)
        out = super().describe()
        out.update({"task_kind": self.task_kind, "task_kinds": list(self.task_kinds), "data_dir": str(path), "data_dir_from": origin})
        return out

    # kdistill demo -------------------------------------------------------------------------------------
    def pretrained_teacher(self):
        """The demo's teacher. Flat terrain: the universal PPO MetaMorph teacher (`teacher-universal-ppo`, `cpu`
        preset, all 100 training robots, started from the 10-robot `teacher-cpu10`; docs/experts.md), which beats
        `teacher-cpu10` over the 100 training and the 102 test robots; the transformer distilled from the 100
        experts (`teacher-universal`) fails on unseen robots. Variable terrain
        and obstacles: that flat teacher grown a height-field encoder (`teacher-vt-from-flat`,
        `teacher-obstacle-from-flat`), which scores 1.6-3.7x the transformers distilled from 20 robots' experts
        (`teacher-vt`, `teacher-obstacle`) on those robots and walks on some unseen ones (docs/terrain.md)."""
        from pathlib import Path

        name = {"ft": "teacher-universal-ppo", "vt": "teacher-vt-from-flat", "obstacle": "teacher-obstacle-from-flat"}.get(self.task_kind)
        if name is None:
            return None
        path = Path(__file__).resolve().parent / "pretrained" / name
        return path if (path / "latest.json").exists() else None

    def demo_defaults(self) -> dict[str, Any]:
        # The reference's 16k rows per robot (16 whole episodes) and 50 epochs on the first 10 of the shipped
        # teacher's robots: about 10 minutes on 2 cores. The bars in docs/distillation.md use 64k rows
        # (scripts/unimal_distill_64k.sh), which takes about 30; all 100 robots, scripts/universal_teacher.sh.
        return {
            "train_tasks": 10,
            "samples_per_task": 16000,
            "collect_envs": 16,
            "student": "hnmlp",
            "blind_student": "mlp",
            "student_preset": "paper",
            "distill_preset": "demo",
            "distill_epochs": 50,
            "eval_episodes": 8,
            "test_tasks": 10,
        }
