"""Reinforcement learning: PPO and the per-task expert trainer."""
