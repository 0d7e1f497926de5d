"""Small builders shared by tests: a tiny pretrained DT checkpoint without running pretraining."""

from __future__ import annotations

from pathlib import Path

import torch

from dtrl.models.checkpoint import dt_payload
from dtrl.envs.make import env_dims
from dtrl.util.io import atomic_torch_save
from dtrl.models.dt import DecisionTransformer, ModelConfig
from dtrl.tasks import get_task


def tiny_dt(task_name: str = "hopper-medium", seed: int = 0, **cfg) -> DecisionTransformer:
    task = get_task(task_name)
    obs_dim, act_dim = env_dims(task)
    torch.manual_seed(seed)
    params = dict(embed_dim=32, n_layers=1, n_heads=2, dropout=0.0, context_len=4, eval_context_len=2)
    params.update(cfg)
    model = DecisionTransformer(obs_dim, act_dim, ModelConfig(**params), reward_scale=task.reward_scale)
    if model.deterministic:
        # The near-zero actions of a fresh deterministic head keep hopper standing for ~250 steps; acting
        # at ~0.76 it falls within ~25, as the fresh stochastic DT does, so episodes (and tests) stay short.
        with torch.no_grad():
            model.mean_head.bias.fill_(1.0)
    return model


def write_pretrained(path: Path, model: DecisionTransformer, task: str = "hopper-medium") -> Path:
    atomic_torch_save(path, {"dt": dt_payload(model), "task": task, "seed": 0, "updates": 0})
    return path
