"""Videos of policies playing a task (``kdistill render``), for any domain whose envs render ``rgb_array`` frames.

``rollout_frames`` plays one episode with a policy's mean action and keeps every ``every``-th frame;
``render_side_by_side`` does so for several policies on the same task and seed and puts their frames next to each
other, each under its name; ``write_video`` writes ``.gif`` (imageio + Pillow) or ``.mp4`` (imageio-ffmpeg's
bundled ffmpeg, H.264) atomically: a temporary file beside the target, renamed into place when complete.

The demo report calls ``render_side_by_side(domain, {"teacher": t, "student": s}, task, out / "clip.gif")``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kdistill.errors import KdistillError
from kdistill.io import check_new_file, file_mode

FORMATS = (".gif", ".mp4")


def check_video_path(out: str | Path, overwrite: bool = False, option: str = "--out") -> Path:
    """The video's path after checking its suffix and that it may be written (its folder is created)."""
    return check_new_file(out, FORMATS, "video", overwrite=overwrite, option=option)


def _writer_modules(suffix: str):
    try:
        import imageio.v2 as iio
    except ImportError:
        raise KdistillError("writing videos needs imageio: pip install 'kdistill[render]' (imageio, imageio-ffmpeg).") from None
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise KdistillError("writing .mp4 needs imageio-ffmpeg: pip install 'kdistill[render]' (or write a .gif).") from None
    return iio


def write_video(frames: list[np.ndarray], path: str | Path, fps: float = 25.0) -> Path:
    """Write ``frames`` (H, W, 3) uint8 as ``path`` (.gif loops forever; .mp4 is H.264, yuv420p) atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise KdistillError(f"{path}: the video must end in .gif or .mp4.")
    if not frames:
        raise KdistillError("no frames to write.")
    iio = _writer_modules(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".gif":
            iio.mimwrite(tmp, frames, format="GIF", duration=1000.0 / fps, loop=0)
        else:
            h, w = frames[0].shape[:2]
            even = [f[: h - h % 2, : w - w % 2] for f in frames]  # H.264 with yuv420p wants even sizes
            iio.mimwrite(tmp, even, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
                         macro_block_size=1, output_params=["-loglevel", "error"])

        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def rollout_frames(domain, policy, task: str, steps: int = 300, seed: int = 0, every: int = 2,
                   env_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Play one episode of ``task`` (at most ``steps`` steps) with ``policy``'s mean action; returns the frames
    (every ``every``-th, the first and last always) and the episode's return and length."""
    env = domain.make_env(task, render_mode="rgb_array", **dict(env_kwargs or {}))
    try:
        policy.prepare(task, domain.context(task))
        obs, _ = env.reset(seed=seed)
        frames = [_frame(env, domain)]
        total, length = 0.0, 0
        for t in range(steps):
            batch = {k: np.asarray(v)[None] for k, v in obs.items()}
            action = policy.act(batch, deterministic=True)[0]
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            length += 1
            ended = terminated or truncated or t == steps - 1
            if (t + 1) % every == 0 or ended:
                frames.append(_frame(env, domain))
            if terminated or truncated:
                break
    finally:
        env.close()
    return {"frames": frames, "return": total, "length": length, "ended": bool(terminated or truncated)}


def _frame(env, domain) -> np.ndarray:
    frame = env.render()
    if frame is None:
        raise KdistillError(f"domain {domain.name!r}'s environments do not render rgb_array frames.")
    return np.asarray(frame, dtype=np.uint8)


def _label(frame: np.ndarray, text: str) -> np.ndarray:
    """The frame with ``text`` on a dark strip above it."""
    from PIL import Image, ImageDraw

    h, w = frame.shape[:2]
    strip = 22
    img = Image.new("RGB", (w, h + strip), (20, 20, 20))
    img.paste(Image.fromarray(frame), (0, strip))
    ImageDraw.Draw(img).text((6, 5), text, fill=(235, 235, 235))
    return np.asarray(img)


def render_side_by_side(domain, policies: Mapping[str, Any], task: str, out: str | Path | None = None,
                        steps: int = 300, seed: int = 0, every: int = 2, fps: float = 25.0,
                        labels: bool = True) -> dict[str, Any]:
    """Each policy plays ``task`` from the same reset seed; their frames are put side by side (a policy whose
    episode ended early holds its last frame), each under its name and return. Writes ``out`` (.gif/.mp4)
    when given. Returns ``{"frames", "policies": {name: {"return", "length"}}, "file"}``."""
    runs = {name: rollout_frames(domain, policy, task, steps=steps, seed=seed, every=every)
            for name, policy in policies.items()}
    n = max(len(r["frames"]) for r in runs.values())
    frames = []
    for i in range(n):
        row = []
        for name, r in runs.items():
            f = r["frames"][min(i, len(r["frames"]) - 1)]
            row.append(_label(f, f"{name}: {task}  return {r['return']:.0f}") if labels else f)
        frames.append(np.concatenate(row, axis=1))
    result: dict[str, Any] = {"frames": frames, "task": task, "seed": seed, "fps": fps, "every": every,
                              "policies": {k: {"return": r["return"], "length": r["length"]} for k, r in runs.items()},
                              "file": None}
    if out is not None:
        result["file"] = str(write_video(frames, out, fps=fps))
    return result
