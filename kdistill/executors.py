"""Executors: where per-task work runs (``--executor local|ray --workers N --address ADDR``).

An executor maps a *job* over items: ``imap_unordered(job, items)`` yields ``(index, job(item))`` once per item, in
completion order; ``map`` returns the results in the items' order. Executors are registered by name through the
``register_executors`` hook (``register(name, factory)``, ``factory(workers=N, address=ADDR)``): the core registers
``local`` (this process, one item after the other, the default that needs nothing extra) and ``processes`` (a pool of
worker processes on this machine, nothing extra either); the Ray plugin (``kdistill_ray``, extra ``kdistill[ray]``)
registers ``ray``.

A job for an executor that runs it elsewhere (``in_process`` False) must be picklable and small: it names what it needs
by reference, a ``DomainRef`` (domain name, build options, task folders) and a ``PolicyRef`` (the
checkpoint's tensors and meta), and each worker process builds those once and keeps them (``worker_cached``). Every
job's result depends only on its item and its own seeds, never on which worker ran it or in what order, so every
executor gives the same results for the same seeds.

Work that must continue where it stopped (PPO rollout workers keep their envs' episodes running from one update to
the next) uses *pinned workers*: ``executor.pinned(n)`` holds ``n`` workers, and its ``map(job, items)`` runs
``job(items[k], state_k)`` on worker ``k`` at every call, where ``state_k`` is a dict that worker keeps between calls.
A worker that died and was replaced starts again with an empty dict, so a job must rebuild what it finds missing.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterator, Sequence

import attrs

from kdistill.errors import KdistillError

DEFAULT_EXECUTOR = "local"


class Executor:
    """Base interface (see the module docstring)."""

    name: str = ""
    workers: int = 1
    in_process: bool = True  # False: jobs run in other processes (they must be picklable, and name things by reference)

    def imap_unordered(self, job: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def map(self, job: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        results: list[Any] = [None] * len(items)
        for index, result in self.imap_unordered(job, items):
            results[index] = result
        return results

    def pinned(self, count: int) -> "PinnedWorkers":
        """``count`` workers that each keep a state between calls (see the module docstring); close them after use."""
        if not self.in_process:
            raise KdistillError(f"the {self.name} executor has no pinned workers, which PPO rollout workers need; "
                                f"use --executor local or ray.")
        return LocalPinnedWorkers(count)

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": self.workers}

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    """Runs every job in this process, one after the other."""

    name = "local"

    def __init__(self, workers: int = 1, address: str | None = None):
        if workers != 1:
            raise KdistillError(f"--workers {workers}: the local executor runs in this process, one task at a time; "
                                f"use --executor processes (this machine) or ray for more workers.")
        if address is not None:
            raise KdistillError("--address joins a cluster; the local executor has none. Pass --executor ray.")

    def imap_unordered(self, job, items):
        for index, item in enumerate(items):
            yield index, job(item)


class ProcessExecutor(Executor):
    """A pool of ``workers`` processes on this machine, started with spawn (a worker holds no copy of the parent's
    torch or CUDA state). Each call starts its own pool and hands the job to every worker once, as the pool's
    initialiser argument, not once per item: a job carries policy weights."""

    name = "processes"
    in_process = False

    def __init__(self, workers: int = 1, address: str | None = None):
        if address is not None:
            raise KdistillError("--address joins a cluster; the processes executor runs on this machine. Pass --executor ray.")
        self.workers = int(workers)
        self._pool = None

    def imap_unordered(self, job, items):
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        if not items:
            return
        self._pool = ProcessPoolExecutor(min(self.workers, len(items)), mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(job,))
        pending = {self._pool.submit(_run_job, item): index for index, item in enumerate(items)}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = pending.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        raise KdistillError(f"a worker process of the processes executor died (killed, or out of "
                                            f"memory) while it ran item {index}; run the command again: finished "
                                            f"work was kept.") from None
                    yield index, result
        finally:
            for future in pending:
                future.cancel()
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self._pool is not None:
            # leaving on an error or Ctrl-C: the workers' running jobs are not waited for
            for process in list((getattr(self._pool, "_processes", None) or {}).values()):
                process.terminate()
        self.close()


_JOB: list[Any] = []  # a ProcessExecutor worker's job, set once by its pool's initialiser


def _start_worker(job: Callable[[Any], Any]) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    _JOB[:] = [job]


def _run_job(item: Any) -> Any:
    return _JOB[0](item)


class PinnedWorkers:
    """``count`` workers, each with a state kept between calls: ``map(job, items)`` runs ``job(items[k], state_k)``
    on worker ``k`` (``len(items) == count``) and returns the results in the items' order."""

    count: int = 0

    def map(self, job: Callable[[Any, dict], Any], items: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _check(self, items: Sequence[Any]) -> None:
        if len(items) != self.count:
            raise KdistillError(f"{len(items)} items for {self.count} pinned workers; pass one item per worker.")

    def __enter__(self) -> "PinnedWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalPinnedWorkers(PinnedWorkers):
    """Pinned workers in this process: one state dict each, the items run one after the other."""

    def __init__(self, count: int):
        self.count = int(count)
        self.states: list[dict] = [{} for _ in range(self.count)]

    def map(self, job, items):
        self._check(items)
        return [job(item, state) for item, state in zip(items, self.states)]

    def close(self) -> None:
        for state in self.states:
            close_state(state)
        self.states = [{} for _ in range(self.count)]


def close_state(state: dict) -> None:
    """Close what a pinned worker's state holds (its envs) and empty it."""
    for value in state.values():
        close = getattr(value, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                pass  # closing is best effort: the worker is going away
    state.clear()


def get_executor(name: str = DEFAULT_EXECUTOR, workers: int = 1, address: str | None = None) -> Executor:
    """The executor registered as ``name``, started with ``workers`` and ``address``."""
    from kdistill.plugins import get_plugins

    if workers < 1:
        raise KdistillError(f"--workers must be at least 1, got {workers}.")
    return get_plugins().executors.get(name)(workers=workers, address=address)


# what a job running elsewhere rebuilds -------------------------------------------------------------

_CACHE: dict[Any, Any] = {}


def worker_cached(key: Any, build: Callable[[], Any]) -> Any:
    """``build()`` once per process and ``key``: a worker keeps its domain and policies from one job to the next."""
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


@attrs.frozen
class DomainRef:
    """How to build a domain again in another process: ``get_domain(name, **options)``, then each task folder."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    task_folders: tuple[str, ...] = ()

    @classmethod
    def of(cls, domain) -> "DomainRef":
        # recorded by kdistill.plugins.get_domain and kdistill.tasks.select_tasks
        options = getattr(domain, "build_options", None) or {}
        return cls(domain.name, tuple(sorted(options.items())), tuple(getattr(domain, "task_folders", ()) or ()))

    def build(self):
        def make():
            from kdistill.plugins import get_domain

            domain = get_domain(self.name, **dict(self.options))
            for folder in self.task_folders:
                domain.add_task_folder(folder)
            return domain

        return worker_cached(("domain", self), make)


@attrs.frozen
class PolicyRef:
    """A loaded policy as a job for another process carries it: the checkpoint's tensors (safetensors bytes, so
    workers need no shared folder), its meta, the device and the seed. ``build()`` loads it once per process."""

    weights: bytes = attrs.field(repr=False)
    meta: dict = attrs.field(repr=False, eq=False)
    device: str = "cpu"
    seed: int = 0
    key: str = ""  # the weights' sha256: what identifies the policy in a worker's cache

    @classmethod
    def of(cls, policy, device: str | None = None) -> "PolicyRef":
        source = getattr(policy, "source", None)
        if source is None:
            raise KdistillError(f"this {policy.kind or type(policy).__name__} policy was not read by load_policy, so "
                                f"another executor's workers cannot load it; use the local executor.")
        tensors, meta, loaded_on, seed = source
        from safetensors.torch import save

        data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        return cls(data, meta, device or loaded_on, seed, hashlib.sha256(data).hexdigest())

    def build(self):
        def make():
            from safetensors.torch import load

            from kdistill.loading import _build_policy  # not at the top: loading imports most of kdistill

            return _build_policy(self.meta.get("kind"), load(self.weights), self.meta, "the policy sent to this worker",
                                 self.device, self.seed)

        return worker_cached(("policy", self.key, self.device, self.seed), make)
