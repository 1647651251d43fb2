"""UNIMAL: universal morphology control on MuJoCo (the first kdistill domain).

Importing the package registers the Gymnasium id ``kdistill/Unimal-ft-v0`` (flat-terrain locomotion):
``gymnasium.make("kdistill/Unimal-ft-v0", robot="NAME", data_dir=None)``.
"""

from __future__ import annotations

import gymnasium as _gym

ENV_IDS = {"ft": "kdistill/Unimal-ft-v0"}

if ENV_IDS["ft"] not in _gym.registry:
    # the episode limit lives inside the env (1000 steps -> truncated), so no TimeLimit wrapper here
    _gym.register(id=ENV_IDS["ft"], entry_point="domains.unimal.env:UnimalEnv")
