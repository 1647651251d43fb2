"""Throughput of the batched expert trainer over the 100 UNIMAL training robots.

Run with ``pytest tests/benchmarks/test_experts_speed.py --benchmark-only -s``. One benchmark round is
one full PPO update of the ``sb3`` preset (2 envs x 2048 steps per robot, then 10 epochs of 64-sample
minibatches per robot); the same pinned vector env is also stepped with uniform random actions in the
same run. ``extra_info`` holds both rates and ``ratio = trainer env steps/s / random env steps/s``
(training included); the issue's bar is a ratio of at least 0.5.
"""

from __future__ import annotations

import time

import pytest
import torch


@pytest.mark.benchmark(group="experts")
def test_batched_expert_update_vs_random_stepping(benchmark, unimal_dir):
    from kdistill.rl.experts import ExpertConfig, ExpertRunSettings, ExpertTrainer, random_step_rate
    from kdistill_unimal.domain import UnimalDomain

    domain = UnimalDomain(data_dir=unimal_dir)
    tasks = domain.tasks("train")
    config = ExpertConfig.presets()["sb3"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        settings = ExpertRunSettings(domain="unimal", tasks=tasks, preset="sb3", seed=0, steps_per_task=10**8)
        trainer = ExpertTrainer(domain, settings, config)
        random_rates = []

        def one_update():
            random_rates.append(random_step_rate(domain, tasks, config.envs_per_task, steps=200))
            start = time.perf_counter()
            trainer.train(stop_after_updates=1)
            return len(tasks) * config.batch_size / (time.perf_counter() - start)

        rate = benchmark.pedantic(one_update, rounds=2, iterations=1)
        trainer.close()
    finally:
        torch.set_num_threads(threads)
    raw = sum(random_rates) / len(random_rates)
    benchmark.extra_info.update(trainer_steps_per_s=rate, random_steps_per_s=raw, ratio=rate / raw)
    print(f"\nexperts: trainer {rate:,.0f} env steps/s, random stepping {raw:,.0f}, ratio {rate / raw:.2f}")
    assert rate > 0 and raw > 0
