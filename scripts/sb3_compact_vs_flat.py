"""Stable-Baselines3 PPO on one UNIMAL robot: the compact env against a hand-made flat view of the padded env.

    python scripts/sb3_compact_vs_flat.py --view compact --steps 200000 --seed 0 --out runs/sb3/compact-0.json
    python scripts/sb3_compact_vs_flat.py --view flat --steps 200000 --seed 0 --out runs/sb3/flat-0.json
    (and the same with --seed 1)
    python scripts/sb3_compact_vs_flat.py --plot runs/sb3/*.json --png docs/img/sb3-compact-vs-flat.png

``compact`` is ``kdistill/Unimal-ft-compact-v0`` (the robot's own features and actuators). ``flat`` is what a user
would write by hand around ``kdistill/Unimal-ft-v0``: every key of the padded Dict observation concatenated into one
float vector (12 x 52 state, 12 + 24 mask values, 12 x 53 context) and the 24 padded action slots. Both learners get
the same PPO (SB3 defaults for MuJoCo-style tasks: 2 envs x 2048 steps, minibatch 64, 10 epochs, lr 3e-4,
VecNormalize on observations and rewards), seed and step budget. Every --eval-every steps the mean action is played
for --eval-episodes episodes with the normalisation frozen (fixed reset seeds); the returns are raw.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

ROBOT = "floor-1409-0-12-01-12-30-07"  # the median training robot: 8 limbs, 11 dof


class FlatPadded(gym.ObservationWrapper):
    """The padded Dict observation of kdistill/Unimal-ft-v0 as one float32 vector (a hand-made flattening)."""

    def __init__(self, env):
        super().__init__(env)
        n = sum(int(np.prod(s.shape)) for s in env.observation_space.spaces.values())
        self.observation_space = gym.spaces.Box(-1e6, 1e6, (n,), np.float32)

    def observation(self, obs):
        flat = np.concatenate([np.asarray(obs[k], np.float32).reshape(-1) for k in ("obs", "obs_mask", "act_mask", "context")])
        return np.clip(flat, -1e6, 1e6)


def make(view: str, robot: str):
    import kdistill_unimal  # noqa: F401  (registers the ids)

    if view == "compact":
        return gym.make("kdistill/Unimal-ft-compact-v0", robot=robot)
    return FlatPadded(gym.make("kdistill/Unimal-ft-v0", robot=robot))


def evaluate(model, venv, view: str, robot: str, episodes: int) -> float:
    env = make(view, robot)
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=1000 + k)
        total, done = 0.0, False
        while not done:
            norm = venv.normalize_obs(obs[None])
            action, _ = model.predict(norm, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action[0])
            total += reward
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def train(view: str, robot: str, steps: int, eval_every: int, episodes: int, seed: int, out: Path) -> None:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(1)
    venv = VecNormalize(DummyVecEnv([lambda: make(view, robot) for _ in range(2)]), norm_obs=True, norm_reward=True,
                        clip_obs=10.0)
    venv.seed(seed)
    model = PPO("MlpPolicy", venv, n_steps=2048, batch_size=64, n_epochs=10, learning_rate=3e-4, gamma=0.99,
                gae_lambda=0.95, clip_range=0.2, seed=seed, device="cpu", verbose=0)
    record = {"view": view, "robot": robot, "seed": seed, "steps": steps, "eval_episodes": episodes,
              "obs_dim": int(venv.observation_space.shape[0]), "act_dim": int(venv.action_space.shape[0]),
              "curve": []}

    def point(step: int) -> None:
        venv.training = False
        ret = evaluate(model, venv, view, robot, episodes)
        venv.training = True
        record["curve"].append({"step": step, "return": ret, "wall_s": round(time.perf_counter() - start, 1)})
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(out)
        print(f"{view} {step:>8} {ret:9.1f}", flush=True)

    class Every(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next = eval_every

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                point(self.num_timesteps)
                self.next += eval_every
            return True

    start = time.perf_counter()
    point(0)
    model.learn(total_timesteps=steps, callback=Every())
    if not record["curve"] or record["curve"][-1]["step"] < model.num_timesteps:
        point(model.num_timesteps)


def plot(paths: list[Path], png: Path) -> None:
    """One colour per view: each seed's curve thin, their mean thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[dict]] = {}
    for p in paths:
        rec = json.loads(p.read_text())
        runs.setdefault(rec["view"], []).append(rec)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (view, recs), colour in zip(runs.items(), ("tab:blue", "tab:orange", "tab:green")):
        steps = [c["step"] for c in recs[0]["curve"]]
        for rec in recs:
            ax.plot([c["step"] / 1e3 for c in rec["curve"]], [c["return"] for c in rec["curve"]], color=colour,
                    lw=0.8, alpha=0.45)
        n = min(len(r["curve"]) for r in recs)
        mean = np.mean([[c["return"] for c in r["curve"][:n]] for r in recs], axis=0)
        ax.plot([s / 1e3 for s in steps[:n]], mean, color=colour, lw=2.2, marker="o", ms=3,
                label=f"{view}: {recs[0]['obs_dim']} inputs, {recs[0]['act_dim']} actions (mean of {len(recs)} seeds)")
    rec = next(iter(runs.values()))[0]
    ax.set_xlabel("env steps (thousands)")
    ax.set_ylabel(f"return, mean action ({rec['eval_episodes']} episodes)")
    ax.set_title(f"SB3 PPO on {rec['robot']}: compact env vs flattened padded env", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--view", choices=("compact", "flat"))
    ap.add_argument("--robot", default=ROBOT)
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--eval-every", type=int, default=20_000)
    ap.add_argument("--eval-episodes", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plot", nargs="+", type=Path)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.png)
    else:
        train(args.view, args.robot, args.steps, args.eval_every, args.eval_episodes, args.seed, args.out)


if __name__ == "__main__":
    main()
