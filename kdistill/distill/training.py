"""Distillation: fit a student to the teacher's mean actions on expert data (offline behaviour cloning).

Each training batch is a shuffled draw of rows from all training tasks. The student generates weights once
for each task present in the batch (``generate`` on the distinct tasks, then ``forward_with``), not once per
row as the original code did; ``tests/test_distill*.py`` checks that both give the same outputs and gradients.

A run folder follows ``kdistill.io``: ``ckpt-<epoch>/`` checkpoints (meta kind ``student``, weights under
``model.``, Adam state under ``optim.``), ``latest.json``, ``metrics.jsonl`` (one line per epoch) and
``loss_curve.png``. Every epoch draws its shuffle and dropout from ``(seed, epoch)``, so a resumed run
continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import numpy as np
import torch

from kdistill.distill.expert_data import ExpertData, check_data_domain, load_expert_sets, read_expert_meta
from kdistill.distill.students import Student, build_student, context_tensors, loss_function, student_class, student_tensors
from kdistill.distributed import DataParallel
from kdistill.domain import Layout
from kdistill.errors import CheckpointError, DataError, KdistillError, unknown_name
from kdistill.io import (
    NonFiniteError,
    append_jsonl,
    claim_folder,
    latest_checkpoint,
    load_checkpoint,
    looks_like_run,
    read_jsonl,
    save_run_checkpoint,
    truncate_jsonl,
)
from kdistill.plots import pyplot, save_figure
from kdistill.progress import Progress
from kdistill.state import load_model_state, load_optimizer, optimizer_tensors
from kdistill.teachers.lookup import teacher_spec_for


@attrs.frozen
class DistillConfig:
    """Distillation hyper-parameters; ``paper`` is the reference's (Adam 1e-3, eps 1e-5, clip 0.5, batch 5120,
    50 epochs, balanced mean-action MSE, no schedule)."""

    epochs: int = attrs.field(default=50, validator=attrs.validators.gt(0))
    batch_size: int = attrs.field(default=5120, validator=attrs.validators.gt(0))
    lr: float = attrs.field(default=1e-3, validator=attrs.validators.gt(0))
    adam_eps: float = attrs.field(default=1e-5, validator=attrs.validators.gt(0))
    grad_clip: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))  # 0 = no clipping
    loss: str = "mse"
    val_tasks: int = attrs.field(default=0, validator=attrs.validators.ge(0))  # tasks held out for validation
    # first rows of each task (time-major); None = all
    samples_per_task: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.gt(0)))
    seed: int = 0
    checkpoint_every: int = attrs.field(default=5, validator=attrs.validators.gt(0))  # epochs

    @classmethod
    def presets(cls) -> dict[str, "DistillConfig"]:
        return {
            "paper": cls(),
            "paper-long": cls(epochs=200),  # the reference's obstacle-task schedule
            "demo": cls(epochs=15, val_tasks=0),
        }

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


# settings that may differ between a run and its resumption
_RESUMABLE_FIELDS = {"epochs", "checkpoint_every"}


def split_tasks(tasks: list[str], val_tasks: int, seed: int) -> tuple[list[str], list[str]]:
    """``(train, val)``: ``val_tasks`` tasks drawn with ``seed`` are held out."""
    if val_tasks >= len(tasks):
        raise DataError(f"--val-tasks {val_tasks} leaves no training task (the data has {len(tasks)}); use fewer.")
    order = np.random.default_rng(seed).permutation(len(tasks))
    held = set(int(i) for i in order[:val_tasks])
    return [t for i, t in enumerate(tasks) if i not in held], [t for i, t in enumerate(tasks) if i in held]


class TorchData:
    """Expert rows as tensors, plus each task's context (and full observation, if loaded), ready for batching."""

    def __init__(self, data: ExpertData, device: str | torch.device = "cpu"):
        self.tasks = data.tasks
        self.device = torch.device(device)
        # on an accelerator the rows move there once, so a batch is gathered where it is used; on the CPU they stay
        # where numpy put them (no copy)
        rows = self.device if self.device.type != "cpu" else torch.device("cpu")
        self.static = torch.from_numpy(data.static).to(device) if data.static is not None else None
        self.features = torch.as_tensor(Layout.from_dict(data.meta["layout"]).student_features, dtype=torch.long)
        self.obs = torch.from_numpy(data.obs).to(rows)
        self.obs_mask = torch.from_numpy(data.obs_mask).to(rows)
        self.act_mask = torch.from_numpy(data.act_mask).to(rows)
        self.mu = torch.from_numpy(data.mu).to(rows)
        self.action = torch.from_numpy(data.action).to(rows)
        self.task_index = torch.from_numpy(data.task_index).to(rows)
        self.extero = torch.from_numpy(data.extero).to(rows) if data.extero is not None else None
        ctx, cmask = context_tensors(data.contexts)
        self.context, self.ctx_mask = ctx.to(device), cmask.to(device)

    def __len__(self) -> int:
        return len(self.obs)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        d = self.device
        idx = idx.to(self.obs.device)
        out = {"obs": self.obs[idx].to(d), "obs_mask": self.obs_mask[idx].to(d), "act_mask": self.act_mask[idx].to(d),
               "mu": self.mu[idx].to(d), "action": self.action[idx].to(d), "task_index": self.task_index[idx].to(d)}
        if self.extero is not None:
            out["extero"] = self.extero[idx].to(d)
        return out


def student_mu(student: Student, data: TorchData, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The student's mean actions on a batch, generating weights once per task present."""
    present, local = torch.unique(batch["task_index"], return_inverse=True)
    params = student.generate(data.context.index_select(0, present), data.ctx_mask.index_select(0, present))
    extra = {"extero": batch["extero"]} if "extero" in batch else {}  # only layouts with exteroception pass it
    return student.forward_with(params, batch["obs"], batch["obs_mask"], local, **extra)


def teacher_mu(model, data: TorchData, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A context-reading teacher architecture's mean actions on a batch: its full observation is the task's
    ``static`` one with the row's student features written in (see ``kdistill.distill.expert_data``)."""
    ti = batch["task_index"]
    full = data.static.index_select(0, ti).clone()
    full[..., data.features.to(full.device)] = batch["obs"]
    feed = {"obs": full, "obs_mask": batch["obs_mask"], "act_mask": batch["act_mask"],
            "context": data.context.index_select(0, ti)}
    if "extero" in batch:
        feed["extero"] = batch["extero"]
    return model.mu(feed)


def teacher_student_config(spec, config: Any, preset: str | None):
    """A teacher architecture's config from a dict (a resumed run's), else its ``preset`` (default ``cpu``)."""

    if isinstance(config, dict):
        try:
            return spec.config_cls(**config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"the run's {spec.name} config does not fit ({exc}); start a new --out.") from None
    if config is not None:
        return config
    presets = spec.config_cls.presets()
    preset = preset or ("cpu" if "cpu" in presets else next(iter(presets)))
    if preset not in presets:
        raise unknown_name(f"{spec.name} preset", preset, presets)
    return presets[preset]


def evaluate_loss(student: Student, data: TorchData, loss_fn, batch_size: int, mu_fn=None) -> float:
    """Mean loss over all rows of ``data`` (eval mode, no gradients), weighted by rows."""
    was_training = student.training
    student.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(data)))
            batch = data.batch(idx)
            total += float(loss_fn((mu_fn or student_mu)(student, data, batch), batch)) * len(idx)
            n += len(idx)
    student.train(was_training)
    return total / max(n, 1)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


def plot_loss_curve(records: list[dict], path: Path, title: str = "") -> None:
    """Train and validation loss per epoch (log scale) as a PNG, written atomically."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in records]
    ax.plot(epochs, [r["train_loss"] for r in records], marker="o", ms=3, label="train")
    val = [(r["epoch"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val), marker="o", ms=3, label="validation (held-out tasks)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if all(r["train_loss"] > 0 for r in records):
        ax.set_yscale("log")
    ax.set_title(title or "distillation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def data_fingerprint(paths: Sequence[str | Path], tasks: Sequence[str]) -> str:
    """A hash of what the rows of ``tasks`` in these data folders come from and hold: each folder's teacher
    checkpoint, seed, env count, rows per task and normaliser, and per task its row count, episodes and mean
    return. A resume compares it, so a folder collected again under the same path is not taken for the old one."""
    import hashlib

    keys = ("teacher_sha256", "actor_sha256", "beta", "seed", "num_envs", "samples_per_task", "normalizer")
    parts = []
    for path in paths:
        meta = read_expert_meta(path)
        per_task = {t: {k: meta["tasks"][t].get(k) for k in ("samples", "episodes", "mean_return")}
                    for t in tasks if t in meta["tasks"]}
        parts.append({**{k: meta.get(k) for k in keys}, "tasks": per_task})
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _check_resume(meta: dict, arch: str, student_config: dict, config: DistillConfig, data_path: str, run: Path,
                  kind: str = "student", extra: dict | None = None, remedy: str = "pass another --out") -> None:
    if meta.get("kind") != kind or "distill" not in meta:
        raise CheckpointError(f"{run} holds a {meta.get('kind')!r} run, not a distilled {kind}; {remedy}.")
    for key, want in (extra or {}).items():
        have = meta.get(key)
        if have != want and not (have in (None, []) and want in (None, [])):  # older runs lack the key
            raise CheckpointError(f"{run} was distilled with another {key.replace('_', ' ')}; {remedy}.")
    if meta.get("arch") != arch or meta.get("config") != student_config:
        raise CheckpointError(f"{run} holds a {meta.get('arch')!r} student with config {meta.get('config')}; "
                              f"it cannot stand for {arch!r} {student_config}; {remedy}.")
    old = {k: v for k, v in meta.get("distill", {}).items() if k not in _RESUMABLE_FIELDS}
    new = {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE_FIELDS}
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise CheckpointError(f"{run} was distilled with other settings ({', '.join(diff)}); use them, or {remedy}.")
    if meta.get("data") != data_path:
        raise CheckpointError(f"{run} was distilled from {meta.get('data')}, not {data_path}; {remedy}.")


def _build_model(student: str, layout: Layout, student_config: Any, student_preset: str | None):
    """The fresh model of a distillation, its config as a checkpoint's JSON gives it back, and the checkpoint kind
    (``teacher`` for a teacher architecture, else ``student``)."""
    spec = teacher_spec_for(student)
    if spec is not None:
        teacher_config = teacher_student_config(spec, student_config, student_preset)
        model, cfg_dict, kind = spec.build(layout, teacher_config), teacher_config.to_dict(), "teacher"
    else:
        model = build_student(student, layout, student_config)
        cfg_dict, kind = model.config_dict(), "student"
    # tuples become lists, so saved and new configs compare equal
    return model, json.loads(json.dumps(cfg_dict)), kind


def check_finished_run(run: str | Path, data_path: str | Path, student: str = "hnmlp", student_config: Any = None,
                       config: DistillConfig = DistillConfig(), student_preset: str | None = None) -> dict[str, Any]:
    """Raise unless ``run`` is a finished distillation of the rows now at ``data_path`` with exactly these settings
    (the run that ``distill`` with them would write); returns its newest checkpoint's meta."""
    run, data_path = Path(run), Path(data_path)
    ckpt = latest_checkpoint(run) if run.is_dir() else None
    if ckpt is None:
        raise KdistillError(f"{run} holds no distillation checkpoint; pass a finished `kdistill distill` run folder.")
    meta = read_expert_meta(data_path)
    _, cfg_dict, kind = _build_model(student, Layout.from_dict(meta["layout"]), student_config, student_preset)
    _, ck_meta = load_checkpoint(ckpt)
    _check_resume(ck_meta, student, cfg_dict, config, str(data_path.resolve()), run, kind,
                  {"extra_data": [], "init_from": None}, remedy="pass another run")
    all_tasks = sorted(meta["tasks"])
    if ck_meta.get("data_fingerprint") is None:
        raise CheckpointError(f"{run} does not record which rows it was distilled from, so it cannot stand in for a "
                              f"distillation of {data_path}; pass a run written by this version of kdistill.")
    if ck_meta.get("data_fingerprint") != data_fingerprint([data_path], all_tasks):
        raise CheckpointError(f"{run} was distilled from other rows than {data_path} now holds; pass another run.")
    if ck_meta.get("train_tasks") != split_tasks(all_tasks, config.val_tasks, config.seed)[0]:
        raise CheckpointError(f"{run} was distilled on other tasks than {data_path} now holds; pass another run.")
    epoch = ck_meta.get("counters", {}).get("epoch")
    if epoch != config.epochs:
        raise CheckpointError(f"{run} has trained {epoch} epoch{'' if epoch == 1 else 's'}, not the {config.epochs} asked for; pass --epochs "
                              f"{epoch}, or bring it to {config.epochs} with `kdistill distill ... --out {run} --resume "
                              f"--epochs {config.epochs}` first.")
    return ck_meta


def _diverged(run: Path | None, epoch: int, step: int, what: str) -> NonFiniteError:
    """Training stops at the first non-finite loss: nothing after the last good checkpoint is written."""
    kept = latest_checkpoint(run) if run is not None else None
    keep = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint was written"
    return NonFiniteError(f"distillation diverged in epoch {epoch + 1} (step {step + 1}): {what}; stopped, and {keep}. "
                          f"Try a lower --lr, or check the expert data.")


def train_student(data_path: str | Path, student: str = "hnmlp", student_config: Any = None, config: DistillConfig = DistillConfig(),  # noqa: C901 (resume, data, training loop and checkpoints of one run)
                  out: str | Path | None = None, resume: bool = False, domain: str | None = None, device: str = "cpu",
                  progress: Progress | None = None, on_epoch: Callable[[dict], None] | None = None,
                  extra_data: Sequence[str | Path] = (), init_from: str | Path | None = None,
                  student_preset: str | None = None,
                  parallel: DataParallel | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Distill the expert data at ``data_path`` into a ``student``; checkpoints into ``out`` if given.

    ``student`` is a student architecture (HN-MLP, MLP, a plugin's) or a teacher architecture (a transformer):
    a distilled teacher architecture is saved as an ordinary teacher checkpoint (kind ``teacher``) that
    every command loads. ``extra_data``: more data folders whose rows join the first's (DAgger rounds);
    ``init_from``: a checkpoint of the same architecture to start from instead of a fresh initialisation.
    Returns the trained module and a summary (final losses, counters, the run folder); ``distill`` returns only
    the summary. ``progress``: see ``kdistill.progress``. ``parallel``: this process's rank of a data-parallel run
    (``kdistill.distributed``): each rank fits its slice of every batch, and only rank 0 writes ``out``.
    """
    data_path = Path(data_path)
    meta = read_expert_meta(data_path)
    spec = teacher_spec_for(student)
    if domain is not None:
        check_data_domain(meta, domain, data_path)
    layout = Layout.from_dict(meta["layout"])
    loss_fn = loss_function(config.loss)
    if spec is None:
        student_class(student)  # unknown names fail before any data is loaded
    all_tasks = sorted(meta["tasks"])
    if not all_tasks:
        raise DataError(f"{data_path} holds no finished task yet; run `kdistill expert collect` first.")
    train_tasks, val_tasks = split_tasks(all_tasks, config.val_tasks, config.seed)

    torch.manual_seed(config.seed)
    model, cfg_dict, kind = _build_model(student, layout, student_config, student_preset)
    model = model.to(device)
    mu_fn = teacher_mu if kind == "teacher" else student_mu
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, eps=config.adam_eps)
    data_ref = str(data_path.resolve())
    extra_refs = [str(Path(p).resolve()) for p in extra_data]
    init_ref = str(Path(init_from).resolve()) if init_from is not None else None

    fingerprint = data_fingerprint([data_path, *extra_data], all_tasks)
    run = Path(out) if out is not None else None
    # the run folder that this process writes: only rank 0's in a data-parallel run
    writes = run if parallel is None or parallel.is_main else None
    if writes is not None:  # marked below, once the checkpoint and the data have been read
        claim_folder(run, "student-run", legacy=looks_like_run("student"), check_only=True)
    start_epoch, step, samples_seen = 0, 0, 0
    if run is not None and latest_checkpoint(run) is not None:
        if not resume:
            raise KdistillError(f"{run} already holds a distillation run; pass --resume to continue it, or another --out.")
        tensors, ck_meta = load_checkpoint(latest_checkpoint(run))
        _check_resume(ck_meta, student, cfg_dict, config, data_ref, run, kind,
                      {"extra_data": extra_refs, "init_from": init_ref})
        if ck_meta.get("data_fingerprint") not in (None, fingerprint):  # runs saved before it lack it
            raise CheckpointError(f"{run} was distilled from other rows than {data_path} now holds (collected again, "
                                  f"or with other settings); distill into another --out.")
        if ck_meta.get("train_tasks") != train_tasks:
            raise CheckpointError(f"{run} was distilled on other tasks than {data_path} now holds "
                                  f"({len(ck_meta.get('train_tasks', []))} vs {len(train_tasks)}); pass another --out.")
        load_model_state(model, tensors)
        load_optimizer(optimizer, tensors)
        counters = ck_meta["counters"]
        start_epoch, step, samples_seen = counters["epoch"], counters["step"], counters["samples"]
    elif init_from is not None:
        tensors, init_meta = load_checkpoint(latest_checkpoint(init_from) or init_from)
        if init_meta.get("arch") != student or init_meta.get("config") != cfg_dict:
            raise CheckpointError(f"--init-from {init_from} holds a {init_meta.get('arch')!r} model with another config; "
                                  f"it cannot start a {student!r} run.")
        load_model_state(model, tensors)

    with_static = spec is not None
    train = TorchData(load_expert_sets([data_path, *extra_data], train_tasks, config.samples_per_task, with_static), device)
    val = (TorchData(load_expert_sets([data_path, *extra_data], val_tasks, config.samples_per_task, with_static), device)
           if val_tasks and (parallel is None or parallel.is_main) else None)
    if writes is not None:
        claim_folder(run, "student-run", legacy=looks_like_run("student"))
        # metrics logged after the newest checkpoint (or, without one, by an earlier start) belong to redone work
        truncate_jsonl(run / "metrics.jsonl", lambda r: r.get("epoch", 0) <= start_epoch)

    def checkpoint_meta(epoch: int) -> dict:
        out_meta = {
            "kind": kind, "domain": meta["domain"], **({"task_kind": meta["task_kind"]} if "task_kind" in meta else {}),
            "arch": student, "config": cfg_dict,
            "layout": layout.to_dict(), "normalizer": meta["normalizer" if spec is not None else "student_normalizer"],
            "action_std": model.action_std,
            "distill": config.to_dict(), "data": data_ref, "extra_data": extra_refs, "init_from": init_ref,
            "data_fingerprint": fingerprint,
            "teacher": meta.get("teacher", ""), "train_tasks": train_tasks, "val_tasks": val_tasks,
            "counters": {"epoch": epoch, "step": step, "samples": samples_seen},
        }
        if spec is not None:  # what a teacher run records, so teacher tooling reads it as one
            out_meta["run"] = {"domain": meta["domain"], "tasks": train_tasks, "teacher": student, "seed": config.seed}
        return out_meta

    n = len(train)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    last: dict[str, Any] = {}
    report = progress or (lambda description, completed, total: None)
    todo, done = (config.epochs - start_epoch) * steps_per_epoch, 0
    for epoch in range(start_epoch, config.epochs):
        model.train()
        gen = _epoch_generator(config.seed, epoch)
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))  # dropout stream of this epoch
        perm = torch.randperm(n, generator=gen)
        t0, total = time.perf_counter(), 0.0
        for start in range(0, n, config.batch_size):
            idx = perm[start:start + config.batch_size]
            rows = len(idx)
            optimizer.zero_grad(set_to_none=True)
            if parallel is None:
                batch = train.batch(idx)
                loss = loss_fn(mu_fn(model, train, batch), batch)
                loss.backward()
                loss_value = loss.item()
            else:
                loss_value = _parallel_backward(model, train, idx, loss_fn, mu_fn, parallel)
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if not math.isfinite(loss_value):
                raise _diverged(run, epoch, step, f"the loss is {loss_value}")
            total += loss_value * rows
            step += 1
            samples_seen += rows
            done += 1
            report(f"distill {student} epoch {epoch + 1}/{config.epochs} loss {loss_value:.4f}", done, todo)
        seconds = time.perf_counter() - t0
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise _diverged(run, epoch, step, "the weights hold NaN or infinity")
        record = {"epoch": epoch + 1, "step": step, "samples": samples_seen, "train_loss": total / n,
                  "val_loss": evaluate_loss(model, val, loss_fn, config.batch_size, mu_fn) if val is not None else None,
                  "seconds": seconds, "samples_per_s": n / seconds if seconds > 0 else None}
        last = record
        if writes is not None:
            append_jsonl(run / "metrics.jsonl", record)
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
                tensors = {**student_tensors(model), **optimizer_tensors(optimizer)}  # "model." prefix for both kinds
                save_run_checkpoint(run, epoch + 1, tensors, checkpoint_meta(epoch + 1))
                plot_loss_curve(read_jsonl(run / "metrics.jsonl"), run / "loss_curve.png",
                                f"{meta['domain']}: {student} student")
        if on_epoch is not None:
            on_epoch(record)

    if parallel is not None:
        parallel.barrier()  # every rank returns once rank 0 has written the last checkpoint
    if not last and run is not None:  # resumed a finished run: report its last epoch
        records = read_jsonl(run / "metrics.jsonl")
        last = records[-1] if records else {}
    return model, {
        "run": str(run) if run is not None else None, "student": student, "config": cfg_dict,
        "distill": config.to_dict(), "epochs": config.epochs, "resumed_from_epoch": start_epoch, "steps": step,
        "train_tasks": len(train_tasks), "val_tasks": val_tasks, "train_rows": n,
        "train_loss": last.get("train_loss"), "val_loss": last.get("val_loss"),
        "samples_per_s": last.get("samples_per_s"),
    }


def _parallel_backward(model, train: TorchData, idx: torch.Tensor, loss_fn, mu_fn, parallel: DataParallel) -> float:
    """This rank's share of a step: the gradient of its slice of the batch, weighted by the slice's share of the rows
    (the losses are means over rows), summed over ranks into the full batch's gradient; returns the batch's loss."""
    mine = parallel.shard(idx)
    if len(mine):
        batch = train.batch(mine)
        loss = loss_fn(mu_fn(model, train, batch), batch) * (len(mine) / len(idx))
        loss.backward()
    else:  # a batch of fewer rows than ranks: this rank adds nothing
        loss = torch.zeros(())
    return parallel.all_reduce_gradients(list(model.parameters()), loss)


def distill(data_path: str | Path, student: str = "hnmlp", student_config: Any = None, config: DistillConfig = DistillConfig(),
            **kwargs) -> dict[str, Any]:
    """``train_student`` without the module: the JSON-ready summary of a distillation (see ``train_student``)."""
    return train_student(data_path, student, student_config, config, **kwargs)[1]
