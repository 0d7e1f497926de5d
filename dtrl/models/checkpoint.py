"""The pretrained-DT checkpoint format, read by every DT method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dtrl.config import from_dict, to_dict
from dtrl.util.io import InputError, torch_load
from dtrl.models.dt import LEGACY_MODEL_CFG, DecisionTransformer, ModelConfig, build_model


def dt_payload(model: DecisionTransformer) -> dict[str, Any]:
    """Everything needed to rebuild ``model``: weights (temperature and normalisation included) and shape."""
    return {
        "model": model.state_dict(),
        "model_cfg": to_dict(model.cfg),
        "obs_dim": model.obs_dim,
        "act_dim": model.act_dim,
    }


def dt_from_payload(payload: dict[str, Any], device: str | torch.device = "cpu",
                    dropout: float | None = None) -> DecisionTransformer:
    """Rebuild a DT; ``dropout`` overrides the stored rate (online methods may switch it off)."""
    cfg = from_dict(ModelConfig, {**LEGACY_MODEL_CFG, **payload["model_cfg"]})
    if dropout is not None:
        cfg.dropout = dropout
    model = build_model(payload["obs_dim"], payload["act_dim"], cfg, 1e-3)  # reward_scale: a buffer, loaded next
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:  # weights that do not fit the recorded shape: a damaged or foreign file
        raise InputError(f"its weights do not fit the model it describes ({str(e).splitlines()[0]})") from None
    return model.to(device)


def check_dims(model: DecisionTransformer, task: Any, obs_dim: int, act_dim: int, path: str | Path) -> None:
    """Refuse a DT made for other observation/action sizes than the task's (InputError naming the file)."""
    if (model.obs_dim, model.act_dim) != (obs_dim, act_dim):
        raise InputError(f"{path} is a DT for {model.obs_dim}-d observations and {model.act_dim}-d actions, but task "
                         f"{task.name} has {obs_dim} and {act_dim}; give the model.pt pretrained on this task "
                         f"(`dtrl pretrain --task {task.name}`)")


def load_pretrained_dt(path: str | Path, device: str | torch.device = "cpu",
                       dropout: float | None = None) -> DecisionTransformer:
    """The DT saved by ``dtrl pretrain`` at ``path`` (its ``model.pt``)."""
    fix = "delete it and rerun `dtrl pretrain`, or give another model.pt"
    ckpt = torch_load(path, fix=fix)
    if not isinstance(ckpt, dict) or "dt" not in ckpt:
        raise InputError(f"{path} is not a dtrl pretraining checkpoint (no 'dt' entry); {fix}")
    try:
        return dt_from_payload(ckpt["dt"], device, dropout)
    except InputError as e:
        raise InputError(f"{path}: {e}; {fix}") from None
    except (KeyError, TypeError) as e:
        raise InputError(f"{path}: not a complete dtrl DT payload (missing {e}); {fix}") from None
