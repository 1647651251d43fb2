"""The UNIMAL terrain tasks (vt, obstacle): terrain redrawn in place each episode, the height-field observation
checked against an independent computation, edge termination, fall rules, reproducible obstacles, the vector env,
the layout, and the CLI's --task."""

from __future__ import annotations

import json
import math

import mujoco
import numpy as np
import pytest
from click.testing import CliRunner

from kdistill.cli.app import app
from kdistill.domain import Layout
from kdistill.errors import UnknownNameError
from kdistill_unimal import terrain as T
from kdistill_unimal.domain import LAYOUT, UnimalDomain
from kdistill_unimal.env import RobotLibrary, UnimalEnv
from kdistill_unimal.vec import UnimalVecEnv

MEDIAN = "floor-1409-11-11-01-08-26-42"
SMALL = "floor-5506-3-10-01-14-19-06"


@pytest.fixture(scope="module")
def library(unimal_dir):
    return RobotLibrary(unimal_dir)


@pytest.fixture(scope="module")
def vt_env(library):
    return UnimalEnv(MEDIAN, library=library, task="vt")


# terrain per episode ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["vt", "obstacle"])
def test_terrain_redrawn_in_place_each_episode(library, task):
    env = UnimalEnv(MEDIAN, library=library, task=task)
    env.reset(seed=1)
    sim, model = env.sim, env.sim.model
    first = model.hfield_data.copy()
    env.reset(seed=2)
    assert env.sim is sim and env.sim.model is model  # the same compiled model, not a new one
    second = model.hfield_data.copy()
    assert not np.array_equal(first, second)  # a new terrain
    env.reset(seed=1)
    assert np.array_equal(model.hfield_data, first)  # same seed, same terrain
    # the episode's terrain lives in the simulation's own model: the robot's shared model is untouched
    robot_model = library.get(MEDIAN, task).model
    assert robot_model is not model and not np.shares_memory(robot_model.hfield_data, model.hfield_data)
    # a second env of the same robot plays its own terrain
    other = UnimalEnv(MEDIAN, library=library, task=task)
    other.reset(seed=2)
    assert np.array_equal(other.sim.model.hfield_data, second) and np.array_equal(model.hfield_data, first)


def test_vt_corridor_facts():
    task = T.TASKS["vt"]
    for seed in range(5):
        profile, patches = T.draw_vt(np.random.default_rng(seed), task)
        h = T.corridor_heights(task, profile, patches)
        assert h.shape == (400, 1100)  # 40 m x 110 m at 10 cells per metre
        assert np.all(h[:, :60] == 1.0)  # the 6 m flat start, x in [-3, 3)
        assert h.min() >= 1.0 - 1e-9 and h.max() <= 1.0 + 1.2 + 1e-9
        assert h.max() > 1.0  # something on it


def _world_height(model, x_cell: int, y_cell: int) -> float:
    """Ground height of the world cell [x_cell/10, ...) x [y_cell/10, ...) read from MuJoCo's height field alone:
    vertex i sits at geom_pos - size + i / 10; the cell's vertex is at its centre; outside the field: its edge."""
    g = int(np.flatnonzero(model.geom_type == mujoco.mjtGeom.mjGEOM_HFIELD)[0])
    h = int(model.geom_dataid[g])
    nrow, ncol = int(model.hfield_nrow[h]), int(model.hfield_ncol[h])
    sx, sy, sz, _ = model.hfield_size[h]
    x0 = round((model.geom_pos[g, 0] - sx) * 10 - 0.5)  # the world x cell of vertex column 0
    y0 = round((model.geom_pos[g, 1] - sy) * 10 - 0.5)
    col = min(max(x_cell - x0, 0), ncol - 1)
    row = min(max(y_cell - y0, 0), nrow - 1)
    return float(model.hfield_data[row * ncol + col]) * sz + model.geom_pos[g, 2]


def _reference_pattern():
    """Sample offsets as the reference builds them: (row offsets growing to the robot's right, column offsets
    forward), rows outer and columns inner."""
    def dense_near_zero(end):
        p = np.arange(end) / end
        q = -np.log(1 - p)
        return np.unique((q / q[-1] * end).astype(int))

    cols = np.unique(np.concatenate([-dense_near_zero(10)[::-1], dense_near_zero(40)]))  # behind 1 m, in front 4 m
    rows = np.unique(np.concatenate([-dense_near_zero(40)[::-1], dense_near_zero(40)]))  # 4 m to each side
    col, row = np.meshgrid(cols, rows)
    return row.ravel(), col.ravel()


def _expected_hfield(model, x, y, angle):
    row, col = _reference_pattern()
    if angle is not None:
        col, row = (np.around(math.cos(angle) * col + math.sin(angle) * row).astype(int),
                    np.around(-math.sin(angle) * col + math.cos(angle) * row).astype(int))
    cx, cy = math.floor(x * 10), math.floor(y * 10)
    under = _world_height(model, cx, cy)
    # a row offset to the right is a step towards -y
    return np.array([_world_height(model, cx + c, cy - r) - under for r, c in zip(row, col)])


@pytest.mark.parametrize("task", ["vt", "obstacle"])
def test_hfield_observation_by_hand(library, task):
    env = UnimalEnv(MEDIAN, library=library, task=task)
    obs, _ = env.reset(seed=3)
    d, model = env.sim.data, env.sim.model
    assert obs["extero"].shape == (1410,) and obs["extero"].dtype == np.float32
    x, y = d.xpos[1, 0], d.xpos[1, 1]
    np.testing.assert_allclose(obs["extero"], _expected_hfield(model, x, y, None), atol=1e-5)  # unturned at reset

    # turned: put the robot somewhere with relief around it, heading 35 degrees left, and step once
    yaw = math.radians(35)
    if task == "obstacle":  # 2.5 m behind the first box, in line with it (corridor cells: x = c/10 - 3, y = r/10 - 20)
        rs, cs, _ = env.sim.terrain.patches[0]
        x_to, y_to = cs.start / 10 - 3 - 2.5, (rs.start + rs.stop) / 20 - 20
    else:
        x_to, y_to = 30.0, 5.0
    d.qpos[0:2] = (x_to, y_to)
    d.qpos[3:7] = (math.cos(yaw / 2), 0, 0, math.sin(yaw / 2))
    mujoco.mj_forward(model, d)
    obs, *_ = env.step(np.zeros(24, np.float32))
    heading = math.atan2(d.xmat[1, 3], d.xmat[1, 0])
    expected = _expected_hfield(model, d.xpos[1, 0], d.xpos[1, 1], heading)
    np.testing.assert_allclose(obs["extero"], expected, atol=1e-5)
    assert np.ptp(expected) > 0.1  # the check saw relief, not a flat floor


def test_hfield_observation_reads_gaps_beyond_the_corridor(vt_env):
    vt_env.reset(seed=0)
    d = vt_env.sim.data
    d.qpos[0] = -2.5  # 0.5 m from the corridor's back end: the points behind the torso look over the edge
    mujoco.mj_forward(vt_env.sim.model, d)
    ext = vt_env.sim.observe_hfield()
    assert ext.min() == pytest.approx(T.GAP_DEPTH - 1.0, abs=1e-5)  # a gap reads -10, 11 m below the floor


# termination --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["vt", "obstacle"])
def test_edge_termination(library, task):
    env = UnimalEnv(MEDIAN, library=library, task=task)
    for y, ends in ((17.5, False), (19.2, True), (-19.2, True)):
        env.reset(seed=0)
        d = env.sim.data
        d.qpos[1] = y
        mujoco.mj_forward(env.sim.model, d)
        _, _, terminated, truncated, info = env.step(np.zeros(24, np.float32))
        assert terminated is ends and not truncated and "unstable" not in info
    ft = UnimalEnv(MEDIAN, library=library)  # flat terrain has no edge
    ft.reset(seed=0)
    ft.sim.data.qpos[1] = 19.2
    mujoco.mj_forward(ft.sim.model, ft.sim.data)
    assert not ft.step(np.zeros(24, np.float32))[2]


@pytest.mark.parametrize(("task", "ratio"), [("ft", 0.5), ("vt", 0.3), ("obstacle", 0.5)])
def test_fall_rule_per_task(library, task, ratio):
    env = UnimalEnv(MEDIAN, library=library, task=task)
    env.reset(seed=0)
    robot = env.robot
    assert env._fall_height == pytest.approx(ratio * robot.orig_height)
    if task == "ft":
        return
    # the torso height is measured above the ground under it: over an obstacle box (2 m high) or the floor
    sim = env.sim
    x, y, z = sim.data.xpos[1]
    assert sim.torso_height() == pytest.approx(z - 1.0)
    if task == "obstacle":
        rs, cs, top = sim.terrain.patches[0]
        bx, by = (cs.start - 30 + 2) / 10, (rs.start - 200 + 2) / 10  # inside the box's first cells
        sim.data.xpos[1, :2] = (bx, by)
        assert sim.torso_height() == pytest.approx(z - top)
        sim.data.xpos[1, :2] = (-3.5, 0.0)  # on the back wall
        assert sim.torso_height() == pytest.approx(z - T.WALL_TOP)
    # a gap (beyond the corridor and its walls) counts as ground at 0
    sim.data.xpos[1, :2] = (-4.5, 0.0)
    assert sim.torso_height() == pytest.approx(z)


# obstacles ------------------------------------------------------------------------------------------------

def test_obstacle_placement_reproducible_and_valid(library):
    task = T.TASKS["obstacle"]
    a = T.draw_obstacles(np.random.default_rng(7), task)[1]
    b = T.draw_obstacles(np.random.default_rng(7), task)[1]
    c = T.draw_obstacles(np.random.default_rng(8), task)[1]
    key = lambda patches: [(p[0].start, p[0].stop, p[1].start, p[1].stop) for p in patches]  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)
    assert 40 <= len(a) <= 50  # a box is dropped after 10 overlapping tries
    taken = np.zeros(task.corridor_shape, int)
    for rs, cs, top in a:
        assert top == 3.0  # 2 m above the floor
        assert 5 <= (rs.stop - rs.start) // 2 <= 10 and 5 <= (cs.stop - cs.start) // 2 <= 10  # half-sizes 0.5-1 m
        assert cs.start >= 60 and cs.stop <= 1000 - 60 and rs.start >= 0 and rs.stop <= 400  # 6 m free at the ends
        taken[rs, cs] += 1
    assert taken.max() == 1  # no overlap
    env_obstacles = [UnimalEnv(SMALL, task="obstacle", library=library) for _ in range(2)]
    for env in env_obstacles:
        env.reset(seed=11)
    assert np.array_equal(env_obstacles[0].sim.model.hfield_data, env_obstacles[1].sim.model.hfield_data)
    heights = env_obstacles[0].sim.terrain.heights()
    assert np.isclose(heights, 4.0).any()  # the boundary walls


# vector env, layout, CLI ---------------------------------------------------------------------------------

def test_vec_env_terrain(library):
    vec = UnimalVecEnv(library, [MEDIAN, SMALL], num_envs=4, seed=0, threads=1, task="vt")
    obs = vec.reset()
    assert obs["extero"].shape == (4, 1410) and obs["obs"].shape == (4, 12, 52)
    assert vec.single_observation_space["extero"].shape == (1410,)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(60):
        obs, rew, term, trunc, infos = vec.step(rng.uniform(-1, 1, (4, 24)))
        ended += int(term.sum())
        assert np.isfinite(obs["extero"]).all()
    again = UnimalVecEnv(library, [MEDIAN, SMALL], num_envs=4, seed=0, threads=1, task="vt")
    first = again.reset()
    np.testing.assert_array_equal(first["extero"], UnimalVecEnv(library, [MEDIAN, SMALL], 4, seed=0, threads=1,
                                                                task="vt").reset()["extero"])
    ft = UnimalVecEnv(library, [MEDIAN], num_envs=2, seed=0, threads=1)
    assert "extero" not in ft.reset()


def test_layouts():
    assert UnimalDomain(task_kind="vt").layout.extero_features == 1410
    assert UnimalDomain(task_kind="obstacle").layout.extero_features == 1410
    assert UnimalDomain().layout == LAYOUT and LAYOUT.extero_features == 0
    old = {k: v for k, v in LAYOUT.to_dict().items() if k != "extero_features"}  # a layout saved before the field
    assert Layout.from_dict(old) == LAYOUT
    with pytest.raises(UnknownNameError):
        UnimalDomain(task_kind="hills")


def test_env_check_kind_option(unimal_dir):
    runner = CliRunner()
    res = runner.invoke(app, ["env", "check", "unimal", "--kind", "obstacle", "--tasks", SMALL, "--steps", "30",
                              "--data-dir", str(unimal_dir), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["task_kind"] == "obstacle" and doc["passed"] == 1 and doc["tasks"][0]["task_kind"] == "obstacle"
    # --task, the option's name before --kind, still works
    bad = runner.invoke(app, ["env", "check", "unimal", "--task", "hills", "--data-dir", str(unimal_dir)])
    assert isinstance(bad.exception, UnknownNameError) and "ft, obstacle, vt" in str(bad.exception)
    flat_only = runner.invoke(app, ["env", "check", "cartpole", "--kind", "vt"])
    assert "one kind of task" in str(flat_only.exception)
