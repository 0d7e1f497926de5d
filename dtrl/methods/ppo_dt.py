"""PPO-DT: PPO for Decision Transformers with lambda-returns, the paper's comparison variant.

Our reconstruction. One iteration: ``explore_episodes`` on-policy episodes from env resets at the
online RTG (actions sampled, contexts recorded); a value function V(s, rtg, t) gives GAE(gamma,
lambda) advantages (terminals stop bootstrapping, timeouts and cut episodes bootstrap from the
observation after the last step) and lambda-return targets; then ``epochs`` passes of token-level
clipped-ratio minibatch updates of the DT, and as many value regression passes. No resets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dtrl.config import doc, require
from dtrl.harness.critic import ValueNet, final_rtg
from dtrl.util.guard import check_terms
from dtrl.methods.grpo import CTX_KEYS, LearnBatch, PGConfig, PolicyGradientDT, advantage_stats, stack_contexts
from dtrl.harness.online import RunContext
from dtrl.harness.rollout import RolloutTrajectory
from dtrl.models.optim import load_optimizer_state


def gae(rewards: np.ndarray, values: np.ndarray, next_value: float, terminal: bool, gamma: float, lam: float
        ) -> tuple[np.ndarray, np.ndarray]:
    """(advantages, lambda-returns) of one trajectory; ``next_value`` is V after its last step (unused if terminal)."""
    T = len(rewards)
    adv = np.zeros(T, dtype=np.float64)
    acc = 0.0
    for t in range(T - 1, -1, -1):
        if t == T - 1:
            nv, cont = (0.0, 0.0) if terminal else (next_value, 1.0)
        else:
            nv, cont = values[t + 1], 1.0
        delta = rewards[t] + gamma * nv * cont - values[t]
        acc = delta + gamma * lam * cont * acc
        adv[t] = acc
    return adv, adv + values


class PPODT(PolicyGradientDT):
    resume_fixed = ("value_hidden",)  # dtrl.harness.online.OnlineMethod.resume_fixed
    resume_fixed = ("value_hidden",)
    @dataclass
    class Config(PGConfig):
        explore_episodes: int = doc(4, "On-policy episodes per iteration (about 4k steps on MuJoCo, a common PPO "
                                       "batch).")
        minibatch_size: int = doc(256, "Tokens (state-action pairs) per minibatch.")
        gamma: float = doc(0.99, "Discount of the lambda-returns (PPO's usual 0.99).")
        gae_lambda: float = doc(0.95, "GAE lambda (PPO's usual 0.95).")
        normalize_advantages: bool = doc(True, "Normalise advantages over the iteration's batch (standard PPO).")
        value_hidden: list[int] = doc([256, 256], "Value MLP hidden sizes (as the QGRPO critic).")
        value_lr: float = doc(3e-4, "Adam learning rate of the value function.")
        value_epochs: int = doc(4, "Value regression passes over the batch per iteration (as many as the policy's).")
        value_scale: float | None = doc(None, "Value targets are regressed in units of return * value_scale; "
                                              "null = the task's reward_scale (the DT's RTG scale).")

        def validate(self) -> None:
            super().validate()
            require(0.0 < self.gamma <= 1.0 and 0.0 <= self.gae_lambda <= 1.0, "gamma in (0, 1], gae_lambda in [0, 1]")

    def __init__(self, cfg: "PPODT.Config", ctx: RunContext):
        super().__init__(cfg, ctx)
        m, task = self.model, ctx.task
        self.value = ValueNet(ctx.obs_dim, cfg.value_hidden, m.state_mean, m.state_std, task.reward_scale,
                              task.max_episode_steps, cfg.value_scale or task.reward_scale).to(self.device)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr)

    def _values(self, obs: np.ndarray, rtg: np.ndarray, ts: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.value(self.to_device(obs, torch.float32), self.to_device(rtg, torch.float32),
                              self.to_device(ts, torch.long)).double().cpu().numpy()

    def advantages(self, trajs: list[RolloutTrajectory], finals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        advs, rets = [], []
        for tr, fo in zip(trajs, finals):
            v = self._values(tr.observations, tr.policy_rtg, tr.timesteps)
            nv = self._values(fo[None], np.array([final_rtg(tr)]), tr.timesteps[-1:] + 1)[0]
            a, r = gae(tr.rewards.astype(np.float64), v, nv, bool(tr.terminals[-1]), self.cfg.gamma,
                       self.cfg.gae_lambda)
            advs.append(a)
            rets.append(r)
        return np.concatenate(advs), np.concatenate(rets)

    def value_update(self, trajs: list[RolloutTrajectory], returns: np.ndarray) -> float:
        cfg = self.cfg
        obs = self.to_device(np.concatenate([t.observations for t in trajs]), torch.float32)
        rtg = self.to_device(np.concatenate([t.policy_rtg for t in trajs]), torch.float32)
        ts = self.to_device(np.concatenate([t.timesteps for t in trajs]), torch.long)
        target = self.to_device(returns * self.value.value_scale, torch.float32)
        N, mb = len(target), max(1, min(cfg.minibatch_size, len(target)))
        losses = []
        for _ in range(cfg.value_epochs):
            perm = self.to_device(self.ctx.np_rng.permutation(N), torch.long)
            for lo in range(0, N, mb):
                i = perm[lo:lo + mb]
                loss = F.mse_loss(self.value.scaled(obs[i], rtg[i], ts[i]), target[i])
                self.value_opt.zero_grad(set_to_none=True)
                loss.backward()
                self.value_opt.step()
                self.ctx.counters.critic_updates += 1
                losses.append(loss.item())
                check_terms({"value_loss": losses[-1]}, {"value_loss": "value_lr"}, "the value update")
        return float(np.mean(losses))

    def learn_batch(self, trajs: list[RolloutTrajectory], adv: np.ndarray) -> LearnBatch:
        parts = []
        for tr in trajs:
            ctx = {k: tr.contexts[k] for k in CTX_KEYS}
            parts.append(self.learner_contexts(ctx, final_rtg(tr)))
        N = len(adv)
        return LearnBatch(
            contexts=stack_contexts(parts, self.device),
            ctx_index=self.to_device(np.arange(N), torch.long),
            actions=self.to_device(np.concatenate([t.actions for t in trajs]), torch.float32),
            logp_old=self.to_device(np.concatenate([t.log_probs for t in trajs]), torch.float32),
            unit=self.to_device(np.arange(N), torch.long),
            advantages=self.to_device(adv, torch.float32),
        )

    def train_iteration(self) -> dict[str, float]:
        cfg = self.cfg
        trajs, finals = self.explore(record_contexts=True)
        adv, ret = self.advantages(trajs, finals)
        check_terms({"advantages": float(adv.sum()), "value_targets": float(ret.sum())},
                    {"advantages": "value_lr", "value_targets": "value_lr"}, "the GAE advantages")
        raw = adv
        if cfg.normalize_advantages:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        diag = {
            "explore_return": float(np.mean([t.total_return for t in trajs])),
            "explore_len": float(np.mean([len(t) for t in trajs])),
            **advantage_stats(raw),
        }
        diag.update(self.policy_update(self.learn_batch(trajs, adv), "token"))
        diag["value_loss"] = self.value_update(trajs, ret)
        return diag

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "value": self.value.state_dict(), "value_opt": self.value_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.value.load_state_dict(state["value"])
        load_optimizer_state(self.value_opt, state["value_opt"])  # the config's value_lr, not the checkpoint's
