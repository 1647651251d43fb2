"""Cart-poles: a family of continuous-action cart-pole balancing tasks that differ by physical parameters.

The second kdistill domain and the worked example of ``docs/writing-a-domain.md``. Each task is a cart-pole
with its own pole length and mass, cart mass, gravity, actuator gain and actuator *sign*; the context is that
parameter vector (one token, ``context_kind="vector"``). A policy that does not read the context cannot tell
which way its motor pushes, so it cannot balance held-out poles; a hypernetwork student can.
"""

import gymnasium as _gym

from kdistill_cartpole.env import ENV_ID
from kdistill_cartpole.physics import CartPoleParams, ParamRanges, make_task_params  # noqa: F401

# importing the package registers its Gymnasium id, as the UNIMAL domain does:
# ``gymnasium.make("kdistill/CartPole-v0", params=..., task=...)``
if ENV_ID not in _gym.registry:
    _gym.register(id=ENV_ID, entry_point="kdistill_cartpole.env:CartPoleEnv", disable_env_checker=True)
