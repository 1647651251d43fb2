"""``kdistill render``: a video (.gif or .mp4) of one or several policies playing a task, rendered offscreen."""

from __future__ import annotations

import click

from kdistill.cli.options import (
    console,
    data_dir_option,
    err_console,
    json_option,
    parse_policies,
    print_json,
    progress_lines,
    task_option,
    tasks_dir_option,
)


@click.command("render")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--policy", "policy_spec", required=True,
              help="A run folder (teacher or student), or NAME=RUN pairs separated by commas to put several policies "
                   "side by side, e.g. teacher=runs/t,student=runs/h.")
@task_option("The task to play.", required=True)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Video file: FILE.gif or FILE.mp4.")
@click.option("--steps", type=click.IntRange(1), default=300, show_default=True,
              help="Control steps at most (the episode may end sooner).")
@click.option("--every", type=click.IntRange(1), default=2, show_default=True,
              help="Keep every N-th frame (the env runs at 50 steps per second).")
@click.option("--fps", type=click.FloatRange(1, 100), default=25.0, show_default=True, help="Frames per second of the video.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the episode's reset.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@json_option
@data_dir_option
@tasks_dir_option
def render_cmd(domain_name: str, policy_spec: str, task: str, out: str, steps: int, every: int, fps: float, seed: int,
               overwrite: bool, as_json: bool, data_dir: str | None, tasks_dir: str | None) -> None:
    """Play TASK of DOMAIN with a policy's mean action and write the episode as a video.

    Rendering is offscreen (UNIMAL: MuJoCo through EGL or OSMesa; on Debian `apt-get install libegl1
    libegl-mesa0`, or `libosmesa6` with MUJOCO_GL=osmesa). Several policies play the same reset side by side.

    \b
    Examples:
      kdistill render unimal --policy runs/hnmlp --task floor-5506-3-10-01-14-19-06 --out walk.gif
      kdistill render unimal --policy teacher=runs/t,student=runs/h --task my-task --tasks-dir mine --out cmp.mp4
    """
    from kdistill.loading import load_policy
    from kdistill.plugins import get_domain
    from kdistill.render import check_video_path, render_side_by_side
    from kdistill.tasks import select_tasks

    path = check_video_path(out, overwrite=overwrite)
    paths = parse_policies(policy_spec) if "=" in policy_spec else {"policy": policy_spec}
    domain = get_domain(domain_name, data_dir=data_dir)
    task = select_tasks(domain, tasks=task, tasks_dir=tasks_dir, progress=progress_lines(as_json))[0]
    policies = {name: load_policy(p, domain=domain, seed=seed) for name, p in paths.items()}
    if len(policies) == 1:
        name = next(iter(policies))
        policies = {f"{policies[name].kind}" if name == "policy" else name: policies[name]}
    with err_console.status(f"rendering {task}", spinner="dots"):
        result = render_side_by_side(domain, policies, task, path, steps=steps, seed=seed, every=every, fps=fps)
    frames = result.pop("frames")
    h, w = frames[0].shape[:2]
    result.update({"domain": domain.name, "frames": len(frames), "width": int(w), "height": int(h),
                   "bytes": path.stat().st_size,
                   "policy_paths": {name: str(p) for name, p in zip(result["policies"], paths.values())}})
    if as_json:
        print_json(result)
        return
    plays = ", ".join(f"{n} return {r['return']:.1f} in {r['length']} steps" for n, r in result["policies"].items())
    console.print(f"wrote {path}: {len(frames)} frames {w}x{h} at {fps:g} fps ({result['bytes'] / 1e6:.2f} MB); {plays}")
