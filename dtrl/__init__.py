"""dtrl: online finetuning of Decision Transformers with pure RL gradients, and its baselines."""

__version__ = "0.1.0"
