"""Losses as small pure tensor functions: no trainer state, no models.

Each loss cites its paper and equation and is tested against hand-computed values.

- ``policy``: masked reductions, loss aggregation, the PPO clipped surrogate, the clipped value
  loss, per-token KL estimators (k1, k2, k3) and the entropy bonus, shared by every online RL
  loop (PPO, GRPO, RLOO, REINFORCE, REINFORCE++).
- ``objectives``: each online algorithm's objective as one registered function built from
  those pieces (``grpo_objective``, ``ppo_objective``); loops look them up by name.
- ``preference``: offline losses on fixed data: SFT's masked NLL; reward models from pairs
  (Bradley-Terry, with margin), ratings (regression) and multi-rater soft labels; DPO
  (conservative), IPO and KTO; each with optional per-example weights.
"""
