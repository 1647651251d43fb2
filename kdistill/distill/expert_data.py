"""Expert data: roll out a teacher on each task and store what the student will learn from.

A data folder ``DATA`` holds

* ``DATA/shards/<task>.safetensors``, one per task, rows in time-major order (row = step * num_envs + env):
  ``obs`` (n, T, S) float32, the *student view* of the state (the teacher's normalised observation sliced
  to ``layout.student_features``), ``obs_mask`` (n, T) bool, ``act_mask`` (n, T*A) bool, ``mu`` (n, T*A)
  the teacher's mean action and ``action`` (n, T*A) the action actually played, sampled from N(mu, std); for a
  layout with exteroception also ``extero`` (n, E) float32, the raw ``extero`` observation (not normalised);
* ``DATA/meta.json``: domain, teacher, layout, the normaliser state and its slice for the student, and per
  finished task its shard, sample count, episode returns and context.

A shard also holds ``static`` (1, T, F): the task's normalised full observation with the student's features
zeroed, taken from its first row. Every other row must agree with it (checked when collecting), so a
transformer student, which reads the full observation, can be trained from the compact student view.

The teacher is a ``kdistill.policy.Policy``: one context-reading teacher (its own frozen normaliser is the
data's), or a set of per-task experts, each task's rows labelled by its own expert (the data's normaliser
is then fitted on a short rollout of the experts over all tasks). With ``actor`` and ``beta`` (DAgger),
each env executes the teacher's sampled action with probability ``beta`` at each step and the actor's
action otherwise, and every visited state is labelled with the teacher's mean action.

Each shard is written atomically and ``meta.json`` is updated after it, so an interrupted collection
resumes where it stopped: finished tasks are skipped.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import numpy as np

from kdistill.domain import Layout, TaskContext, check_task_kind, task_kind_meta
from kdistill.errors import DataError
from kdistill.executors import DomainRef, Executor, LocalExecutor, PolicyRef
from kdistill.io import GrowingJsonFile, atomic_write_bytes, claim_folder, read_json_object
from kdistill.progress import Progress
from kdistill.rl.distributions import action_std_of, add_noise, sample_actions
from kdistill.rl.normalise import ObsNormalizer

FORMAT = "kdistill-expert/1"
SHARD_KEYS = ("obs", "obs_mask", "act_mask", "mu", "action")


def shard_keys(layout: Layout) -> tuple[str, ...]:
    """The arrays of a shard of ``layout``'s data: ``SHARD_KEYS``, and ``extero`` when the layout has it."""
    return SHARD_KEYS + (("extero",) if layout.extero_features else ())
STATIC_TOLERANCE = 1e-4  # how far a row's non-student features may stray from the task's ``static``


def shard_name(task: str) -> str:
    """A file name for a task's shard; names with unusual characters get a checksum suffix to stay unique."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", task)
    if safe != task:
        safe = f"{safe}-{zlib.crc32(task.encode()):08x}"
    return f"{safe}.safetensors"


def slice_normalizer_state(state: dict, features: Sequence[int]) -> dict:
    """The normaliser state restricted to ``features`` on the last axis (the student's view)."""
    idx = list(features)
    mean = np.asarray(state["mean"], np.float64)[..., idx]
    var = np.asarray(state["var"], np.float64)[..., idx]
    return {**state, "shape": list(mean.shape), "mean": mean.tolist(), "var": var.tolist()}


def context_to_json(ctx: TaskContext) -> dict:
    return {"tokens": np.asarray(ctx.tokens, np.float32).tolist(), "mask": np.asarray(ctx.mask, bool).tolist(),
            "act_mask": np.asarray(ctx.act_mask, bool).tolist()}


def context_from_json(d: dict) -> TaskContext:
    return TaskContext(np.asarray(d["tokens"], np.float32), np.asarray(d["mask"], bool), np.asarray(d["act_mask"], bool))


@attrs.frozen
class CollectSettings:
    """How much to collect per task. ``samples_per_task`` rows come from ``num_envs`` envs of that task
    (16 x 1000 steps = the reference's 16,000 rows per task)."""

    samples_per_task: int = attrs.field(default=16000, validator=attrs.validators.gt(0))
    num_envs: int = attrs.field(default=16, validator=attrs.validators.gt(0))
    seed: int = 0

    @classmethod
    def presets(cls) -> dict[str, "CollectSettings"]:
        return {"paper": cls(), "demo": cls(samples_per_task=4000, num_envs=8)}


def task_seed(seed: int, task: str) -> int:
    # depends on the task's name, not its position, so a task's data does not change with the task list
    return int(np.random.SeedSequence([seed, zlib.crc32(task.encode())]).generate_state(1)[0])


def rollout_task(domain, teacher, normalizer: ObsNormalizer, task: str, context: TaskContext, settings: CollectSettings,
                 on_step: Callable[[int], None] | None = None, actor=None, beta: float = 1.0,
                 env_threads: int | None = None) -> tuple[dict[str, np.ndarray], list[float]]:
    """Play the teacher (stochastic actions) on ``num_envs`` envs of ``task``; return the shard arrays and
    the returns of the episodes that finished. With ``actor``, each env plays the teacher's action with
    probability ``beta`` at each step and the actor's mean action otherwise (labels stay the teacher's).
    ``env_threads``: the vector env's threads hint (None: the domain's choice; rows are the same either way)."""
    layout: Layout = domain.layout
    features = list(layout.student_features)
    n_envs = settings.num_envs
    steps = math.ceil(settings.samples_per_task / n_envs)
    seed = task_seed(settings.seed, task)
    rng = np.random.default_rng(seed)
    T, S, TA = layout.max_tokens, len(features), layout.num_actions
    rows = steps * n_envs
    out = {
        "obs": np.empty((rows, T, S), np.float32),
        "obs_mask": np.empty((rows, T), bool),
        "act_mask": np.empty((rows, TA), bool),
        "mu": np.empty((rows, TA), np.float32),
        "action": np.empty((rows, TA), np.float32),
    }
    if layout.extero_features:
        out["extero"] = np.empty((rows, layout.extero_features), np.float32)
    returns: list[float] = []
    teacher.prepare(task, context)
    if actor is not None:
        actor.prepare(task, context)
    # the prepared task's exploration noise: a scalar, or one std per action for per-task experts
    std = np.asarray(action_std_of(teacher), np.float32)
    others = np.setdiff1d(np.arange(layout.obs_features), features)
    static = None
    venv = domain.make_vec_env([task], n_envs, seed=seed, threads=env_threads)
    try:
        obs = venv.reset(seed=seed)
        for t in range(steps):
            sl = slice(t * n_envs, (t + 1) * n_envs)
            full = normalizer.normalize(np.asarray(obs["obs"], np.float32))
            if static is None:
                static = full[:1].copy()
                static[..., features] = 0.0
            elif others.size and np.abs(full[..., others] - static[..., others]).max() > STATIC_TOLERANCE:
                static = np.full_like(static, np.nan)  # not constant: no transformer can be fitted from this task
                others = others[:0]
            out["obs"][sl] = full[..., features]
            out["obs_mask"][sl] = obs["obs_mask"]
            out["act_mask"][sl] = obs["act_mask"]
            if "extero" in out:
                out["extero"][sl] = obs["extero"]
            mu = np.asarray(teacher.act(obs, deterministic=True), np.float32)
            action = sample_actions(mu, std, rng)
            if actor is not None:
                own = np.asarray(actor.act(obs, deterministic=True), np.float32)
                teacher_plays = rng.random(n_envs) < beta
                action = np.where(teacher_plays[:, None], action, own).astype(np.float32)
            out["mu"][sl], out["action"][sl] = mu, action
            obs, _, _, _, infos = venv.step(action)
            returns += [float(i["episode"]["return"]) for i in infos if "episode" in i]
            if on_step is not None:
                on_step(n_envs)
    finally:
        venv.close()
    arrays = {k: v[: settings.samples_per_task] for k, v in out.items()}
    if static is not None and np.isfinite(static).all():
        arrays["static"] = static.astype(np.float32)
    return arrays, returns


@attrs.frozen
class CollectJob:
    """``rollout_task`` for an executor whose workers are other processes: domain and policies by reference."""

    domain: DomainRef
    teacher: PolicyRef
    actor: PolicyRef | None
    normalizer: dict = attrs.field(eq=False, repr=False)
    settings: CollectSettings
    beta: float = 1.0
    threads: int = 1

    def __call__(self, task: str) -> tuple[dict[str, np.ndarray], list[float]]:
        import torch

        torch.set_num_threads(self.threads)
        domain = self.domain.build()
        actor = self.actor.build() if self.actor is not None else None
        # a worker's thread budget covers its envs too: workers that each stepped envs on extra threads would
        # oversubscribe the cores they share
        return rollout_task(domain, self.teacher.build(), ObsNormalizer.from_state(self.normalizer), task,
                            domain.context(task), self.settings, actor=actor, beta=self.beta, env_threads=self.threads)


def fit_normalizer(domain, teacher, tasks: Sequence[str], steps: int = 500, num_envs: int = 2, seed: int = 0,
                   clip: float = 10.0, executor: Executor | None = None, threads: int = 1) -> ObsNormalizer:
    """An observation normaliser fitted on the teacher's own rollouts (sampled actions) over all ``tasks``:
    the data's normaliser when the teacher has none of its own (a set of per-task experts).

    The tasks' rollouts run on ``executor`` (default: this process, in order); ``threads``: torch threads of its
    workers. The statistics are the same on any executor (see ``_fit_rollout``)."""
    layout: Layout = domain.layout
    norm = ObsNormalizer((layout.max_tokens, layout.obs_features), clip=clip)
    rng = np.random.default_rng(seed)
    # every task's action noise is drawn here, in task order, as one generator acting through the tasks one after
    # the other draws it, so each task's rollout can run anywhere
    items = [(task, rng.standard_normal((steps, num_envs, layout.num_actions))) for task in tasks]
    executor = executor or LocalExecutor()
    if executor.in_process:
        def job(item: tuple[str, np.ndarray]) -> np.ndarray:
            return _fit_rollout(domain, teacher, *item, seed)
    else:
        job = FitJob(DomainRef.of(domain), PolicyRef.of(teacher), seed, threads)
    # the statistics take the tasks' observations in task order, whatever order the tasks finish in
    arrived: dict[int, np.ndarray] = {}
    next_index = 0
    for index, seen in executor.imap_unordered(job, items):
        arrived[index] = seen
        while next_index in arrived:
            for obs in arrived.pop(next_index):
                norm.rms.update(obs)
            next_index += 1
    norm.training = False
    return norm


def _fit_rollout(domain, teacher, task: str, noise: np.ndarray, seed: int) -> np.ndarray:
    """One task's share of ``fit_normalizer``: the observations ``(steps, num_envs, T, F)`` the statistics take, of
    the teacher's rollout whose action noise ``noise`` ``(steps, num_envs, A)`` was drawn beforehand."""
    layout: Layout = domain.layout
    steps, num_envs = noise.shape[:2]
    teacher.prepare(task, domain.context(task))
    std = np.asarray(action_std_of(teacher), np.float32)
    seen = np.empty((steps, num_envs, layout.max_tokens, layout.obs_features), np.float32)
    venv = domain.make_vec_env([task], num_envs, seed=task_seed(seed, task))
    try:
        obs = venv.reset(seed=task_seed(seed, task))
        for t in range(steps):
            seen[t] = obs["obs"]
            mu = np.asarray(teacher.act(obs, deterministic=True), np.float32)
            obs = venv.step(add_noise(mu, std, noise[t]))[0]
    finally:
        venv.close()
    return seen


@attrs.frozen
class FitJob:
    """``_fit_rollout`` for an executor whose workers are other processes: domain and teacher by reference."""

    domain: DomainRef
    teacher: PolicyRef
    seed: int
    threads: int = 1

    def __call__(self, item: tuple[str, np.ndarray]) -> np.ndarray:
        import torch

        torch.set_num_threads(self.threads)
        return _fit_rollout(self.domain.build(), self.teacher.build(), *item, self.seed)


_OPTION_OF = {"seed": "--seed", "num_envs": "--envs", "samples_per_task": "--samples-per-task", "teacher": "--teacher"}


def _check_existing(meta: dict, expected: dict, out: Path) -> None:
    """Refuse to add to an expert set collected with other inputs: its rows would mix two teachers or seeds."""
    expected = json.loads(json.dumps(expected))  # compare as stored (tuples become lists)
    for key, want in expected.items():
        have = meta.get(key)
        if have == want:
            continue
        if key in ("teacher", "actor") and want is not None and expected.get(f"{key}_sha256") is not None \
                and meta.get(f"{key}_sha256") == expected[f"{key}_sha256"]:
            continue  # the same checkpoint, named by another path (a trailing slash, another working folder)
        if key == "teacher_sha256" and have is None:
            raise DataError(
                f"{out} was collected before expert sets recorded their teacher checkpoint, so adding to it could mix "
                f"two teachers' rows; collect into another --out folder.")
        if key == "teacher_sha256":
            raise DataError(
                f"{out} was collected from another teacher checkpoint (weights sha256 {str(have)[:12]}, now "
                f"{str(want)[:12]}; did the teacher run write a newer checkpoint?); its rows cannot be mixed with this "
                f"teacher's: collect into another --out folder.")
        option = f" ({_OPTION_OF[key]})" if key in _OPTION_OF else ""
        raise DataError(
            f"{out} was collected with {key}={have!r}{option}, not {want!r}; resume with the same settings, or pass "
            f"another --out folder.")


def _check_fitted_on(meta: dict, tasks: Sequence[str], out: Path) -> None:
    """Refuse tasks outside those a folder's own normaliser was fitted on (the order of commands would shape rows)."""
    fitted_on = meta.get("normalizer_tasks")  # absent from folders collected before it was recorded
    others = sorted(set(tasks) - set(fitted_on)) if fitted_on is not None else []
    if others:
        raise DataError(f"{out}'s normaliser was fitted on the {len(fitted_on)} tasks first collected into it; "
                        f"adding {len(others)} others ({others[0]}, ...) would make its rows depend on the order "
                        f"of commands: collect every task in one command, into a new --out folder.")


def _is_expert_folder(path: Path) -> bool:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def collect_expert_data(domain, teacher, normalizer_state: dict | None, tasks: Sequence[str], out: str | Path,
                        settings: CollectSettings = CollectSettings(), teacher_ref: str = "",
                        progress: Progress | None = None, actor=None, beta: float = 1.0, actor_ref: str = "",
                        fit_tasks: Sequence[str] | None = None, executor: Executor | None = None,
                        threads: int = 1) -> dict[str, Any]:
    """Collect one shard per task into ``out`` (skipping tasks already there); returns a summary.

    ``executor``: where the tasks' rollouts run, those that fit a normaliser too (default: this process, in order);
    shards are written here as they come back. ``threads``: torch threads of an executor's workers.

    ``normalizer_state`` None: a new folder fits one on the teacher's rollouts over ``fit_tasks`` (default
    ``tasks``); a resumed folder keeps its own. ``actor``/``beta``: DAgger rollouts (module docstring).
    """
    out = Path(out)
    layout: Layout = domain.layout
    want_shape = (layout.max_tokens, layout.obs_features)
    normalizer = ObsNormalizer.from_state(normalizer_state) if normalizer_state is not None else None
    if normalizer is not None and tuple(normalizer.shape) != want_shape:
        raise DataError(f"the teacher's normaliser has shape {tuple(normalizer.shape)}, but domain {domain.name!r} "
                        f"observations are {want_shape}; use a teacher trained on this domain.")
    if not 0.0 <= beta <= 1.0:
        raise DataError(f"the DAgger mixing coefficient must lie in [0, 1], got {beta}.")
    # the teacher checkpoint's weights hash and the seed pin what the rows come from
    teacher_sha = (getattr(teacher, "meta", None) or {}).get("weights_sha256")
    expected = {"format": FORMAT, "domain": domain.name, **task_kind_meta(domain), "layout": layout.to_dict(),
                "teacher": str(teacher_ref),
                "teacher_sha256": teacher_sha, "samples_per_task": settings.samples_per_task,
                "num_envs": settings.num_envs, "seed": settings.seed}
    if actor is not None:
        expected.update(actor=str(actor_ref), actor_sha256=(getattr(actor, "meta", None) or {}).get("weights_sha256"),
                        beta=float(beta))
    meta_path = out / "meta.json"
    if meta_path.exists() and _is_expert_folder(out):
        meta = read_expert_meta(out)
        check_task_kind(meta, domain, str(out))
        _check_existing(meta, expected, out)
        claim_folder(out, "expert-data", legacy=_is_expert_folder)
        if normalizer is None:
            _check_fitted_on(meta, tasks, out)
            normalizer = ObsNormalizer.from_state(meta["normalizer"])
        elif meta.get("normalizer") != normalizer.state():
            raise DataError(f"{out} was collected with another normaliser; collect into another --out folder.")
    else:
        claim_folder(out, "expert-data")
        fitted_on = None
        if normalizer is None:
            fitted_on = sorted(fit_tasks or tasks)
            normalizer = fit_normalizer(domain, teacher, list(fit_tasks or tasks), seed=settings.seed,
                                        executor=executor, threads=threads)
        meta = {**expected, "normalizer": normalizer.state(),
                "student_normalizer": slice_normalizer_state(normalizer.state(), layout.student_features),
                **({"normalizer_tasks": fitted_on} if fitted_on is not None else {}), "tasks": {}}
    done = {t for t, info in meta["tasks"].items() if (out / info["shard"]).exists()}
    todo = [t for t in tasks if t not in done]
    skipped = [t for t in tasks if t in done]

    from safetensors.numpy import save as st_save

    report = progress or (lambda description, completed, total: None)
    total, rows_done = len(todo) * settings.samples_per_task, 0
    executor = executor or LocalExecutor()
    if executor.in_process:
        def job(task: str):
            report(f"expert {task}", rows_done, total)

            def step(n: int) -> None:
                nonlocal rows_done
                rows_done += n
                report(f"expert {task}", rows_done, total)

            return rollout_task(domain, teacher, normalizer, task, domain.context(task), settings, on_step=step,
                                actor=actor, beta=beta)
    else:
        job = CollectJob(DomainRef.of(domain), PolicyRef.of(teacher), PolicyRef.of(actor) if actor is not None else None,
                         normalizer.state(), settings, beta, threads)
    # meta.json lists the tasks in the order asked for, whatever order their shards finish in
    order = list(dict.fromkeys([*meta["tasks"], *todo]))
    meta_file = GrowingJsonFile(meta_path, "tasks")  # rewritten after every shard
    for index, (arrays, returns) in executor.imap_unordered(job, todo):
        task = todo[index]
        problem = _shard_problem(arrays, layout)
        if problem:
            raise DataError(f"the rollouts of task {task!r} {problem.replace('has ', 'have ', 1)}; nothing was written "
                            f"for it. Check the teacher ({teacher_ref}) and the task with `kdistill env check`.")
        shard = f"shards/{shard_name(task)}"
        atomic_write_bytes(out / shard, st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
        meta["tasks"][task] = {
            "shard": shard, "samples": int(len(arrays["obs"])), "num_envs": settings.num_envs,
            "episodes": len(returns), "mean_return": float(np.mean(returns)) if returns else None,
            "context": context_to_json(domain.context(task)), "static": "static" in arrays,
        }
        meta["tasks"] = {t: meta["tasks"][t] for t in order if t in meta["tasks"]}
        meta_file.write(meta)
        if not executor.in_process:
            rows_done += settings.samples_per_task
            report(f"expert {task}", rows_done, total)
    if not meta_path.exists():
        meta_file.write(meta)
    return {
        "out": str(out), "collected": todo, "skipped": skipped,
        "samples": sum(meta["tasks"][t]["samples"] for t in tasks if t in meta["tasks"]),
        "mean_return": {t: meta["tasks"][t]["mean_return"] for t in tasks if t in meta["tasks"]},
    }


# -------------------------------------------------------------------------------------------------
# reading

@attrs.define
class ExpertData:
    """All rows of some tasks of a data folder, concatenated (numpy), with ``task_index`` into ``tasks``."""

    tasks: list[str]
    contexts: list[TaskContext]
    obs: np.ndarray
    obs_mask: np.ndarray
    act_mask: np.ndarray
    mu: np.ndarray
    action: np.ndarray
    task_index: np.ndarray
    meta: dict
    static: np.ndarray | None = None  # (K, T, F) per task, when loaded ``with_static``
    extero: np.ndarray | None = None  # (n, E), when the layout has exteroception

    def __len__(self) -> int:
        return len(self.obs)


def read_expert_meta(path: str | Path) -> dict:
    """The meta.json of an expert data folder, checked in full (types, shapes, finite numbers) so that a
    damaged file is reported now, not after training on it."""
    path = Path(path)
    if not (path / "meta.json").exists():
        raise DataError(f"{path} is not an expert data folder (no meta.json); create one with `kdistill expert collect`.")
    meta = read_json_object(path / "meta.json")
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}/meta.json has format {meta.get('format')!r}, expected {FORMAT!r}.")
    try:
        _check_meta(meta)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
        raise DataError(f"{path}/meta.json is malformed ({what}); collect the data again with `kdistill expert collect`.") from None
    return meta


def _finite_array(value, shape: tuple[int, ...], what: str, dtype=np.float64) -> np.ndarray:
    arr = np.asarray(value, dtype)
    if arr.shape != shape:
        raise ValueError(f"{what} has shape {arr.shape}, expected {shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinity")
    return arr


def _check_normalizer(state, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"{what} is not an object")
    _finite_array(state["mean"], shape, f"{what} mean")
    var = _finite_array(state["var"], shape, f"{what} var")
    if (var < 0).any():
        raise ValueError(f"{what} var is negative")
    for key in ("clip", "epsilon"):
        if not isinstance(state[key], (int, float)) or not math.isfinite(state[key]) or state[key] < 0:
            raise ValueError(f"{what} {key} is not a non-negative number")


def _check_meta(meta: dict) -> None:
    if not isinstance(meta["domain"], str):
        raise TypeError("domain is not a string")
    if not isinstance(meta["layout"], dict):
        raise TypeError("layout is not an object")
    layout = Layout.from_dict(meta["layout"])
    T, S = layout.max_tokens, len(layout.student_features)
    _check_normalizer(meta["student_normalizer"], (T, S), "student_normalizer")
    if "normalizer" in meta:
        _check_normalizer(meta["normalizer"], (T, layout.obs_features), "normalizer")
    if not isinstance(meta["tasks"], dict):
        raise TypeError("tasks is not an object")
    for task, info in meta["tasks"].items():
        if not isinstance(info, dict):
            raise TypeError(f"task {task!r} is not an object")
        shard = info["shard"]
        if not isinstance(shard, str) or not shard.startswith("shards/") or ".." in Path(shard).parts:
            raise ValueError(f"task {task!r} names shard {shard!r}, not a file in shards/")
        if not isinstance(info["samples"], int) or isinstance(info["samples"], bool) or info["samples"] <= 0:
            raise ValueError(f"task {task!r} has samples {info['samples']!r}")
        ctx = info["context"]
        if not isinstance(ctx, dict):
            raise TypeError(f"the context of task {task!r} is not an object")
        _finite_array(ctx["tokens"], (T, layout.context_features), f"the context of task {task!r}", np.float32)
        _finite_array(ctx["mask"], (T,), f"the context mask of task {task!r}", bool)
        _finite_array(ctx["act_mask"], (layout.num_actions,), f"the action mask of task {task!r}", bool)


def _shard_problem(arrays: dict[str, np.ndarray], layout: Layout) -> str | None:
    """What is wrong with a shard's arrays (missing, mistyped, misshapen, non-finite), or None."""
    T, S, TA = layout.max_tokens, len(layout.student_features), layout.num_actions
    want = {"obs": (np.float32, (T, S)), "obs_mask": (np.bool_, (T,)), "act_mask": (np.bool_, (TA,)),
            "mu": (np.float32, (TA,)), "action": (np.float32, (TA,))}
    if layout.extero_features:
        want["extero"] = (np.float32, (layout.extero_features,))
    missing = [k for k in want if k not in arrays]
    if missing:
        return f"lacks array {missing[0]!r}"
    rows = len(arrays["obs"]) if arrays["obs"].ndim else -1
    if rows <= 0:
        return "holds no rows"
    for key, (dtype, shape) in want.items():
        arr = arrays[key]
        if arr.dtype != dtype:
            return f"has {key!r} of dtype {arr.dtype}, expected {np.dtype(dtype)}"
        if arr.shape != (rows, *shape):
            return f"has {key!r} of shape {arr.shape}, expected {(rows, *shape)}"
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr).reshape(rows, -1).all(axis=1)
            if bad.any():
                return f"has NaN or infinite values in {key!r} ({int(bad.sum())} row(s), first row {int(np.argmax(bad))})"
    if "static" in arrays:
        arr = arrays["static"]
        if arr.dtype != np.float32 or arr.shape != (1, T, layout.obs_features) or not np.isfinite(arr).all():
            return f"has a 'static' array that is not finite float32 of shape {(1, T, layout.obs_features)}"
    return None


def load_expert_sets(paths: Sequence[str | Path], tasks: Sequence[str] | None = None,
                     samples_per_task: int | None = None, with_static: bool = False) -> ExpertData:
    """Rows of several data folders (DAgger rounds) as one set: each folder's rows of ``tasks`` that it holds.

    The folders must share the domain, layout and normaliser, so their rows are in one space.
    """
    paths = [Path(p) for p in paths]
    first = load_expert_data(paths[0], tasks, samples_per_task, with_static)
    if len(paths) == 1:
        return first
    index = {t: k for k, t in enumerate(first.tasks)}
    keys = shard_keys(Layout.from_dict(first.meta["layout"]))
    parts = {k: [getattr(first, k)] for k in keys}
    task_index = [first.task_index]
    for path in paths[1:]:
        meta = read_expert_meta(path)
        for key in ("domain", "layout", "normalizer"):
            if meta.get(key) != first.meta.get(key):
                raise DataError(f"{path} differs from {paths[0]} in its {key}; its rows cannot be mixed with them.")
        held = [t for t in first.tasks if t in meta["tasks"]]
        if not held:
            continue
        more = load_expert_data(path, held, samples_per_task)
        for key in keys:
            parts[key].append(getattr(more, key))
        task_index.append(np.array([index[held[i]] for i in range(len(held))], np.int64)[more.task_index])
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return ExpertData(tasks=first.tasks, contexts=first.contexts, task_index=np.concatenate(task_index),
                      meta=first.meta, static=first.static, **cat)


def load_expert_data(path: str | Path, tasks: Sequence[str] | None = None, samples_per_task: int | None = None,
                     with_static: bool = False) -> ExpertData:
    """Load the shards of ``tasks`` (default: every finished task); ``samples_per_task`` keeps the first rows.

    ``with_static``: also the per-task full observations a transformer student reads (see the module docstring)."""
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_expert_meta(path)
    finished = list(meta["tasks"])
    tasks = list(tasks) if tasks is not None else finished
    missing = [t for t in tasks if t not in meta["tasks"]]
    if missing:
        raise DataError(f"{path} has no data for task(s) {missing[:5]}; collect them with `kdistill expert collect`.")
    if not tasks:
        raise DataError(f"{path} holds no finished task yet; run `kdistill expert collect` first.")
    layout = Layout.from_dict(meta["layout"])
    keys = shard_keys(layout)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    index = []
    statics = []
    for k, task in enumerate(tasks):
        shard_path = path / meta["tasks"][task]["shard"]
        try:
            arrays = load_file(str(shard_path))
        except FileNotFoundError:
            raise DataError(f"{shard_path} is missing; re-run `kdistill expert collect` to rebuild it.") from None
        except Exception as exc:
            raise DataError(f"{shard_path} is not a readable shard ({exc}); delete it and re-run `kdistill expert collect`.") from None
        problem = _shard_problem(arrays, layout)
        if problem:
            raise DataError(f"{shard_path} {problem}; delete it and re-run `kdistill expert collect` to rebuild it.")
        if with_static:
            if "static" not in arrays:
                raise DataError(f"{shard_path} holds no full observation of its task (collected by an older kdistill, or "
                                f"the task's non-student features vary); a transformer student cannot be fitted to it. "
                                f"Collect the data again with `kdistill expert collect`.")
            statics.append(arrays["static"][0])
        n = len(arrays["obs"]) if samples_per_task is None else min(samples_per_task, len(arrays["obs"]))
        for key in keys:
            parts[key].append(arrays[key][:n])
        index.append(np.full(n, k, np.int64))
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return ExpertData(tasks=tasks, contexts=[context_from_json(meta["tasks"][t]["context"]) for t in tasks],
                      task_index=np.concatenate(index), meta=meta, static=np.stack(statics) if with_static else None,
                      **cat)


def check_data_domain(meta: dict, domain, path) -> None:
    """Raise a one-line error unless the data in ``path`` (its ``meta``) was collected on ``domain``: a ``Domain``,
    or a DOMAIN argument (``name`` or ``name:kind``), whose kind of task must match too."""
    if isinstance(domain, str):
        name, _, kind = domain.partition(":")
        if meta["domain"] != name:
            raise DataError(f"{path} holds {meta['domain']!r} data, not {name!r}.")
        if (kind or None) == meta.get("task_kind"):
            return  # same kind (or both the default): no need to build the domain, which may not be registered here
        from kdistill.plugins import get_domain

        domain = get_domain(domain)  # the domain knows its default kind
    if meta["domain"] != domain.name:
        raise DataError(f"{path} holds {meta['domain']!r} data, not {domain.name!r}.")
    check_task_kind(meta, domain, str(path))
