"""The backbone seam: what the rollout engine, the DT methods and pretraining ask of a sequence model.

A backbone is an ``nn.Module`` registered in ``dtrl.config.registry.BACKBONES`` (``model.backbone`` names it),
built as ``cls(obs_dim, act_dim, model_cfg, reward_scale)``, with:

- ``forward(states, actions, rtg, timesteps, mask) -> SquashedGaussian``: contexts in (raw states and
  returns-to-go, left-padded, ``mask`` True on real steps), the action distribution at every position
  out. Every ratio method re-evaluates recorded actions through this alone.
- ``predicts_rtg`` and ``predict_rtg(...) -> (B,)``: what the backbone needs in its context. False: the
  RTG token is the running target (target minus rewards so far, the DT). True: before acting, the
  engine asks the backbone for the last slot's RTG token and writes it there (Reinformer's predicted
  return); the token is recorded as ``policy_rtg`` like any other, so the learner re-evaluates the
  action under exactly the token it was taken with.
- ``act_context_len``: timesteps of context it acts with by default.
- ``supervised_terms(states, actions, rtg, timesteps, mask, entropy_samples) -> dict`` (optional; the
  DT's is in dtrl.harness.pretrain): its offline loss terms, ``loss`` and ``loss_temperature`` back-propagated
  together, the rest detached diagnostics.
- ``policy_parameters()``, ``log_temperature``, ``temperature``, ``target_entropy``,
  ``set_state_normalization(mean, std)``, ``cfg``, ``obs_dim``, ``act_dim``, ``backbone`` (its name).

A third backbone is one module with this interface and one line in ``BACKBONES``.
"""

from __future__ import annotations

import importlib

import torch

from dtrl.config.model import ModelConfig


def backbone_class(name: str) -> type:
    from dtrl.config.registry import BACKBONES

    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}. Known: {', '.join(BACKBONES)}")
    module, cls = BACKBONES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_backbone(obs_dim: int, act_dim: int, cfg: ModelConfig, reward_scale: float = 1e-3,
                   state_mean=None, state_std=None) -> torch.nn.Module:
    """The backbone ``cfg.backbone`` names, with the dataset's state statistics when given."""
    model = backbone_class(cfg.backbone)(obs_dim, act_dim, cfg, reward_scale)
    if state_mean is not None:
        model.set_state_normalization(state_mean, state_std)
    return model


@torch.no_grad()
def fill_last_rtg(model: torch.nn.Module, contexts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``contexts`` with the last slot's RTG token the backbone would act with (unchanged for the DT).

    For contexts built from stored trajectories whose last slot was never acted in (a critic's next
    state), where no recorded token exists."""
    if not getattr(model, "predicts_rtg", False):
        return contexts
    c = contexts
    rtg = c["rtg"].clone()
    rtg[:, -1] = model.predict_rtg(c["states"], c["actions"], c["rtg"], c["timesteps"], c["mask"])
    return {**contexts, "rtg": rtg}
