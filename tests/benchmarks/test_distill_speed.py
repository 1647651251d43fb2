"""Distillation speed: generating the HN-MLP's weights once per task in a batch vs once per row.

Run with ``pytest tests/benchmarks/test_distill_speed.py --benchmark-only -s``. One training step is
generate + forward + balanced MSE + backward + gradient clipping + Adam, at the reference's batch of 5120
rows, for the UNIMAL-sized HN-MLP (12 tokens x 17 features, 53 context features, hidden 256, 9.57 M
hypernetwork parameters) on synthetic rows spread over 100 tasks. The per-task step is the benchmark; the
per-row step (the original code's way, ~2.4 GB of generated weights per batch) is timed in the same test,
and both rates and their ratio are stored in ``extra_info`` and printed.
"""

from __future__ import annotations

import time

import torch

from kdistill.distill.losses import mse_loss
from kdistill.distill.students import HNMLPStudent
from kdistill.distill.training import DistillConfig
from kdistill.domain import Layout

LAYOUT = Layout(max_tokens=12, obs_features=52, student_features=tuple(range(13)) + (30, 31, 41, 42),
                context_features=53, actions_per_token=2)
TASKS, BATCH = 100, DistillConfig().batch_size


def synthetic_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T, S, C, A = 12, 17, 53, 2
    n_real = torch.randint(5, 12, (TASKS,), generator=g)  # 5..11 bodies, like the UNIMAL robots
    ctx_mask = torch.arange(T)[None] >= n_real[:, None]
    context = torch.randn(TASKS, T, C, generator=g) * (~ctx_mask)[..., None]
    task = torch.randint(0, TASKS, (BATCH,), generator=g)
    act_mask = ctx_mask[task].repeat_interleave(A, dim=1)
    return {"context": context, "ctx_mask": ctx_mask, "task_index": task, "obs": torch.randn(BATCH, T, S, generator=g),
            "obs_mask": ctx_mask[task], "act_mask": act_mask, "mu": torch.randn(BATCH, T * A, generator=g)}


def make_step(student, optimizer, batch, per_task: bool):
    def step():
        if per_task:
            present, local = torch.unique(batch["task_index"], return_inverse=True)
            params = student.generate(batch["context"][present], batch["ctx_mask"][present])
            mu = student.forward_with(params, batch["obs"], batch["obs_mask"], local)
        else:
            k = batch["task_index"]
            mu = student(batch["obs"], batch["context"][k], batch["ctx_mask"][k])
        loss = mse_loss(mu, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 0.5)
        optimizer.step()

    return step


def test_distill_step_per_task_vs_per_sample(benchmark):
    torch.manual_seed(0)
    student = HNMLPStudent(LAYOUT).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3, eps=1e-5)
    batch = synthetic_batch()

    per_sample = make_step(student, optimizer, batch, per_task=False)
    per_sample()  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        per_sample()
        times.append(time.perf_counter() - start)
    per_sample_rate = BATCH / min(times)

    benchmark.pedantic(make_step(student, optimizer, batch, per_task=True), rounds=10, warmup_rounds=2)
    per_task_rate = BATCH / benchmark.stats.stats.min
    ratio = per_task_rate / per_sample_rate
    benchmark.extra_info.update(per_task_samples_per_s=per_task_rate, per_sample_samples_per_s=per_sample_rate,
                                ratio=ratio, batch=BATCH, tasks=TASKS, threads=torch.get_num_threads())
    print(f"\ndistill step at batch {BATCH}, {TASKS} tasks, {torch.get_num_threads()} threads: "
          f"per task {per_task_rate:,.0f} samples/s, per sample {per_sample_rate:,.0f} samples/s, ratio {ratio:.1f}x")
