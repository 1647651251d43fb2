"""A student run folder written directly (no distillation): for tests of the commands that read one."""

from __future__ import annotations

import attrs
import numpy as np
import torch

from kdistill.distill.students import build_student, student_tensors
from kdistill.io import save_run_checkpoint
from kdistill.rl.normalise import ObsNormalizer


def write_student_run(run, layout, domain: str, arch: str = "hnmlp", preset: str = "small", seed: int = 0,
                      scale: float = 0.02):
    """A ``kind: student`` run whose generators are perturbed from their init (so tasks differ) and whose
    normaliser has non-trivial statistics. Returns the student module."""
    torch.manual_seed(seed)
    student = build_student(arch, layout, preset=preset)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if name.endswith("_gen.weight"):
                p.normal_(0, scale)
    rng = np.random.default_rng(seed)
    norm = ObsNormalizer((layout.max_tokens, layout.student_token_features))
    norm.rms.mean = rng.normal(0, 0.5, norm.shape)
    norm.rms.var = rng.uniform(0.2, 4, norm.shape)
    config = attrs.asdict(student.config) if attrs.has(type(getattr(student, "config", None))) else None
    meta = {"kind": "student", "domain": domain, "arch": arch, "config": config, "layout": layout.to_dict(),
            "normalizer": norm.state()}
    save_run_checkpoint(run, 1, student_tensors(student), meta)
    return student
