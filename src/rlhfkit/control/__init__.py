"""Classic control RL on gymnasium environments: where the LM trainers' ideas come from.

REINFORCE (``reinforce.py``), PPO (``ppo.py``) and DQN with optional hindsight experience
replay (``dqn.py``) train small MLP policies on any gymnasium environment with a discrete
action space; ``bitflip.py`` is the bit-flipping environment of the HER paper. Each loop is
whole in its own file and reuses the LM code's estimators and losses where the math is the
same (each docstring says which). ``rlhfkit control`` (``commands/control.py``) runs them.

gymnasium is the ``control`` extra: ``pip install 'rlhfkit[control]'``.
"""
