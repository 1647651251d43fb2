"""Data-parallel distillation over torch.distributed (``torchrun --nproc-per-node N -m kdistill distill ...``).

Every rank loads the same data, builds the same model from the same seed and draws the same shuffle; each step,
rank r computes the gradient of its slice of the batch, weighted by the slice's share of the batch, and one
all-reduce sums the slices' gradients (and losses). The sum is the full batch's gradient, so N processes train the
same model as one process, up to the order of float additions. Rank 0 alone writes the run folder and reports.

torchrun's variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) start the group:
gloo on CPUs, NCCL on GPUs (``--device cuda`` then means each rank's own GPU, ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os

import attrs
import torch

from kdistill.errors import KdistillError


@attrs.frozen
class DataParallel:
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a batch's row indices (slices differ by at most one row)."""
        return idx.tensor_split(self.world)[self.rank]

    def all_reduce_gradients(self, params: list[torch.nn.Parameter], loss: torch.Tensor) -> float:
        """Sum every rank's gradients into each parameter's ``.grad`` and return the summed loss; one collective.
        A parameter no rank used keeps no gradient, as in one process (Adam then leaves it alone)."""
        import torch.distributed as dist

        params = [p for p in params if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        used = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
        flat = torch.cat([g.reshape(-1) for g in grads] + [used, loss.detach().reshape(1).to(grads[0])])
        dist.all_reduce(flat)
        offset = 0
        for k, (p, g) in enumerate(zip(params, grads)):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone() if flat[-1 - len(params) + k] > 0 else None
            offset += n
        return float(flat[-1])

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


def launched_world() -> int:
    """How many processes torchrun started (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise KdistillError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; run under torchrun.") from None


def rank_device(device: str) -> str:
    """A rank's own GPU under torchrun (``cuda`` -> ``cuda:LOCAL_RANK``); other devices as given."""
    if device == "cuda" and launched_world() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def data_parallel_from_env(device: str = "cpu") -> DataParallel | None:
    """The process group torchrun asked for, started on first call; None for a single process."""
    world = launched_world()
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise KdistillError("this torch build has no torch.distributed; run distillation as one process.")
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend)
        except (RuntimeError, ValueError) as exc:
            raise KdistillError(f"could not start the {backend} process group of {world} ranks: {exc}; "
                                f"start distillation with torchrun --nproc-per-node N -m kdistill distill ...") from None
    return DataParallel(dist.get_rank(), dist.get_world_size())


def close_data_parallel() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
