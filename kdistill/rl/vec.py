"""Vector environments over a domain's tasks (the contract is in docs/design.md).

``SyncVecEnv`` steps ``num_envs`` sub-envs in this process. Each sub-env slot picks its task at
every reset through a task sampler, and takes an idle env of that task from a pool (building one
with ``domain.make_env`` when none is idle), so a run over 100 tasks holds about ``num_envs`` envs,
not one per task and slot. Every episode is reset with a seed drawn from the vector env's own
generator: what a slot plays depends only on that generator, never on which pooled env it got.
``reset(seed)`` also takes one seed per slot; each slot then draws from its own generator, so what a
slot plays is independent of every other slot (the per-task expert trainer relies on this).

``SubprocVecEnv`` splits the slots over worker processes; each worker steps a whole chunk of envs
per message, so the pipe cost is paid once per chunk, not once per env. Task probabilities are
pushed to the workers by ``sync_sampler()`` (the trainer calls it once per iteration).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import traceback
from typing import Any, Callable, Sequence

import numpy as np

from kdistill.errors import KdistillError
from kdistill.procs import die_with_parent
from kdistill.rl.sampling import FixedProbsSampler, TaskSampler, UniformSampler


def stack_obs(obs_list: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(o[k]) for o in obs_list]) for k in obs_list[0]}


def concat_obs(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def slot_seeds(seed, num_envs: int) -> list[int] | None:
    """``seed`` as one seed per slot when it is a sequence (checked against ``num_envs``), else None."""
    if seed is None or isinstance(seed, (int, np.integer)):
        return None
    seeds = [int(s) for s in seed]
    if len(seeds) != num_envs:
        raise KdistillError(f"reset got {len(seeds)} slot seeds for a vector env of {num_envs} envs.")
    return seeds


def rng_state_row(rng: np.random.Generator) -> np.ndarray:
    """A PCG64 generator's whole state as 6 uint64 words (128-bit state and increment, the cached 32 bits)."""
    st = rng.bit_generator.state
    if st.get("bit_generator") != "PCG64":
        raise KdistillError(f"cannot save a {st.get('bit_generator')} generator's state; only PCG64 (np.random.default_rng).")
    mask = (1 << 64) - 1
    s, inc = st["state"]["state"], st["state"]["inc"]
    return np.array([s >> 64, s & mask, inc >> 64, inc & mask, st["has_uint32"], st["uinteger"]], np.uint64)


def rng_from_row(row: np.ndarray) -> np.random.Generator:
    """The generator ``rng_state_row`` saved, in the same state."""
    w = [int(v) for v in np.asarray(row, np.uint64)]
    rng = np.random.default_rng(0)
    rng.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
                               "has_uint32": w[4], "uinteger": w[5]}
    return rng


def concat_states(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Slot-major states of consecutive chunks of slots as one: rows concatenated, each row zero-padded to the widest
    chunk's width (a state's rows carry their own lengths where they differ)."""
    out = {}
    for key in parts[0]:
        arrays = [np.asarray(p[key]) for p in parts]
        width = tuple(max(a.shape[d] for a in arrays) for d in range(1, arrays[0].ndim))
        padded = [np.pad(a, [(0, 0)] + [(0, w - a.shape[d + 1]) for d, w in enumerate(width)]) for a in arrays]
        out[key] = np.concatenate(padded)
    return out


class VecEnv:
    """Base class: ``num_envs`` sub-envs stepped together, with auto-reset (see docs/design.md).

    Optional: ``get_state``/``set_state`` carry the running episodes across a checkpoint (a stop request); a vector
    env without them has its episodes restarted where a run resumes.
    """

    num_envs: int
    tasks: list[str]

    def reset(self, seed: int | Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Start every slot's episode; ``seed`` is one int for the whole env or one int per slot."""
        raise NotImplementedError

    def step(self, actions: np.ndarray):
        raise NotImplementedError

    @property
    def slot_tasks(self) -> list[str]:
        """The task each slot is playing now (after an auto-reset: the next episode's)."""
        raise NotImplementedError(f"{type(self).__name__} does not report its slots' tasks")

    def sync_sampler(self) -> None:
        """Make the sub-envs use the sampler's current probabilities (no-op when they share it)."""

    def get_state(self) -> dict[str, np.ndarray] | None:
        """Everything the running episodes need to go on exactly in another vector env of the same tasks and slots:
        arrays with one row per slot (rows may be zero-padded at the end), or None when this env cannot save them."""
        return None

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Continue the episodes ``get_state`` saved (from a vector env of the same tasks and slots)."""
        raise KdistillError(f"{type(self).__name__} cannot restore running episodes; restart them with reset().")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SyncVecEnv(VecEnv):
    """``num_envs`` slots stepped in this process; ``env_factory(task)`` builds a gymnasium env."""

    def __init__(self, env_factory: Callable[[str], Any], tasks: Sequence[str], num_envs: int,
                 seed: int = 0, sampler: TaskSampler | None = None):
        if num_envs <= 0:
            raise KdistillError(f"num_envs must be positive, got {num_envs}.")
        self.env_factory = env_factory
        self.tasks = list(tasks)
        self.num_envs = int(num_envs)
        self.sampler = sampler if sampler is not None else UniformSampler(self.tasks)
        if list(self.sampler.tasks) != self.tasks:
            raise KdistillError("the task sampler was built for other tasks than the vector env; pass the same list to both.")
        self.rng = np.random.default_rng(seed)
        self._slot_rngs: list[np.random.Generator] | None = None
        self._pool: dict[str, list[Any]] = {t: [] for t in self.tasks}
        self._envs: list[Any] = [None] * self.num_envs
        self._slot_task: list[str] = [""] * self.num_envs
        self._returns = np.zeros(self.num_envs, np.float64)
        self._lengths = np.zeros(self.num_envs, np.int64)
        self._obs: list[dict[str, np.ndarray] | None] = [None] * self.num_envs

    @classmethod
    def from_domain(cls, domain, tasks: Sequence[str], num_envs: int, seed: int = 0,
                    sampler: TaskSampler | None = None, **env_kwargs) -> "SyncVecEnv":
        return cls(lambda task: domain.make_env(task, **env_kwargs), tasks, num_envs, seed=seed, sampler=sampler)

    @property
    def slot_tasks(self) -> list[str]:
        """The task each slot is playing now."""
        return list(self._slot_task)

    def _start_episode(self, i: int) -> dict[str, np.ndarray]:
        if self._envs[i] is not None:
            self._pool[self._slot_task[i]].append(self._envs[i])
        rng = self.rng if self._slot_rngs is None else self._slot_rngs[i]
        task = self.sampler.sample(rng, slot=i)
        pool = self._pool[task]
        env = pool.pop() if pool else self.env_factory(task)
        obs, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
        self._envs[i], self._slot_task[i] = env, task
        self._returns[i], self._lengths[i] = 0.0, 0
        return obs

    def reset(self, seed: int | Sequence[int] | None = None) -> dict[str, np.ndarray]:
        per_slot = slot_seeds(seed, self.num_envs)
        if per_slot is not None:
            self._slot_rngs = [np.random.default_rng(s) for s in per_slot]
        elif seed is not None:
            self.rng, self._slot_rngs = np.random.default_rng(seed), None
        self._obs = [self._start_episode(i) for i in range(self.num_envs)]
        return stack_obs(self._obs)

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions, np.float32)
        if actions.shape[0] != self.num_envs:
            raise KdistillError(f"step got actions for {actions.shape[0]} envs, the vector env has {self.num_envs}.")
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        infos: list[dict] = []
        for i, env in enumerate(self._envs):
            obs, reward, term, trunc, info = env.step(actions[i])
            info = dict(info)
            info.setdefault("task", self._slot_task[i])
            rewards[i], terminated[i], truncated[i] = reward, term, trunc and not term
            self._returns[i] += float(reward)
            self._lengths[i] += 1
            if term or trunc:
                info["episode"] = {"task": self._slot_task[i], "return": float(self._returns[i]),
                                   "length": int(self._lengths[i])}
                obs = self._start_episode(i)
            self._obs[i] = obs
            infos.append(info)
        return stack_obs(self._obs), rewards, terminated, truncated, infos

    def close(self) -> None:
        envs = [e for e in self._envs if e is not None] + [e for pool in self._pool.values() for e in pool]
        for env in envs:
            try:
                env.close()
            except Exception:
                pass
        self._envs = [None] * self.num_envs
        self._pool = {t: [] for t in self.tasks}


# worker processes ---------------------------------------------------------------------------------

def _worker(conn, make_chunk: Callable[[int, int, TaskSampler], VecEnv], index: int, num_envs: int, tasks: list[str]) -> None:
    die_with_parent()  # also when the parent is not the CLI (a script using SubprocVecEnv)
    # The parent handles Ctrl-C and SIGTERM (a stop request, kdistill.procs.StopRequest) and closes us; in a
    # process group of our own, a signal sent to the parent's group (a batch scheduler's SIGTERM) does not reach
    # us, and close() can still terminate us.
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sampler = FixedProbsSampler(tasks)
    env = None
    try:
        env = make_chunk(index, num_envs, sampler)
        conn.send(("ok", None))
        while True:
            cmd, arg = conn.recv()
            if cmd == "step":
                conn.send(("ok", env.step(arg)))
            elif cmd == "reset":
                conn.send(("ok", env.reset(seed=arg)))
            elif cmd == "slot_tasks":
                conn.send(("ok", env.slot_tasks))
            elif cmd == "get_state":
                conn.send(("ok", env.get_state()))
            elif cmd == "set_state":
                env.set_state(arg)
                conn.send(("ok", None))
            elif cmd == "probs":
                sampler.set_probs(arg)
                conn.send(("ok", None))
            elif cmd == "close":
                break
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    except BaseException as exc:
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        except Exception:
            pass
    finally:
        if env is not None:
            env.close()
        conn.close()


class SubprocVecEnv(VecEnv):
    """Slots split into ``len(chunk_sizes)`` worker processes (fork), each stepping a chunk of envs.

    ``make_chunk(worker_index, num_envs, sampler)`` runs in the worker and returns a ``VecEnv``
    whose sub-envs draw tasks from ``sampler`` (a ``FixedProbsSampler`` kept in sync with
    ``self.sampler`` by ``sync_sampler``).
    """

    def __init__(self, make_chunk: Callable[[int, int, TaskSampler], VecEnv], tasks: Sequence[str],
                 chunk_sizes: Sequence[int], sampler: TaskSampler | None = None):
        self.tasks = list(tasks)
        self.sampler = sampler if sampler is not None else UniformSampler(self.tasks)
        self.chunk_sizes = [int(c) for c in chunk_sizes]
        self.num_envs = sum(self.chunk_sizes)
        ctx = mp.get_context("fork")
        self._conns, self._procs = [], []
        for k, n in enumerate(self.chunk_sizes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, make_chunk, k, n, self.tasks), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._closed = False
        for k in range(len(self._conns)):
            self._recv(k)
        self.sync_sampler()

    @classmethod
    def from_domain(cls, domain, tasks: Sequence[str], num_envs: int, workers: int, seed: int = 0,
                    sampler: TaskSampler | None = None, **env_kwargs) -> "SubprocVecEnv":
        workers = max(1, min(int(workers), int(num_envs)))
        sizes = [num_envs // workers + (1 if k < num_envs % workers else 0) for k in range(workers)]
        seeds = np.random.SeedSequence(seed).spawn(workers)

        def make_chunk(index: int, n: int, chunk_sampler: TaskSampler) -> VecEnv:
            chunk_seed = int(seeds[index].generate_state(1)[0])
            return domain.make_vec_env(tasks, n, seed=chunk_seed, sampler=chunk_sampler, **env_kwargs)

        return cls(make_chunk, tasks, sizes, sampler)

    def _recv(self, k: int):
        try:
            status, payload = self._conns[k].recv()
        except EOFError:
            self.close()
            raise KdistillError(f"env worker {k} died (exit code {self._procs[k].exitcode}); see the messages above.") from None
        if status == "error":
            self.close()
            raise KdistillError(f"env worker {k} failed: {payload.splitlines()[0]}")
        return payload

    def _broadcast(self, cmd: str, args: Sequence[Any]) -> list[Any]:
        for conn, arg in zip(self._conns, args):
            conn.send((cmd, arg))
        return [self._recv(k) for k in range(len(self._conns))]

    def reset(self, seed: int | Sequence[int] | None = None) -> dict[str, np.ndarray]:
        per_slot = slot_seeds(seed, self.num_envs)
        if per_slot is not None:
            bounds = np.cumsum([0] + self.chunk_sizes)
            seeds = [per_slot[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        elif seed is None:
            seeds = [None] * len(self._conns)
        else:
            seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(len(self._conns))]
        return concat_obs(self._broadcast("reset", seeds))

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions, np.float32)
        bounds = np.cumsum([0] + self.chunk_sizes)
        parts = self._broadcast("step", [actions[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
        obs = concat_obs([p[0] for p in parts])
        rewards, terminated, truncated = (np.concatenate([p[j] for p in parts]) for j in (1, 2, 3))
        infos = [info for p in parts for info in p[4]]
        return obs, rewards, terminated, truncated, infos

    @property
    def slot_tasks(self) -> list[str]:
        return [t for part in self._broadcast("slot_tasks", [None] * len(self._conns)) for t in part]

    def get_state(self) -> dict[str, np.ndarray] | None:
        parts = self._broadcast("get_state", [None] * len(self._conns))
        return None if any(p is None for p in parts) else concat_states(parts)

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        bounds = np.cumsum([0] + self.chunk_sizes)
        self._broadcast("set_state", [{k: v[a:b] for k, v in state.items()} for a, b in zip(bounds[:-1], bounds[1:])])

    def sync_sampler(self) -> None:
        probs = self.sampler.probs()
        self._broadcast("probs", [probs] * len(self._conns))

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except Exception:
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()


def make_vec_env(domain, tasks: Sequence[str], num_envs: int, seed: int = 0, sampler: TaskSampler | None = None,
                 workers: int = 0, **env_kwargs) -> VecEnv:
    """The domain's vector env, in this process (``workers=0``) or split over worker processes."""
    if workers and workers > 0:
        return SubprocVecEnv.from_domain(domain, tasks, num_envs, workers, seed=seed, sampler=sampler, **env_kwargs)
    return domain.make_vec_env(tasks, num_envs, seed=seed, sampler=sampler, **env_kwargs)
