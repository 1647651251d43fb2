"""Figures written as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
import math
import os
from typing import Any, Sequence

import numpy as np

from kdistill.io import atomic_write_bytes


def pyplot():
    """matplotlib's pyplot on the Agg backend: the one place kdistill sets matplotlib up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def learning_curve(records: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "PPO learning curve") -> None:
    """Mean training-episode return (stochastic policy) against env steps: over the last 100 episodes, and, where the
    run records it, over tasks (each task's last episodes), which the task sampler's preferences do not tilt; and the
    deterministic evaluations of a run with ``--eval-every``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for key, label, color in (("mean_return", "last 100 episodes", "tab:blue"),
                              ("task_mean_return", "mean over tasks (last 10 of each)", "tab:orange"),
                              ("eval_return", "deterministic evaluation, mean over tasks", "tab:green")):
        pts = [(r["env_steps"], r[key]) for r in records if r.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=1.6, label=label,
                    marker="." if key == "eval_return" else None)
    if any(r.get("task_mean_return") is not None or r.get("eval_return") is not None for r in records):
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("env steps")
    ax.set_ylabel("mean episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def task_bars(result: dict[str, Any], path: str | os.PathLike, title: str = "evaluation") -> None:
    """Per-task mean return (bars, with the episodes' std) beside the random policy's."""
    plt = pyplot()
    rows = result["tasks"]
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    has_random = bool(rows) and "random_mean" in rows[0]
    width = 0.4 if has_random else 0.8
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.2))
    ax.bar(x, [r["mean"] for r in rows], width, yerr=[np.std(r["returns"]) for r in rows],
           label=f"policy (mean {result['summary']['mean_return']:.1f})", color="tab:blue", capsize=2)
    if has_random:
        ax.bar(x + width, [r["random_mean"] for r in rows], width,
               label=f"random (mean {result['summary']['random_mean_return']:.1f})", color="tab:gray")
    ax.set_xticks(x + (width / 2 if has_random else 0))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("mean episode return")
    ax.set_title(title)
    ax.axhline(0, color="black", lw=0.6)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def task_curves_grid(curves: dict[str, dict[str, list]], path: str | os.PathLike, title: str = "per-task learning curves") -> None:
    """One small panel per task: training-episode return (line) and evaluation return (dots) against env steps.

    ``curves[task]`` holds ``steps``/``returns`` (training) and ``eval_steps``/``eval_returns``.
    """
    plt = pyplot()
    names = list(curves)
    cols = max(1, math.ceil(math.sqrt(len(names))))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.45 * rows), squeeze=False, sharex=True)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        c = curves[name]
        ax.plot(c.get("steps", []), c.get("returns", []), color="tab:blue", lw=0.8)
        ax.plot(c.get("eval_steps", []), c.get("eval_returns", []), ".", color="tab:orange", ms=2.5)
        ax.set_title(name[-22:], fontsize=5)
        ax.tick_params(labelsize=4)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} (blue: training episodes, orange: deterministic evaluation)", fontsize=8)
    save_figure(fig, path)


def plot_comparison(result: dict[str, Any], path: str | os.PathLike, title: str = "") -> None:
    """Grouped bars: mean return per split (groups) and policy (bars)."""
    plt = pyplot()
    splits = list(result["returns"])
    names = list(dict.fromkeys(n for s in splits for n in result["returns"][s] if n != "random"))
    if any("random" in result["returns"][s] for s in splits):
        names.append("random")  # the baseline goes last
    x = np.arange(len(splits))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(splits) * max(len(names), 1) * 0.5 + 2), 4.2))
    for i, name in enumerate(names):
        vals = [result["returns"][s].get(name) for s in splits]
        bars = ax.bar(x + i * width, [v if v is not None else 0 for v in vals], width, label=name,
                      color="tab:gray" if name == "random" else None)
        for b, v in zip(bars, vals):
            if v is not None:
                ax.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks(x + width * (len(names) - 1) / 2)
    ax.set_xticklabels([f"{s} ({len(result['tasks'][s])} tasks)" for s in splits])
    ax.set_ylabel(f"mean return ({result['episodes']} episodes per task)")
    ax.set_title(title or f"{result['domain']}: policies compared")
    ax.axhline(0, color="black", lw=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def expert_eval_curves(curves: dict[str, Any], path: str | os.PathLike, title: str = "") -> None:
    """Mean evaluation over tasks against env steps per task, one colour per expert run: best so far (solid) and
    latest (dashed); ``curves`` is ``kdistill.rl.experts.eval_curves``'s result."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for k, (name, c) in enumerate(curves["runs"].items()):
        color = f"C{k % 10}"
        ax.plot(c["steps"], c["mean_best"], color=color, lw=1.8, label=f"{name}: best so far")
        ax.plot(c["steps"], c["mean_eval"], color=color, lw=1.0, ls="--", label=f"{name}: latest evaluation")
    ax.set_xlabel("env steps per task")
    ax.set_ylabel(f"mean return over {curves['tasks']} tasks")
    ax.set_title(title or f"expert runs on {curves['tasks']} shared tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)
