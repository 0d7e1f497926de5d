"""Shared base of the online methods that finetune the pretrained Decision Transformer."""

from __future__ import annotations

from typing import Any

import torch

from dtrl.models.checkpoint import check_dims, dt_payload, load_pretrained_dt
from dtrl.config import ConfigError
from dtrl.config.pretrain import HEAD_DIRS
from dtrl.harness.evaluate import evaluate_dt_episodes
from dtrl.harness.online import Evaluation, OnlineMethod, RunContext
from dtrl.harness.rollout import RolloutEngine


class DTMethod(OnlineMethod):
    """Loads the pretrained DT (``self.model``) and evaluates it with a reusable batched engine.

    ``dropout`` (from the subclass's config, if it has that field) overrides the pretrained rate:
    online RL methods switch it off so the acting and learning policies are the same function.
    """

    def __init__(self, cfg: Any, ctx: RunContext):
        super().__init__(cfg, ctx)
        if ctx.pretrained_path is None:
            raise ValueError(f"{type(self).__name__} needs a pretrained DT (dtrl pretrain) but none was given")
        self.model = load_pretrained_dt(ctx.pretrained_path, ctx.device, dropout=getattr(cfg, "dropout", None))
        check_dims(self.model, ctx.task, ctx.obs_dim, ctx.act_dim, ctx.pretrained_path)
        head = self.model.cfg.action_head
        if head != self.pretrained_head:
            raise ConfigError(f"{type(self).__name__} finetunes a DT with the {self.pretrained_head} action head, but "
                              f"{ctx.pretrained_path} holds a {head} one; pretrain it with "
                              f"`--set model.action_head={self.pretrained_head}` (the workflow writes it under "
                              f"{HEAD_DIRS[self.pretrained_head]}/)")
        backbone = self.model.backbone
        if self.backbones is not None and backbone not in self.backbones:
            raise ConfigError(f"{type(self).__name__} cannot finetune {ctx.pretrained_path}, a {backbone} backbone: "
                              f"{self.backbone_refusal}")
        self._eval_engine: RolloutEngine | None = None

    def evaluate(self, episodes: int, seed: int) -> Evaluation:
        n_envs = self.ctx.eval_cfg.n_envs or episodes
        if self._eval_engine is None or self._eval_engine.n < min(n_envs, episodes):
            self._eval_engine = RolloutEngine(self.ctx.task, n_envs, self.model.cfg.context_len, self.ctx.device,
                                              seed=seed)
        returns, lengths, goal = evaluate_dt_episodes(self.model, self.ctx.task, episodes, seed=seed,
                                                      rtg=self.eval_rtg(), engine=self._eval_engine)
        self.ctx.counters.env_steps_eval += int(lengths.sum())
        return Evaluation(returns, goal)

    def eval_rtg(self) -> float:
        """eval.rtg, else the task's eval_rtg: ODT's rule (relabeling trains every RTG up to the best seen)."""
        rtg = self.ctx.eval_cfg.rtg
        return float(self.ctx.task.eval_rtg if rtg is None else rtg)

    def eval_rtg_rule(self) -> str:
        return "task:eval_rtg" if self.ctx.eval_cfg.rtg is None else "eval.rtg"

    def state_dict(self) -> dict[str, Any]:
        return {"dt": dt_payload(self.model)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["dt"]["model"])


def set_requires_grad(params, flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def move_to(d: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: torch.as_tensor(v).to(device) for k, v in d.items()}
