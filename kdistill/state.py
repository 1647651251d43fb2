"""How a model and its optimiser are stored among a checkpoint's tensors, for teachers, students and experts alike.

Model tensors are keyed ``model.<state_dict key>``; an optimiser's per-parameter state ``optim.<param id>.<name>``
(its param groups, which hold no tensors, go to meta.json).
"""

from __future__ import annotations

import torch

from kdistill.errors import CheckpointError

MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}


def load_model_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str = MODEL_PREFIX) -> None:
    """Load ``model``'s weights from ``tensors``; ``CheckpointError`` unless they fit exactly."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or bad:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                else f"shape mismatch in {bad[:3]}")
        raise CheckpointError(f"checkpoint weights do not fit this model ({what}); it was saved with another architecture or config.")
    model.load_state_dict(state)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for pid, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{OPTIM_PREFIX}{pid}.{name}"] = torch.as_tensor(value)
    return out


def optimizer_state(tensors: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """The per-parameter optimiser state stored in ``tensors`` (empty when none is stored)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIM_PREFIX):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    return state


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   param_groups: list[dict] | None = None) -> None:
    """Restore ``optimizer`` from ``tensors``, with ``param_groups`` (from meta.json) or its own current groups."""
    groups = param_groups if param_groups is not None else optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": optimizer_state(tensors), "param_groups": groups})
