"""The pretrained-DT checkpoint format, read by every DT method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dtrl.config import from_dict, to_dict
from dtrl.io import torch_load
from dtrl.model import LEGACY_MODEL_CFG, DecisionTransformer, ModelConfig


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
    model = DecisionTransformer(payload["obs_dim"], payload["act_dim"], cfg)
    model.load_state_dict(payload["model"])
    return model.to(device)


def load_pretrained_dt(path: str | Path, device: str | torch.device = "cpu",
                       dropout: float | None = None) -> DecisionTransformer:
    """The DT saved by ``dtrl pretrain`` at ``path`` (its ``model.pt``)."""
    ckpt = torch_load(path)
    if "dt" not in ckpt:
        raise ValueError(f"{path} is not a dtrl pretraining checkpoint (no 'dt' entry)")
    return dt_from_payload(ckpt["dt"], device, dropout)
