"""The per-limb feature layouts of UNIMAL observations and contexts, and their constants.

Every robot is seen as 12 limb slots in MuJoCo body order (torso first), padded with zeros. Each
limb carries two joint slots: slot 0 for its "x" joint (``limbx/N``), slot 1 for its "y" joint.

Teacher observation, 52 per limb (raw; normalised later by the core):

====== ============ ======================================================================
index  feature      definition
====== ============ ======================================================================
0-2    body_xpos    world position of the body origin, x relative to the torso
3-5    body_xvelp   world linear velocity of the body origin (body Jacobian x qvel)
6-8    body_xvelr   world angular velocity
9-12   body_xquat   world orientation (w, x, y, z)
13-15  body_pos     position in the parent frame (model)
16-18  body_ipos    centre of mass in the body frame (model)
19-22  body_iquat   inertia frame orientation (model)
23-26  geom_quat    the limb geom's orientation (model)
27     body_mass
28-29  body_shape   geom radius and half-length (sphere: radius, 0)
30/41  qpos         joint angle scaled to its range: (q - lo) / (hi - lo)
31/42  qvel         joint velocity, rad/s
32-34  jnt_pos      joint anchor (model), joint slot 0 (43-45 slot 1)
35-36  joint_range  radians (46-47)
37-39  joint_axis   (48-50)
40     gear         actuator gear (51)
====== ============ ======================================================================

The student reads ``STUDENT_FEATURES`` = body_xpos, body_xvelp, body_xvelr, body_xquat, and the two
joint slots' qpos and qvel (17 numbers).

Context, 53 per limb, constant per robot and not normalised by the core (the ranges below are the
reference's own fixed normalisation, ``x' = -1*(lo != hi) + 2 (x - lo) / (hi - lo + 1e-8)``):

====== ==================== =================================================================
index  feature              definition
====== ==================== =================================================================
0-2    absolute_body_pos    sum of body_pos from the torso down (the torso's is its spawn pos)
3-5    absolute_body_ipos   absolute_body_pos + body_ipos
6-9    body_iquat           normalised with ``BODY_IQUAT_RANGE``
10     body_mass            normalised with ``BODY_MASS_RANGE``
11-12  body_shape           normalised with ``BODY_SHAPE_RANGE``
13-25  joint_range_onehot   joint slot 0: nearest entry of ``JOINT_ANGLES`` (degrees, L2)
26-28  joint_axis           joint slot 0: normalised with ``JOINT_AXIS_RANGE``
29-32  gear_onehot          joint slot 0: nearest of ``GEARS``
33-52  (the same 20 for joint slot 1)
====== ==================== =================================================================
"""

from __future__ import annotations

import numpy as np

MAX_LIMBS = 12
JOINT_SLOTS = 2
OBS_FEATURES = 52
CONTEXT_FEATURES = 53

# teacher observation columns
XPOS, XVELP, XVELR, XQUAT = slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 13)
BODY_POS, BODY_IPOS, BODY_IQUAT, GEOM_QUAT = slice(13, 16), slice(16, 19), slice(19, 23), slice(23, 27)
BODY_MASS, BODY_SHAPE = 27, slice(28, 30)
LIMB_FEATURES = 30
JOINT_FEATURES = 11  # per joint slot: qpos, qvel, jnt_pos 3, range 2, axis 3, gear
J_QPOS, J_QVEL, J_POS, J_RANGE, J_AXIS, J_GEAR = 0, 1, slice(2, 5), slice(5, 7), slice(7, 10), 10

STUDENT_FEATURES = tuple(range(0, 13)) + (30, 31, 41, 42)

# context columns
C_ABS_POS, C_ABS_IPOS, C_IQUAT, C_MASS, C_SHAPE = slice(0, 3), slice(3, 6), slice(6, 10), 10, slice(11, 13)
CONTEXT_LIMB_FEATURES = 13
CONTEXT_JOINT_FEATURES = 20  # per joint slot: range one-hot 13, axis 3, gear one-hot 4
CJ_RANGE, CJ_AXIS, CJ_GEAR = slice(0, 13), slice(13, 16), slice(16, 20)

# The reference's fixed normalisation ranges (rows: low, high), from its Agent class.
BODY_IQUAT_RANGE = np.array([[0.70710678, -0.70710678, -0.70710678, 0.0], [1.0, 0.70710678, 0.70710678, 0.0]])
BODY_MASS_RANGE = np.array([[1.17809725], [4.1887902]])
BODY_SHAPE_RANGE = np.array([[0.05, 0.0], [0.1, 0.22627417]])
JOINT_AXIS_RANGE = np.array([[-0.5000024, -0.5000024, -1.0], [1.0, 1.0, 1.0]])

# The 13 joint ranges (degrees) every UNIMAL joint is drawn from, in the reference's one-hot order.
JOINT_ANGLES = np.array([
    [-30, 0], [0, 30], [-30, 30], [-45, 45], [-45, 0], [0, 45], [-60, 0],
    [0, 60], [-60, 60], [-90, 0], [0, 90], [-60, 30], [-30, 60],
], dtype=np.float64)
GEARS = np.array([150.0, 200.0, 250.0, 300.0])


def range_normalise(x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The reference's fixed-range scaling to [-1, 1]; a constant column (lo == hi) maps to 2x/1e-8."""
    lo, hi = bounds[0], bounds[1]
    return -1.0 * (lo != hi) + 2.0 * (x - lo) / (hi - lo + 1e-8)


def nearest_onehot(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """One-hot of the nearest row of ``table`` (L2) for each row of ``values``; ties go to the first."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    table = np.asarray(table, np.float64).reshape(len(table), -1)
    dist = ((values[:, None, :] - table[None, :, :]) ** 2).sum(-1)
    out = np.zeros((len(values), len(table)))
    out[np.arange(len(values)), dist.argmin(axis=1)] = 1.0
    return out
