"""Torch's CPU threads and device for a command (``--threads``, ``--device``), checked with one-line errors."""

from __future__ import annotations

import os

import torch

from kdistill.errors import KdistillError


def set_torch_threads(threads: int | None, workers: int = 0) -> int:
    if threads is not None and threads < 1:
        raise KdistillError(f"--threads must be at least 1, got {threads}.")
    if threads is None:
        cores = os.cpu_count() or 1
        # on a small machine one thread: torch's OpenMP threads spin, and if anything else wants a core
        # (env threads, another job) two threads run up to 15x slower than one; gain when idle is ~1.3x
        threads = 1 if cores <= 4 else max(1, min(8, cores - max(0, workers)))
    torch.set_num_threads(threads)
    return threads


def check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise KdistillError(f"--device {device!r} is not a device name; use cpu or cuda (cuda:N for the N-th GPU).") from None
    if dev.type == "cpu":
        return device
    if dev.type != "cuda":
        raise KdistillError(f"--device {device!r} is not supported; use cpu or cuda.")
    if not torch.cuda.is_available():
        raise KdistillError("--device cuda was asked for, but this torch has no CUDA device; use --device cpu.")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise KdistillError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                            f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return device
