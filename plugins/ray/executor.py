"""The Ray executor: each job is a Ray task on one CPU; at most ``workers`` run at once.

A task whose worker process dies (killed, out of memory, a lost node) is run again by Ray, up to ``MAX_RETRIES``
times; the driver takes each task's result exactly once, from the attempt that finished, so nothing is lost or
duplicated (the jobs write nothing themselves: shards are written by the driver as results come back). An exception
raised by a job is not retried: it is re-raised here as it was raised there.

A worker whose task finished gets its next one before the driver handles the result (the caller writes it while the
generator is suspended), so the driver's writing never leaves a worker waiting.

Pinned workers (``executor.pinned(n)``) are Ray actors of one CPU each, so a worker's state stays in its process from
one call to the next. An actor whose process dies is restarted, and the call it was running runs again there, up to
``MAX_RETRIES`` times per call; the restarted actor starts with an empty state, and the driver takes each call's
result once, from the attempt that finished.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Callable, Iterator, Sequence

from kdistill.errors import KdistillError
from kdistill.executors import Executor, PinnedWorkers

MAX_RETRIES = 3  # attempts after a worker died, per task
CONNECT_TIMEOUT_S = 5.0


def _run(job: Callable[[Any], Any], item: Any) -> Any:
    return job(item)


class _PinnedWorker:
    """A Ray actor: runs jobs with the state it keeps between calls (empty again after a restart)."""

    def __init__(self):
        self.state: dict = {}

    def run(self, job: Callable[[Any, dict], Any], item: Any) -> Any:
        return job(item, self.state)


def _env_vars() -> dict[str, str]:
    # workers see the driver's plugin and data settings (KDISTILL_PLUGINS, KDISTILL_UNIMAL_DIR, ...), also on a cluster
    # whose nodes were started without them
    return {k: v for k, v in os.environ.items() if k.startswith("KDISTILL_") or k == "MUJOCO_GL"}


def _runtime_env(inherited: dict[str, str] | None) -> dict[str, Any]:
    """Ray options that give workers the driver's settings. ``inherited``: the settings the cluster's processes were
    started with (a local cluster started by this process), or None. When they still hold, no runtime env is asked
    for: with one, Ray would start and set up worker processes of its own for it instead of using those it
    started with the cluster, which costs seconds before the first task runs."""
    env = _env_vars()
    return {} if env == inherited else {"runtime_env": {"env_vars": env}}


def _check_reachable(address: str) -> None:
    """Fail fast on a cluster address nothing answers at: ray.init would retry for minutes."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise KdistillError(f"--address {address}: expected host:port (ray start --head prints it), or auto on a node "
                            f"of the cluster.")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise KdistillError(f"--address {address}: no Ray cluster answers there ({exc}); pass the head node's "
                            f"host:port (ray start --head prints it), or auto on a node of the cluster.") from None


class RayExecutor(Executor):
    """Joins the Ray cluster at ``address`` (``auto``: the one this machine belongs to), or starts a local one of
    ``workers`` CPUs; a Ray already initialised in this process is used as it is."""

    name = "ray"
    in_process = False

    def __init__(self, workers: int = 1, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise KdistillError("--executor ray needs Ray, which is not installed; install it with "
                                "pip install 'kdistill[ray]'.") from None
        self.workers, self.address, self._started = workers, address, False
        self._inherited: dict[str, str] | None = None  # the settings a local cluster started here inherited
        self._pools: list[RayPinnedWorkers] = []
        if address:
            _check_reachable(address)
        if ray.is_initialized():
            return
        options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(num_cpus=workers, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"join the Ray cluster at --address {address}" if address else "start a local Ray cluster"
            raise KdistillError(f"could not {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}.") from None
        self._started = True
        if not address:
            self._inherited = _env_vars()

    def _options(self) -> dict[str, Any]:
        return {"num_cpus": 1, **_runtime_env(self._inherited)}

    def imap_unordered(self, job: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        import ray

        remote = ray.remote(_run).options(max_retries=MAX_RETRIES, retry_exceptions=False, **self._options())
        job_ref = ray.put(job)  # one copy of the job (it carries the policy's weights) for all tasks
        pending: dict[Any, int] = {}
        submitted = 0

        def fill() -> None:
            nonlocal submitted
            while submitted < len(items) and len(pending) < self.workers:
                pending[remote.remote(job_ref, items[submitted])] = submitted
                submitted += 1

        try:
            fill()
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(ref)
                fill()  # before the caller handles this result: see the module docstring
                yield index, self._result(ray, ref, items[index])
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    @staticmethod
    def _result(ray, ref, item) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError,
                ray.exceptions.RayActorError) as exc:
            raise KdistillError(f"the Ray task for {item!r} lost its worker {MAX_RETRIES + 1} times "
                                f"({type(exc).__name__}); nothing was written for it. Check the workers' memory and "
                                f"logs, then run the command again (finished work is kept).") from None

    def pinned(self, count: int) -> "RayPinnedWorkers":
        if count > self.workers:
            raise KdistillError(f"{count} pinned workers asked of a Ray executor of --workers {self.workers}; "
                                f"pass --workers {count} or more.")
        pool = RayPinnedWorkers(count, self)
        self._pools.append(pool)
        return pool

    def describe(self) -> dict[str, Any]:
        import ray

        return {"executor": self.name, "workers": self.workers, "address": self.address,
                "cluster_cpus": ray.cluster_resources().get("CPU")}

    def close(self) -> None:
        for pool in self._pools:
            pool.close()
        self._pools = []
        if self._started:
            import ray

            ray.shutdown()
            self._started, self._inherited = False, None


class RayPinnedWorkers(PinnedWorkers):
    """``count`` Ray actors of one CPU each; call ``k`` of every ``map`` runs on actor ``k``."""

    def __init__(self, count: int, executor: RayExecutor):
        import ray

        self.count, self._executor = int(count), executor
        # a restart is per actor and unlimited (a long run may lose several nodes); each call is retried at most
        # MAX_RETRIES times, so a job that always kills its worker still ends the run
        actor = ray.remote(_PinnedWorker).options(max_restarts=-1, max_task_retries=MAX_RETRIES, **executor._options())
        self._actors = [actor.remote() for _ in range(self.count)]

    def map(self, job, items):
        import ray

        self._check(items)
        job_ref = ray.put(job)  # one copy of the job (it carries the policy's weights) for all workers
        refs = [a.run.remote(job_ref, item) for a, item in zip(self._actors, items)]
        return [RayExecutor._result(ray, ref, item) for ref, item in zip(refs, items)]

    def close(self) -> None:
        if not self._actors:
            return
        import ray

        if ray.is_initialized():
            for a in self._actors:
                ray.kill(a, no_restart=True)
        self._actors = []
