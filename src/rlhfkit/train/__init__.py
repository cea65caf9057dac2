"""Training loops (SFT, reward model, DPO, GRPO, PPO, hindsight) and the kit they share."""
