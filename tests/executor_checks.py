"""What the executor tests share: the toy plugins their workers load, the collection settings, and the check that
two expert data folders hold the same rows."""

from __future__ import annotations

import json
from pathlib import Path

from kdistill.distill.expert_data import CollectSettings

HERE = Path(__file__).parent
PLUGINS = f"{HERE / 'ppo_toy.py'},{HERE / 'fragile_toy.py'}"
SETTINGS = CollectSettings(samples_per_task=90, num_envs=3, seed=4)  # 30 steps per task


def train_toy_teacher(run: Path) -> Path:
    """One PPO iteration of a teacher on the toy domain (its plugins loaded), written to ``run``."""
    import torch

    from kdistill.plugins import get_domain
    from test_ppo import make_trainer

    torch.set_num_threads(1)
    trainer = make_trainer(get_domain("toy"), iterations=1, run_dir=run)
    try:
        trainer.train()
    finally:
        trainer.close()
    return run


def same_folders(a: Path, b: Path) -> None:
    meta_a, meta_b = json.loads((a / "meta.json").read_text()), json.loads((b / "meta.json").read_text())
    assert meta_a == meta_b and list(meta_a["tasks"]) == list(meta_b["tasks"])  # the same tasks, in the same order
    shards = sorted(p.name for p in (a / "shards").iterdir())
    assert shards == sorted(p.name for p in (b / "shards").iterdir()) and len(shards) == len(meta_a["tasks"])
    for name in shards:
        assert (a / "shards" / name).read_bytes() == (b / "shards" / name).read_bytes(), name
