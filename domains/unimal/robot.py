"""A compiled UNIMAL robot and one running simulation of it.

``Robot`` holds what never changes for a robot: its MjModel (compiled once per process and shared by
all simulations of the robot), the model part of its 52-feature observation, its 53-feature context,
its masks, and the index arrays the observation builder needs. ``Sim`` is one MjData stepping that
model; it builds observations with a handful of vectorised numpy operations.

Observation timing follows the reference (mujoco-py): observations and reward are read straight after
the 4 ``mj_step`` calls, without another ``mj_forward``. So positions, orientations and Jacobians are
those of the start of the last substep, while ``qpos``/``qvel`` are the integrated values. Body
velocities are the body Jacobian at the body origin times the current ``qvel``: ``mj_comVel`` on the
current ``qvel`` (it reuses the stored ``cdof``) followed by a shift from the subtree centre of mass
to each body origin. ``d.cvel`` as left by ``mj_step`` would be one substep old.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path

import mujoco
import numpy as np

from kdistill.errors import CheckpointError, DataError
from kdistill_unimal import features as F
from kdistill_unimal.arena import FLOOR_TOP, RobotXml
from kdistill_unimal.terrain import TASKS as TERRAINS
from kdistill_unimal.terrain import Terrain

log = logging.getLogger("kdistill_unimal")

FRAME_SKIP = 4
CONTROL_DT = 0.005 * FRAME_SKIP

_install_lock = threading.Lock()
_warning_handler_installed = False


_warnings_seen: dict[str, int] = {}


def _mujoco_warning(msg: str) -> None:
    # An exploding robot warns on every step it is stepped; the env already ends such an episode and reports
    # it (info["unstable"]), so each kind of warning is logged once per process and the rest only counted.
    kind = msg.split(" Time = ")[0]
    count = _warnings_seen.get(kind, 0)
    _warnings_seen[kind] = count + 1
    if count == 0:
        log.warning("MuJoCo: %s (repeats of this warning are not shown)", msg)


def mujoco_warning_counts() -> dict[str, int]:
    """How often each kind of MuJoCo warning was raised in this process."""
    return dict(_warnings_seen)


def _route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to Python logging instead of stdout and a MUJOCO_LOG.TXT in the cwd.

    Only if nobody installed a handler already. Instability is detected from ``d.warning`` anyway.
    """
    global _warning_handler_installed
    with _install_lock:
        if _warning_handler_installed:
            return
        _warning_handler_installed = True
        if mujoco.get_mju_user_warning() is None:
            mujoco.set_mju_user_warning(_mujoco_warning)


def read_metadata(path: Path, name: str) -> dict:
    try:
        meta = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"robot {name!r} has no metadata file {path}; re-install the robots with `kdistill data fetch unimal`.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"the metadata file {path} of robot {name!r} is not valid JSON ({exc}); "
                        "re-install the robots with `kdistill data fetch unimal`.") from None
    if not isinstance(meta, dict):
        raise DataError(f"the metadata file {path} of robot {name!r} is not a JSON object; re-install the robots with `kdistill data fetch unimal`.")
    return meta


class Robot:
    """One UNIMAL robot in the flat-terrain arena (read-only once built; safe to share between threads)."""

    def __init__(self, spec: RobotXml):
        try:
            self._build(spec)
        except DataError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as exc:
            raise DataError(f"robot {spec.name!r} is not a UNIMAL robot ({type(exc).__name__}: {exc}); re-install the "
                            "robots with `kdistill data fetch unimal`.") from None

    def _build(self, spec: RobotXml) -> None:
        _route_mujoco_warnings()
        self.name = spec.name
        self.spec = spec
        self.task = spec.task
        try:
            self.model = mujoco.MjModel.from_xml_string(spec.arena_xml)
        except Exception as exc:  # MuJoCo reports compile errors as ValueError, and fatal ones as its own types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"robot {spec.name!r} does not compile in MuJoCo: {first}") from None
        m = self.model
        nb = m.nbody - 1  # agent bodies: all but the world body, in MuJoCo (pre-order DFS) order
        self.num_bodies = nb
        self.num_limbs = spec.num_limbs
        self.dof = m.nv - 6
        self.nu = m.nu
        self.orig_height = spec.orig_height
        if nb != spec.num_limbs + 1 or m.jnt_type[0] != mujoco.mjtJoint.mjJNT_FREE or m.nq != 7 + self.dof \
                or np.any(m.jnt_type[1:] != mujoco.mjtJoint.mjJNT_HINGE):
            raise DataError(f"robot {spec.name!r} is not a UNIMAL robot (a free torso joint and hinge limb joints); "
                            "re-install the robots with `kdistill data fetch unimal`.")

        # joint slots: which (limb row, slot) each hinge joint fills
        joint_body = m.jnt_bodyid[1:] - 1
        joint_slot = np.array([0 if m.joint(j).name.startswith("limbx") else 1 for j in range(1, m.njnt)], dtype=np.int64)
        self.joint_row, self.joint_slot = joint_body, joint_slot
        slot_index = 2 * joint_body + joint_slot  # position in the 24 action slots
        if len(np.unique(slot_index)) != len(slot_index):
            raise DataError(f"robot {spec.name!r} has two joints in the same limb slot; it is not a UNIMAL robot.")

        # actuators: each motor drives one hinge joint; ctrl[a] comes from the action slot of its joint
        joint_of_actuator = m.actuator_trnid[:, 0] - 1
        self.ctrl_index = slot_index[joint_of_actuator].astype(np.int64)
        gear_of_joint = np.zeros(self.dof)
        gear_of_joint[joint_of_actuator] = m.actuator_gear[:, 0]

        self.obs_mask = np.ones(F.MAX_LIMBS, dtype=bool)
        self.obs_mask[:nb] = False
        self.act_mask = np.ones(F.MAX_LIMBS * F.JOINT_SLOTS, dtype=bool)
        self.act_mask[slot_index] = False

        # model features of the teacher observation
        bodies = np.arange(1, nb + 1)
        geoms = np.array([m.body_geomadr[b] for b in bodies])
        obs = np.zeros((F.MAX_LIMBS, F.OBS_FEATURES))
        obs[:nb, F.BODY_POS] = m.body_pos[bodies]
        obs[:nb, F.BODY_IPOS] = m.body_ipos[bodies]
        obs[:nb, F.BODY_IQUAT] = m.body_iquat[bodies]
        obs[:nb, F.GEOM_QUAT] = m.geom_quat[geoms]
        obs[:nb, F.BODY_MASS] = m.body_mass[bodies]
        obs[:nb, F.BODY_SHAPE] = m.geom_size[geoms, :2]
        jrange = m.jnt_range[1:]
        base = F.LIMB_FEATURES + F.JOINT_FEATURES * joint_slot
        for j in range(self.dof):
            row, col = joint_body[j], base[j]
            obs[row, col + F.J_POS.start: col + F.J_POS.stop] = m.jnt_pos[j + 1]
            obs[row, col + F.J_RANGE.start: col + F.J_RANGE.stop] = jrange[j]
            obs[row, col + F.J_AXIS.start: col + F.J_AXIS.stop] = m.jnt_axis[j + 1]
            obs[row, col + F.J_GEAR] = gear_of_joint[j]
        self.obs_template = obs
        # flat positions of the per-step joint features in the (12, 52) observation
        self.qpos_flat = (joint_body * F.OBS_FEATURES + base + F.J_QPOS).astype(np.int64)
        self.qvel_flat = (joint_body * F.OBS_FEATURES + base + F.J_QVEL).astype(np.int64)
        self.qpos_low = jrange[:, 0].copy()
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            self.qpos_inv_span = 1.0 / (jrange[:, 1] - jrange[:, 0])

        self.context = self._context(bodies, geoms, joint_body, joint_slot, gear_of_joint).astype(np.float32)
        if not (np.isfinite(self.obs_template).all() and np.isfinite(self.context).all()
                and np.isfinite(self.qpos_inv_span).all() and math.isfinite(self.orig_height)):
            raise DataError(f"robot {spec.name!r} has non-finite or degenerate values (e.g. a joint range of zero "
                            "width); re-install the robots with `kdistill data fetch unimal`.")
        # constant per robot and shared by all its simulations: read-only
        for arr in (self.obs_mask, self.act_mask, self.context):
            arr.flags.writeable = False

    def _context(self, bodies, geoms, joint_body, joint_slot, gear_of_joint) -> np.ndarray:
        m, nb = self.model, self.num_bodies
        ctx = np.zeros((F.MAX_LIMBS, F.CONTEXT_FEATURES))
        body_pos = m.body_pos[bodies]
        absolute = body_pos.copy()
        for i, b in enumerate(bodies[1:], start=1):  # parents come first in body order
            absolute[i] += absolute[m.body_parentid[b] - 1]
        ctx[:nb, F.C_ABS_POS] = absolute
        ctx[:nb, F.C_ABS_IPOS] = absolute + m.body_ipos[bodies]
        ctx[:nb, F.C_IQUAT] = F.range_normalise(m.body_iquat[bodies], F.BODY_IQUAT_RANGE)
        ctx[:nb, F.C_MASS] = F.range_normalise(m.body_mass[bodies][:, None], F.BODY_MASS_RANGE)[:, 0]
        ctx[:nb, F.C_SHAPE] = F.range_normalise(m.geom_size[geoms, :2], F.BODY_SHAPE_RANGE)
        onehot_range = F.nearest_onehot(np.degrees(m.jnt_range[1:]), F.JOINT_ANGLES)
        axis = F.range_normalise(m.jnt_axis[1:], F.JOINT_AXIS_RANGE)
        onehot_gear = F.nearest_onehot(gear_of_joint[:, None], F.GEARS[:, None])
        for j in range(self.dof):
            col = F.CONTEXT_LIMB_FEATURES + F.CONTEXT_JOINT_FEATURES * joint_slot[j]
            row = ctx[joint_body[j], col: col + F.CONTEXT_JOINT_FEATURES]
            row[F.CJ_RANGE] = onehot_range[j]
            row[F.CJ_AXIS] = axis[j]
            row[F.CJ_GEAR] = onehot_gear[j]
        return ctx

    def new_sim(self) -> "Sim":
        return Sim(self) if self.task == "ft" else TerrainSim(self)

    def __repr__(self) -> str:
        task = "" if self.task == "ft" else f", task={self.task!r}"
        return f"Robot({self.name!r}, limbs={self.num_limbs}, dof={self.dof}{task})"


_CROSS_A = np.array([1, 2, 0, 2, 0, 1])
_CROSS_B = np.array([5, 3, 4, 4, 5, 3])


class Sim:
    """One simulation of a robot: reset, step and observe (not thread-safe; one thread at a time)."""

    def __init__(self, robot: Robot, model: mujoco.MjModel | None = None):
        self.robot = robot
        self.model = robot.model if model is None else model
        self.data = d = mujoco.MjData(self.model)
        self.warnings = d.warning.number  # a live view of MuJoCo's warning counters
        nb = robot.num_bodies
        self._obs = o = robot.obs_template.copy()
        self._obs_flat = o.reshape(-1)
        # Views made once: MjData's arrays never move, and a ready view is much cheaper to write than a
        # fresh slice on every step.
        self._xpos, self._xquat = d.xpos[1:], d.xquat[1:]
        self._torso = d.xpos[1]
        self._rot, self._lin = d.cvel[1:, :3], d.cvel[1:, 3:]
        self._com = d.subtree_com[1]
        self._qpos, self._qvel = d.qpos[7:], d.qvel[6:]
        self._pair = np.empty((nb, 6))  # [origin - com | angular velocity], for the cross product
        self._pair_off, self._pair_rot = self._pair[:, :3], self._pair[:, 3:]
        self._o_xpos, self._o_x = o[:nb, 0:3], o[:nb, 0]
        self._o_vel, self._o_rot, self._o_quat = o[:nb, 3:6], o[:nb, 6:9], o[:nb, 9:13]

    def reset(self, rng: np.random.Generator, noise: float = 0.005) -> None:
        """Back to the initial pose plus U(-noise, noise) on every qpos and qvel entry (quaternion too)."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[:] = m.qpos0 + rng.uniform(-noise, noise, m.nq)
        d.qvel[:] = rng.uniform(-noise, noise, m.nv)
        mujoco.mj_forward(m, d)

    def step(self, action: np.ndarray) -> tuple[float, bool]:
        """Apply the 24-slot action (padded slots ignored) for 4 substeps; (x-velocity reward, unstable)."""
        d = self.data
        x_before = d.xpos[1, 0]
        d.ctrl[:] = action[self.robot.ctrl_index]
        mujoco.mj_step(self.model, d, FRAME_SKIP)
        reward = float(d.xpos[1, 0] - x_before) / CONTROL_DT
        unstable = bool(self.warnings.any()) or not math.isfinite(reward)
        return reward, unstable

    # a running episode, saved and restored: MuJoCo's integration state (time, qpos, qvel, act, warm start, ctrl, ...)
    # and the kinematics the last substep left behind, which the reward and observations read (stale by one
    # substep, so not recomputable from the state)
    _STATE = int(mujoco.mjtState.mjSTATE_INTEGRATION)
    _KINEMATICS = ("xpos", "xquat", "xmat", "cdof", "cvel", "subtree_com")

    def state_size(self) -> int:
        d = self.data
        return mujoco.mj_stateSize(self.model, self._STATE) + sum(getattr(d, k).size for k in self._KINEMATICS)

    def get_state(self) -> np.ndarray:
        """The running episode as one float64 vector of ``state_size()``."""
        m, d = self.model, self.data
        integration = np.empty(mujoco.mj_stateSize(m, self._STATE))
        mujoco.mj_getState(m, d, integration, self._STATE)
        return np.concatenate([integration] + [getattr(d, k).ravel() for k in self._KINEMATICS])

    def set_state(self, state: np.ndarray) -> None:
        """Continue the episode ``get_state`` saved (from a simulation of the same robot)."""
        m, d = self.model, self.data
        state = np.asarray(state, np.float64)
        size = Sim.state_size(self)
        if state.shape != (size,):
            raise CheckpointError(f"a saved episode of {state.size} values does not fit robot {self.robot.name!r} "
                                  f"({size}); it was saved from another robot or MuJoCo version.")
        n = mujoco.mj_stateSize(m, self._STATE)
        mujoco.mj_setState(m, d, np.ascontiguousarray(state[:n]), self._STATE)
        for k in self._KINEMATICS:
            target = getattr(d, k)
            target[...] = state[n:n + target.size].reshape(target.shape)
            n += target.size

    def torso_height(self) -> float:
        return self._torso[2] - FLOOR_TOP

    def observe(self) -> np.ndarray:
        """The (12, 52) teacher observation (float32, a new array)."""
        r = self.robot
        mujoco.mj_comVel(self.model, self.data)  # cvel from the current qvel and the stored (start-of-substep) cdof
        xpos = self._xpos
        self._pair_off[...] = xpos
        self._pair_off -= self._com
        self._pair_rot[...] = self._rot
        pair = self._pair
        prod = pair[:, _CROSS_A] * pair[:, _CROSS_B]
        vel = self._o_vel
        vel[...] = self._lin
        vel -= prod[:, :3]  # v(origin) = v(com) - (origin - com) x w
        vel += prod[:, 3:]
        self._o_rot[...] = self._rot
        self._o_xpos[...] = xpos
        self._o_x -= self._torso[0]
        self._o_quat[...] = self._xquat
        flat = self._obs_flat
        flat[r.qpos_flat] = (self._qpos - r.qpos_low) * r.qpos_inv_span
        flat[r.qvel_flat] = self._qvel
        return self._obs.astype(np.float32)


class TerrainSim(Sim):
    """A simulation on a terrain task (``vt``, ``obstacle``): it owns a copy of its robot's model, whose height
    field it redraws at every reset from the reset's random generator (before the reset noise), so the same seed
    gives the same terrain and nothing is recompiled."""

    def __init__(self, robot: Robot):
        self.terrain = Terrain(TERRAINS[robot.task], robot.model)
        super().__init__(robot, model=self.terrain.model)
        self._xmat = self.data.xmat[1]
        self._fresh = True

    def reset(self, rng: np.random.Generator, noise: float = 0.005) -> None:
        self.terrain.regenerate(rng)
        super().reset(rng, noise)
        self._fresh = True

    def step(self, action: np.ndarray) -> tuple[float, bool]:
        self._fresh = False
        return super().step(action)

    # the height field is not part of the state: the vector env redraws it from the episode's generator first
    def state_size(self) -> int:
        return super().state_size() + 1

    def get_state(self) -> np.ndarray:
        return np.append(super().get_state(), float(self._fresh))

    def set_state(self, state: np.ndarray) -> None:
        state = np.asarray(state, np.float64)
        if state.shape != (self.state_size(),):
            raise CheckpointError(f"a saved episode of {state.size} values does not fit robot {self.robot.name!r} on "
                                  f"{self.robot.task} ({self.state_size()}); it was saved from another robot or task.")
        super().set_state(state[:-1])
        self._fresh = bool(state[-1])

    def torso_height(self) -> float:
        """Above the map cell under the torso; a gap counts as height 0 (reference UnimalHeightObs)."""
        x, y, z = self._torso.tolist()  # Python floats: math on NumPy scalars is several times slower
        return z - max(0.0, self.terrain.height_at(x, y))

    def near_edge(self) -> bool:
        return self.terrain.task.near_edge(float(self._torso[1]))

    def observe_hfield(self) -> np.ndarray:
        """The 1410 terrain heights around the torso relative to the ground under it (float32). The pattern turns
        with the torso's heading except on the first observation of an episode, as in the reference."""
        heading = None if self._fresh else math.atan2(float(self._xmat[3]), float(self._xmat[0]))
        if heading is not None and not math.isfinite(heading):  # an unstable simulation; the episode ends anyway
            heading = None
        x, y = self._torso[:2].tolist()
        return self.terrain.observe(x, y, heading)
