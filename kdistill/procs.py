"""Child processes that never outlive the process that started them.

A forked env worker inherits copies of every pipe end its parent holds, so when the parent is killed
(``kill -9``, the OOM killer) the worker's pipe never reports end-of-file and it would wait forever.
``die_with_parent()`` makes the kernel kill the calling process when its parent dies (Linux
``PR_SET_PDEATHSIG``); where that is unavailable, a daemon thread watches the parent's pid instead.
``kill_children_with_parent()`` applies it to every child forked afterwards by this process.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
_hook_installed = False
_enabled = False


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, interval: float) -> None:
    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(interval)

    threading.Thread(target=watch, name="kdistill-parent-watch", daemon=True).start()


def die_with_parent(parent_pid: int | None = None, interval: float = 1.0) -> None:
    """Make this process exit when its parent dies, whatever kills the parent.

    ``parent_pid`` is the parent's pid as the parent saw it; if the parent died before this call, the
    process exits at once.
    """
    parent = os.getppid() if parent_pid is None else int(parent_pid)
    if not _set_pdeathsig(signal.SIGKILL):
        _watch_parent(parent, interval)
    # the parent may have died between fork and prctl; then we are already re-parented
    if os.getppid() != parent:
        os._exit(1)


def _after_fork_in_child() -> None:
    if _enabled:
        die_with_parent()


def kill_children_with_parent() -> None:
    """Every process this process forks from now on dies with it (multiprocessing workers included).

    Only forks through ``os.fork`` are affected; ``subprocess`` children, which exec another program,
    are not.
    """
    global _hook_installed, _enabled
    _enabled = True
    if not _hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _hook_installed = True


class StopRequest:
    """A context in which SIGTERM and a first SIGINT ask a long run to stop at its next safe point instead of
    killing it: ``requested`` turns true and names the signal. A SIGINT after that interrupts at once
    (KeyboardInterrupt). A SIGINT the process was started ignoring (a job run with ``&`` from a script) stays
    ignored. Outside the main thread, where handlers cannot be installed, nothing is caught.

    Batch schedulers send SIGTERM some time before they kill a job; Ctrl-C sends SIGINT.
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal (128 + its number), so scripts stop too."""
        return 128 + int(getattr(signal, self.signal)) if self.signal else 0

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = self.signal or signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
