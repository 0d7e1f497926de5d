"""Config of offline supervised pretraining (kept apart from dtrl.pretrain so configs load without torch work)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dtrl.config import doc, require


@dataclass
class PretrainConfig:
    updates: int = doc(10_000, "Gradient updates of offline pretraining (ODT: 10k for most MuJoCo tasks).")
    batch_size: int = doc(256, "Contexts per minibatch (ODT: 256).")
    optimizer: Literal["lamb", "adamw"] = doc("lamb", "LAMB as in ODT, or AdamW.")
    lr: float = doc(1e-4, "Peak learning rate (ODT: 1e-4).")
    weight_decay: float = doc(5e-4, "Weight decay (ODT: 5e-4).")
    warmup_updates: int = doc(10_000, "Linear learning-rate warmup length in updates (ODT: 10k).")
    grad_clip: float = doc(0.25, "Global gradient-norm clip (ODT: 0.25).")
    temperature_lr: float = doc(1e-4, "Adam learning rate of the log-temperature (ODT: 1e-4).")
    entropy_samples: int = doc(1, "Monte-Carlo samples for the entropy estimate of the squashed Gaussian.")
    log_every: int = doc(100, "Updates between progress rows in pretrain.csv.")
    checkpoint_every: int = doc(1000, "Updates between resumable checkpoints.")
    eval_episodes: int = doc(10, "Evaluation episodes after pretraining (0 to skip).")
    amp: Literal["off", "bf16"] = doc("bf16", "Autocast dtype on CUDA (ignored on CPU): bf16 or off.")

    def validate(self) -> None:
        require(self.updates >= 1, "pretrain.updates must be >= 1")
        require(self.batch_size >= 1, "pretrain.batch_size must be >= 1")
        require(self.lr > 0, "pretrain.lr must be > 0")
