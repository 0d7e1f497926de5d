"""Layer 6: the paper's methods (GRPO-DT, QGRPO, PPO-DT), the offline DT and the external-command method.
The baselines (ODT, ODT+TD3, IQL) are the sibling top-level package baselines/. Methods never import each other
except the GRPO family sharing grpo.py."""
