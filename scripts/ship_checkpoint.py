"""Copy a run's newest checkpoint into a folder that ships with the repo: the model's weights only (no optimiser
state), optionally stored as float16 to halve its size (they load back as float32; compute stays float32).

    python scripts/ship_checkpoint.py runs/universal-teacher/hnmlp domains/unimal/pretrained/hnmlp-universal-ppo --float16

The folder gets the checkpoint, latest.json and the run's metrics.jsonl and PNGs; an existing OUT is refused."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from kdistill.io import atomic_write_json, latest_checkpoint, load_checkpoint, save_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--float16", action="store_true", help="store floating-point weights as float16")
    args = parser.parse_args(argv)
    ckpt = latest_checkpoint(args.run)
    if ckpt is None:
        print(f"error: {args.run} has no checkpoint; pass a run folder.", file=sys.stderr)
        return 2
    if args.out.exists():
        print(f"error: {args.out} exists; remove it first or choose another folder.", file=sys.stderr)
        return 2
    tensors, meta = load_checkpoint(ckpt)
    weights = {k: v.detach().cpu().numpy() for k, v in tensors.items() if k.startswith("model.")}
    if args.float16:
        weights = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()}
        meta = {**meta, "stored_dtype": "float16"}
    meta.pop("weights_sha256", None)
    save_checkpoint(args.out / ckpt.name, weights, meta)
    atomic_write_json(args.out / "latest.json", {"checkpoint": ckpt.name, "step": int(ckpt.name.split("-")[1])})
    for extra in [*args.run.glob("*.png"), *args.run.glob("*.jsonl"), *args.run.glob("*.json")]:
        if extra.name != "latest.json" and not extra.name.startswith("."):  # not the run's ownership mark
            shutil.copy2(extra, args.out / extra.name)
    print(f"{args.out}: {sum(v.nbytes for v in weights.values()) / 2**20:.1f} MiB of weights from {ckpt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
