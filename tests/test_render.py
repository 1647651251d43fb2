"""Videos of policies (``kdistill render``, ``kdistill.render``): offscreen frames, side by side, GIF and MP4; on
variable terrain, frames that show each episode's own ground.

Rendering needs a headless OpenGL backend (EGL or OSMesa); ``.ci/run`` installs one, so in CI these tests run and
never skip."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from kdistill.cli.app import app
from kdistill.errors import KdistillError
from kdistill.loading import load_policy
from kdistill.render import render_side_by_side, rollout_frames, write_video
from kdistill_unimal.domain import UnimalDomain
from student_run import write_student_run

SMALL = "floor-5506-3-10-01-14-19-06"
TEACHER = UnimalDomain().pretrained_teacher()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def domain(unimal_dir):
    d = UnimalDomain(data_dir=unimal_dir)
    try:
        env = d.make_env(SMALL, render_mode="rgb_array")
        env.reset(seed=0)
        env.render()
        env.close()
    except KdistillError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"rendering must work in CI: {exc}")
        pytest.skip(str(exc))
    return d


def test_rollout_frames_show_the_robot_moving(domain):
    teacher = load_policy(TEACHER, domain="unimal")
    run = rollout_frames(domain, teacher, SMALL, steps=30, seed=0, every=3)
    frames = run["frames"]
    n = run["length"]
    assert 0 < n <= 30 and (run["ended"] or n == 30)
    assert len(frames) == 1 + len([t for t in range(1, n + 1) if t % 3 == 0 or t == n])
    assert all(f.shape == (360, 480, 3) and f.dtype == np.uint8 for f in frames)
    robot = [(f[..., 0].astype(int) > f[..., 2].astype(int) + 40).mean() for f in frames]  # orange on blue-grey
    assert all(0.002 < r < 0.5 for r in robot)
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 1  # the picture changes


def test_side_by_side_gif_of_teacher_and_student(domain, tmp_path):
    import imageio.v2 as iio

    write_student_run(tmp_path / "hn", domain.layout, "unimal")
    policies = {"teacher": load_policy(TEACHER, domain="unimal"), "student": load_policy(tmp_path / "hn", domain="unimal")}
    result = render_side_by_side(domain, policies, SMALL, tmp_path / "clip.gif", steps=16, every=4, fps=12.5)
    assert set(result["policies"]) == {"teacher", "student"}
    data = (tmp_path / "clip.gif").read_bytes()
    assert data[:6] == b"GIF89a"
    frames = iio.mimread(tmp_path / "clip.gif")
    assert len(frames) == len(result["frames"]) >= 2
    h, w = frames[0].shape[:2]
    assert w == 2 * 480 and h == 360 + 22  # two views, each under a label strip
    assert not np.array_equal(frames[0][:, :480], frames[0][:, 480:])  # two different policies' labels at least
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_render_command_mp4_and_refusals(domain, unimal_dir, tmp_path):
    out = tmp_path / "walk.mp4"
    args = ["render", "unimal", "--policy", str(TEACHER), "--robot", SMALL, "--out", str(out), "--steps", "12",
            "--data-dir", str(unimal_dir)]
    res = CliRunner().invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["task"] == SMALL and 2 <= doc["frames"] <= 7 and doc["width"] == 480 and set(doc["policies"]) == {"teacher"}
    assert out.read_bytes()[4:8] == b"ftyp" and doc["bytes"] == out.stat().st_size > 1000
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, KdistillError) and "--overwrite" in str(res.exception)
    res = CliRunner().invoke(app, args[:-4] + ["--out", str(tmp_path / "walk.avi")])
    assert isinstance(res.exception, KdistillError) and ".gif or .mp4" in str(res.exception)
    with pytest.raises(KdistillError, match="no frames"):
        write_video([], tmp_path / "x.gif")


def _frame_ahead(env, seed: int) -> np.ndarray:
    """A frame after ``reset(seed)`` with the robot lifted 8 m along the corridor, so that the random terrain past the
    flat start fills the tracking camera's view (the pose is the same for every seed, up to the reset noise)."""
    import mujoco

    env.reset(seed=seed)
    sim = env.unwrapped.sim
    sim.data.qpos[0] += 8.0
    sim.data.qpos[2] += 1.5
    mujoco.mj_forward(sim.model, sim.data)
    return env.render()


def _ground_differs(a: np.ndarray, b: np.ndarray) -> float:
    """Share of the pixels, away from the robot (orange) in either frame, whose colour differs clearly."""
    robot = [(f[..., 0].astype(int) > f[..., 2].astype(int) + 40) for f in (a, b)]
    ground = ~(robot[0] | robot[1])
    changed = np.abs(a.astype(int) - b.astype(int)).max(-1) > 30
    return float(changed[ground].mean())


def test_terrain_is_drawn_and_redrawn_every_episode(domain, unimal_dir):
    """On vt each reset draws a new corridor into the height field; the frame must show the current one (the renderer
    keeps its own copy of the height field, so a stale copy would show the previous episode's ground)."""
    vt = UnimalDomain(data_dir=unimal_dir, task_kind="vt")
    env, fresh, flat = (vt.make_env(SMALL, render_mode="rgb_array"), vt.make_env(SMALL, render_mode="rgb_array"),
                        domain.make_env(SMALL, render_mode="rgb_array"))
    try:
        first = _frame_ahead(env, 0)
        second = _frame_ahead(env, 1)  # the same renderer, after a reset drew another corridor
        again = _frame_ahead(env, 0)
        new = _frame_ahead(fresh, 1)  # a renderer made after the seed-1 corridor was drawn
        on_flat = _frame_ahead(flat, 0)
    finally:
        for e in (env, fresh, flat):
            e.close()
    assert _ground_differs(first, second) > 0.02  # another episode, other terrain in view
    assert _ground_differs(second, new) < 0.002  # the reused renderer shows this episode's terrain, not the last one's
    assert _ground_differs(first, again) < 0.002  # the same seed draws the same terrain
    assert _ground_differs(first, on_flat) > 0.05  # the flat task's floor in the same pose looks otherwise
