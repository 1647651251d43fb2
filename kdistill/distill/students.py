"""Student policies: they read the student view of the state; a hypernetwork reads the context once per task.

Every student is an ``nn.Module`` built as ``cls(layout, config)`` with

* ``generate(context (K, T, C), ctx_mask (K, T)) -> params``: the per-task part, run once per task;
* ``forward_with(params, x (B, T, S), obs_mask (B, T), task_index (B,)) -> mu (B, T*A)``: the per-step part,
  where ``task_index`` says which of the K generated tasks each row belongs to; for a layout with exteroception
  (``extero_features > 0``) the core also passes ``extero=`` the raw ``(B, E)`` vectors;
* ``forward(x, context, mask) -> mu``: the per-sample reference path (weights generated for every row, as
  the original code did), kept for tests and benchmarks.

``x`` is the observation sliced to ``layout.student_features`` and normalised with the teacher's statistics.
Masks are True on padded tokens. The action std is fixed (``action_std``, 0.9 like the teachers).

Exteroception (``layout.extero_features > 0``, e.g. a height map): both built-in students run ``extero`` through an
``ExteroEncoder`` (MLP [E, 64, 64], shared by all tasks) whose output joins the generated MLP's *input*: the first
layer reads ``[flat observation, encoded extero]``, so the generated policy stays one dense chain behind one encoder
branch (``fold`` + ``fold_extero``). docs/terrain.md says why this placement.

Two students are registered (``kdistill.plugins.builtin``): ``hnmlp``, the HyperDistill HN-MLP, and ``mlp``, a padded
plain MLP baseline that never sees the context.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

from kdistill.distill.encoders import ENCODERS, ExteroEncoder
from kdistill.distill.hypernet import HypernetLayer
from kdistill.distill.losses import LOSSES
from kdistill.domain import Layout, TaskContext
from kdistill.errors import CheckpointError, KdistillError, unknown_name
from kdistill.plugins import get_plugins
from kdistill.policy import Policy, checked_normalizer
from kdistill.rl.distributions import ACTION_STD, sample_actions
from kdistill.rl.normalise import ObsNormalizer
from kdistill.state import MODEL_PREFIX, model_tensors


def _at_least_one(instance, attribute, value):
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


def _probability(instance, attribute, value):
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value}")


# -------------------------------------------------------------------------------------------------
# configs

@attrs.frozen
class HNMLPConfig:
    """The HN-MLP student. ``layers`` counts the generated MLP's hidden layers (the reference's LAYER_NUM):
    the first is the per-token input layer, the other ``layers - 1`` are generated ``hidden x hidden`` layers."""

    hidden: int = attrs.field(default=256, validator=_at_least_one)
    layers: int = attrs.field(default=2, validator=_at_least_one)
    embed: int = attrs.field(default=128, validator=_at_least_one)
    # "auto": the transformer for per-token contexts, the vector MLP for one-vector contexts
    encoder: str = "auto"
    # dropout on each context embedding before its hypernetwork (0.1 for the reference's obstacle task)
    context_dropout: float = attrs.field(default=0.0, validator=_probability)

    @classmethod
    def presets(cls) -> dict[str, "HNMLPConfig"]:
        return {
            "paper": cls(),
            "paper-dropout": cls(context_dropout=0.1),
            # the generated MLP the reference's FLOP script prices on its terrain tasks (3 hidden layers): with the
            # exteroception encoder 0.600 MFLOPs / 0.301 M parameters (the paper's commands distil 2 layers)
            "paper-3layers": cls(layers=3),
            "small": cls(hidden=64, embed=32),
        }


@attrs.frozen
class MLPConfig:
    """The padded vanilla MLP: ``layers`` hidden layers of width ``hidden`` on the flat padded observation."""

    hidden: int = attrs.field(default=256, validator=_at_least_one)
    layers: int = attrs.field(default=2, validator=_at_least_one)

    @classmethod
    def presets(cls) -> dict[str, "MLPConfig"]:
        return {"paper": cls(), "small": cls(hidden=64)}


def make_config(config_cls, config: Any = None, preset: str | None = None):
    """A config from an instance, a dict (checkpoint meta) or a preset name."""
    if isinstance(config, config_cls):
        return config
    if config is None:
        presets = config_cls.presets()
        name = preset or "paper"
        if name not in presets:
            raise unknown_name(f"{config_cls.__name__} preset", name, presets)
        return presets[name]
    if isinstance(config, dict):
        known = {f.name for f in attrs.fields(config_cls)}
        extra = set(config) - known
        if extra:
            raise CheckpointError(f"{config_cls.__name__} has no field(s) {sorted(extra)}; the checkpoint comes from another version.")
        try:
            return config_cls(**config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid {config_cls.__name__} {config}: {exc}") from None
    raise TypeError(f"cannot make a {config_cls.__name__} from {type(config).__name__}")


# -------------------------------------------------------------------------------------------------
# grouping a batch by task: pack rows into a (tasks, rows, features) block so each generated layer is one bmm

class TaskGroups:
    """Where each row of a batch goes when rows are packed per task into a zero-padded ``(G, L, D)`` block.

    ``G`` is the number of distinct tasks in the batch and ``L`` the largest number of rows of one task.
    Packing costs one index copy; every generated layer then runs as one batched matmul over the G tasks,
    instead of materialising a weight matrix per row.
    """

    def __init__(self, task_index: torch.Tensor):
        task_index = task_index.long()
        self.tasks, seg = torch.unique(task_index, return_inverse=True)  # tasks present, sorted
        counts = torch.bincount(seg, minlength=len(self.tasks))
        order = torch.argsort(seg, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        pos_sorted = torch.arange(len(seg), device=seg.device) - starts[seg[order]]
        pos = torch.empty_like(pos_sorted)
        pos[order] = pos_sorted
        self.num_groups = len(self.tasks)
        self.rows = int(counts.max()) if len(counts) else 0
        self.slot = seg * self.rows + pos  # flat slot of each row in the packed block
        self.batch = len(seg)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D) -> (G, L, D)``, unused slots zero."""
        flat = x.new_zeros(self.num_groups * self.rows, x.shape[-1])
        return flat.index_copy(0, self.slot, x).reshape(self.num_groups, self.rows, x.shape[-1])

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """``(G, L, D) -> (B, D)``."""
        return y.reshape(self.num_groups * self.rows, y.shape[-1]).index_select(0, self.slot)

    def select(self, per_task: torch.Tensor) -> torch.Tensor:
        """Pick the rows of a per-task tensor ``(K, ...)`` for the tasks present, in group order."""
        if per_task.shape[0] == self.num_groups and self.num_groups == int(self.tasks[-1]) + 1:
            return per_task  # all tasks present, already in order
        return per_task.index_select(0, self.tasks)


# -------------------------------------------------------------------------------------------------
# students

class Student(nn.Module):
    """Common plumbing: layout sizes, fixed action std, config round trip."""

    name = ""
    Config: type  # the student's attrs config class, with a ``presets()`` classmethod

    def __init__(self, layout: Layout, config):
        super().__init__()
        self.layout = layout
        self.config = config
        self.T = layout.max_tokens
        self.S = layout.student_token_features
        self.C = layout.context_features
        self.A = layout.actions_per_token
        self.action_std = ACTION_STD
        self.extero_encoder: ExteroEncoder | None = None  # set by students that read exteroception

    def generate(self, context: torch.Tensor, ctx_mask: torch.Tensor) -> dict:
        raise NotImplementedError

    def forward_with(self, params: dict, x: torch.Tensor, obs_mask: torch.Tensor, task_index: torch.Tensor,
                     extero: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def _encoded_extero(self, extero: torch.Tensor | None) -> torch.Tensor:
        if extero is None:
            raise KdistillError(f"the {self.name} student reads exteroception (layout.extero_features = "
                                f"{self.layout.extero_features}); pass obs['extero'].")
        return self.extero_encoder(extero)

    def fold_extero(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The exteroception encoder as dense layers ``[(weight (in, out), bias), ...]`` with a ReLU after every
        layer, whose output follows the flat observation in ``fold``'s first layer; [] without exteroception."""
        return self.extero_encoder.dense_layers() if self.extero_encoder is not None else []

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config_dict(self) -> dict:
        return attrs.asdict(self.config)

    def fold(self, params: dict, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The generated policy of one task (``params`` from ``generate`` with K = 1, ``mask`` (T,) its
        padding) as plain dense layers ``[(weight (in, out), bias (out,)), ...]`` on the flat student
        observation ``(T*S,)`` (followed by the encoded exteroception, see ``fold_extero``), ReLU between layers.
        Padding is folded in: rows of padded tokens are zero."""
        raise NotImplementedError


def _real_tokens(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(real (…, T) float, n_real (…,) float)`` from a padding mask; at least one real token is assumed."""
    real = (~mask.bool()).to(torch.float32)
    return real, real.sum(-1).clamp(min=1.0)


class HNMLPStudent(Student):
    """HyperDistill's HN-MLP: three hypernetworks, each with its own context encoder, write a 2+ layer MLP.

    * input layer: per-token weights ``(S, H)`` and biases from each token's embedding; the per-token
      pre-activations are averaged over the real tokens, then ReLU;
    * ``layers - 1`` hidden layers ``(H, H)`` from the mean embedding over real tokens, ReLU;
    * output layer: per-token weights ``(H, A)`` and biases, giving ``A`` actions per token.
    """

    name = "hnmlp"
    Config = HNMLPConfig

    def __init__(self, layout: Layout, config: HNMLPConfig | dict | None = None):
        config = make_config(HNMLPConfig, config)
        super().__init__(layout, config)
        enc_name = config.encoder
        if enc_name == "auto":
            enc_name = "vector" if layout.context_kind == "vector" else "transformer"
        encoder_cls = context_encoder_class(enc_name)
        E, H = config.embed, config.hidden
        self.encoder_name = enc_name
        self.input_encoder = encoder_cls(self.C, E)
        self.hidden_encoder = encoder_cls(self.C, E) if config.layers > 1 else None
        self.output_encoder = encoder_cls(self.C, E)
        self.dropout = nn.Dropout(config.context_dropout)
        self.extero_encoder = ExteroEncoder(layout.extero_features) if layout.extero_features else None
        X = self.extero_encoder.out_features if self.extero_encoder is not None else 0
        # fan-in of the input layer is the whole flat observation (T*S), as in the reference, plus the encoded extero
        self.input_hn = HypernetLayer(E, self.S, H, fan_in=self.T * self.S + X)
        # the encoded extero's input weights, one (X, H) block per task from the input encoder's mean embedding
        self.extero_hn = HypernetLayer(E, X, H, fan_in=self.T * self.S + X) if X else None
        self.hidden_hns = nn.ModuleList(HypernetLayer(E, H, H) for _ in range(config.layers - 1))
        self.output_hn = HypernetLayer(E, H, self.A)

    def generate(self, context: torch.Tensor, ctx_mask: torch.Tensor) -> dict:
        """Per-task MLP parameters: ``w_in (K,T,S,H)``, ``b_in (K,T,H)``, ``hidden`` list of
        ``(w (K,H,H), b (K,H))``, ``w_out (K,T,H,A)``, ``b_out (K,T,A)``; with exteroception also the encoded
        extero's input weights ``w_ext (K,X,H)`` and ``b_ext (K,H)``."""
        ctx_mask = ctx_mask.bool()
        e_in = self.input_encoder(context, ctx_mask)
        w_in, b_in = self.input_hn(self.dropout(e_in))
        hidden = []
        real, n_real = _real_tokens(ctx_mask)
        if self.hidden_hns:
            e = self.hidden_encoder(context, ctx_mask)
            mean_e = (e * real.unsqueeze(-1)).sum(-2) / n_real.unsqueeze(-1)
            mean_e = self.dropout(mean_e)
            hidden = [hn(mean_e) for hn in self.hidden_hns]
        w_out, b_out = self.output_hn(self.dropout(self.output_encoder(context, ctx_mask)))
        params = {"w_in": w_in, "b_in": b_in, "hidden": hidden, "w_out": w_out, "b_out": b_out}
        if self.extero_hn is not None:
            mean_in = (e_in * real.unsqueeze(-1)).sum(-2) / n_real.unsqueeze(-1)
            params["w_ext"], params["b_ext"] = self.extero_hn(self.dropout(mean_in))  # (K, X, H), (K, H)
        return params

    def forward_with(self, params: dict, x: torch.Tensor, obs_mask: torch.Tensor, task_index: torch.Tensor,
                     extero: torch.Tensor | None = None) -> torch.Tensor:
        B, T, S = x.shape
        K, H = params["w_in"].shape[0], self.config.hidden
        real, n_real = _real_tokens(obs_mask)
        # The masked per-token input layer is one matmul on [x of real tokens, flat | real-token indicator]
        # against [per-token weights stacked | per-token biases]: sum_t real_t (x_t W_t + b_t).
        features = torch.cat([(x * real.unsqueeze(-1)).reshape(B, T * S), real], dim=1)
        w_first = torch.cat([params["w_in"].reshape(K, T * S, H), params["b_in"]], dim=1)
        w_out = params["w_out"].permute(0, 2, 1, 3).reshape(K, H, T * self.A)
        b_out = params["b_out"].reshape(K, T * self.A)

        groups = TaskGroups(task_index)
        h = torch.bmm(groups.pack(features), groups.select(w_first))
        # multiply by the packed reciprocal: unused slots then hold 0, never 0/0 (which would poison gradients)
        h = h * groups.pack((1.0 / n_real).unsqueeze(-1))
        if self.extero_encoder is not None:  # the encoded extero joins the input layer, outside the token mean
            z = groups.pack(self._encoded_extero(extero))
            h = h + torch.baddbmm(groups.select(params["b_ext"]).unsqueeze(1), z, groups.select(params["w_ext"]))
        h = torch.relu(h)
        for w, b in params["hidden"]:
            h = torch.relu(torch.baddbmm(groups.select(b).unsqueeze(1), h, groups.select(w)))
        mu = torch.baddbmm(groups.select(b_out).unsqueeze(1), h, groups.select(w_out))
        return groups.unpack(mu)

    def fold(self, params: dict, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # sum_t real_t (x_t W_t + b_t) / n_real is one dense layer on the flat observation
        real, n_real = _real_tokens(mask.reshape(-1))
        H = self.config.hidden
        w_first = (params["w_in"][0] * real[:, None, None]).reshape(self.T * self.S, H) / n_real
        b_first = (params["b_in"][0] * real[:, None]).sum(0) / n_real
        if "w_ext" in params:
            w_first, b_first = torch.cat([w_first, params["w_ext"][0]]), b_first + params["b_ext"][0]
        layers = [(w_first, b_first)] + [(w[0], b[0]) for w, b in params["hidden"]]
        w_out = params["w_out"][0].permute(1, 0, 2).reshape(H, self.T * self.A)
        return layers + [(w_out, params["b_out"][0].reshape(self.T * self.A))]

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                extero: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample path: weights generated for every row (the reference's training forward)."""
        real, n_real = _real_tokens(mask)
        z = self._encoded_extero(extero) if self.extero_encoder is not None else None
        return per_row_forward(self.generate(context, mask), x, real, n_real.unsqueeze(-1), z)


def per_row_forward(params: dict, x: torch.Tensor, real: torch.Tensor, n_real: torch.Tensor,
                    extero_z: torch.Tensor | None = None) -> torch.Tensor:
    """The reference HN-MLP step: every row carries its own generated per-token weights (``params`` with a leading
    batch dimension), applied by einsum; the input layer is averaged over the real tokens (``real`` (B, T) float,
    ``n_real`` (B, 1)); ``extero_z`` (B, X), the encoded exteroception, meets its own weights ``w_ext``."""
    h_tok = torch.einsum("bts,btsh->bth", x, params["w_in"]) + params["b_in"]
    h = (h_tok * real.unsqueeze(-1)).sum(1) / n_real
    if extero_z is not None:
        h = h + torch.einsum("bx,bxh->bh", extero_z, params["w_ext"]) + params["b_ext"]
    h = torch.relu(h)
    for w, b in params["hidden"]:
        h = torch.relu(torch.einsum("bi,bio->bo", h, w) + b)
    mu = torch.einsum("bh,btha->bta", h, params["w_out"]) + params["b_out"]
    return mu.reshape(x.shape[0], -1)


class MLPStudent(Student):
    """The padded vanilla MLP baseline (reference section 7): padded tokens zeroed, ``Linear(T*S, H)`` whose
    output is divided by the number of real tokens, ReLU, ``layers - 1`` hidden layers, ``Linear(H, T*A)``.
    It ignores the context, so ``generate`` returns nothing."""

    name = "mlp"
    Config = MLPConfig

    def __init__(self, layout: Layout, config: MLPConfig | dict | None = None):
        config = make_config(MLPConfig, config)
        super().__init__(layout, config)
        H = config.hidden
        self.first = nn.Linear(self.T * self.S, H)
        if layout.extero_features:
            self.extero_encoder = ExteroEncoder(layout.extero_features)
            # the encoded extero's weights in the first layer (its bias is the first layer's)
            self.extero_in = nn.Linear(self.extero_encoder.out_features, H, bias=False)
        self.hidden_layers = nn.ModuleList(nn.Linear(H, H) for _ in range(config.layers - 1))
        self.out = nn.Linear(H, self.T * self.A)

    def generate(self, context: torch.Tensor, ctx_mask: torch.Tensor) -> dict:
        return {}

    def forward_with(self, params: dict, x: torch.Tensor, obs_mask: torch.Tensor, task_index: torch.Tensor,
                     extero: torch.Tensor | None = None) -> torch.Tensor:
        real, n_real = _real_tokens(obs_mask)
        h = self.first((x * real.unsqueeze(-1)).reshape(x.shape[0], -1)) / n_real.unsqueeze(-1)
        if self.extero_encoder is not None:
            h = h + self.extero_in(self._encoded_extero(extero))
        h = torch.relu(h)
        for layer in self.hidden_layers:
            h = torch.relu(layer(h))
        return self.out(h)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                extero: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with({}, x, mask, torch.zeros(x.shape[0], dtype=torch.long), extero=extero)

    def fold(self, params: dict, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        real, n_real = _real_tokens(mask.reshape(-1))
        row_keep = real.repeat_interleave(self.S)  # (T*S,)
        first = (self.first.weight.T * row_keep[:, None]) / n_real
        if self.extero_encoder is not None:
            first = torch.cat([first, self.extero_in.weight.T])
        layers = [(first, self.first.bias / n_real)]
        layers += [(layer.weight.T, layer.bias) for layer in self.hidden_layers]
        return layers + [(self.out.weight.T, self.out.bias)]


STUDENTS = {"hnmlp": HNMLPStudent, "mlp": MLPStudent}


# -------------------------------------------------------------------------------------------------
# building, saving, loading

def _lookup(kind: str, builtin: dict, name: str):
    # Built-in names resolve without loading plugins, so the core works even when a plugin is broken;
    # plugins cannot re-register these names anyway.
    if name in builtin:
        return builtin[name]

    return getattr(get_plugins(), kind).get(name)


def context_encoder_class(name: str) -> type:
    return _lookup("context_encoders", ENCODERS, name)


def student_class(name: str) -> type:
    return _lookup("students", STUDENTS, name)


def loss_function(name: str):
    return _lookup("losses", LOSSES, name)


def build_student(name: str, layout: Layout, config: Any = None, preset: str | None = None) -> Student:
    """A fresh student registered as ``name``; ``config`` is a config, a dict, or None for ``preset``."""
    cls = student_class(name)
    config_cls = getattr(cls, "Config", None)
    if config_cls is not None and attrs.has(config_cls):
        config = make_config(config_cls, config, preset)
    return cls(layout, config)


def student_tensors(student: nn.Module) -> dict[str, torch.Tensor]:
    """The student's weights, keyed for a checkpoint (prefix ``model.``, as for teachers)."""
    return model_tensors(student)


def context_tensors(contexts: list[TaskContext]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack task contexts into ``(K, T, C)`` float32 and ``(K, T)`` bool tensors."""
    tokens = torch.from_numpy(np.stack([np.asarray(c.tokens, np.float32) for c in contexts]))
    mask = torch.from_numpy(np.stack([np.asarray(c.mask, bool) for c in contexts]))
    return tokens, mask


class StudentPolicy(Policy):
    """A distilled student as a policy: ``prepare(task, context)`` generates the task's MLP once,
    ``act(obs, deterministic=True)`` runs it on raw env observations (normalising with the teacher's stats)."""

    kind = "student"

    def __init__(self, student: Student, normalizer: ObsNormalizer, meta: dict | None = None, device: str = "cpu",
                 seed: int = 0):
        self.device = torch.device(device)
        self.student = student.to(self.device).eval()
        self.normalizer = normalizer
        self.normalizer.training = False
        self.layout = student.layout
        self.meta = dict(meta or {})
        self.domain = self.meta.get("domain", "")
        self.features = list(self.layout.student_features)
        self.action_std = student.action_std
        self.task: str | None = None
        self.params: dict | None = None
        self.ctx_mask: torch.Tensor | None = None
        self.rng = np.random.default_rng(seed)

    def describe(self) -> dict:
        counters = self.meta.get("counters", {})
        return {"kind": self.kind, "domain": self.domain, "arch": self.meta.get("arch"), "config": self.meta.get("config"),
                "epochs": counters.get("epoch"), "steps": counters.get("step")}

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def prepare(self, task: str, context: TaskContext | None) -> None:
        if context is None:
            raise KdistillError(f"the student needs the context of task {task!r}; pass domain.context(task) to prepare().")
        tokens, mask = context_tensors([context])
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        with torch.no_grad():
            self.params = self.student.generate(tokens, mask)
        self.task, self.ctx_mask = task, mask[0]

    def student_view(self, obs: dict) -> np.ndarray:
        """The normalised student observation ``(N, T, S)`` of a batch of raw env observations."""
        raw = np.asarray(obs["obs"], np.float32)
        if raw.ndim == 2:
            raw = raw[None]
        return self.normalizer.normalize(raw[..., self.features])

    def act(self, obs: dict, deterministic: bool = True) -> np.ndarray:
        if self.params is None:
            raise KdistillError("call prepare(task, context) before act(): the student generates its weights per task.")
        x = torch.from_numpy(self.student_view(obs)).to(self.device)
        if "obs_mask" in obs:
            mask = torch.tensor(np.asarray(obs["obs_mask"], bool).reshape(x.shape[0], -1), device=self.device)
        else:
            mask = self.ctx_mask.expand(x.shape[0], -1)
        index = torch.zeros(x.shape[0], dtype=torch.long, device=self.device)
        extra = {}
        if self.layout.extero_features:
            if "extero" not in obs:
                raise KdistillError(f"the student reads exteroception: the observation needs 'extero' "
                                    f"({self.layout.extero_features} values); it has {sorted(obs)}.")
            extero = np.asarray(obs["extero"], np.float32).reshape(x.shape[0], -1)
            extra["extero"] = torch.from_numpy(extero).to(self.device)
        with torch.no_grad():
            mu = self.student.forward_with(self.params, x, mask, index, **extra).float().cpu().numpy()
        if deterministic:
            return mu
        return sample_actions(mu, self.action_std, self.rng)


def load_student_policy(tensors: dict, meta: dict, device: str = "cpu", seed: int = 0) -> StudentPolicy:
    """The policy stored in a student checkpoint (``meta['kind'] == 'student'``); ``seed`` drives
    stochastic actions."""
    if meta.get("kind") != "student":
        raise CheckpointError(f"checkpoint kind is {meta.get('kind')!r}, not 'student'; pass a run written by `kdistill distill`.")
    try:
        layout = Layout.from_dict(meta["layout"])
        arch = meta["arch"]
        norm_state = meta["normalizer"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"student checkpoint meta.json is incomplete ({exc}); it was not written by `kdistill distill`.") from None
    student = build_student(arch, layout, meta.get("config"))
    state = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    state = {k: (torch.as_tensor(v) if not isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    try:
        student.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"student weights do not fit a {arch!r} student with config {meta.get('config')}: {first}") from None
    normalizer = checked_normalizer(norm_state, (layout.max_tokens, layout.student_token_features))
    return StudentPolicy(student, normalizer, meta, device=device, seed=seed)
