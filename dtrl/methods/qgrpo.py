"""QGRPO: GRPO-DT for environments that cannot be reset, with advantages from a learned twin-Q critic.

Our reconstruction (the paper names the variant, not its details). One iteration:

1. **Explore** ``explore_episodes`` episodes from env resets at the online RTG (actions sampled),
   recording each step's context; add them to a FIFO replay of whole trajectories.
2. **Critic** (TD3-style, from real transitions only): twin Q MLPs, target
   ``r + gamma * (1 - terminal) * min Q'(s', a')`` with ``a' = tanh(mean of the DT at s')`` plus clipped
   Gaussian smoothing noise, the DT reading the next step's exact context (RTG as fed). Timeouts are
   not terminals: a cut episode's last transition bootstraps from the observation after it.
   Polyak-averaged target critics; the DT itself is the target actor (it only changes in step 3).
3. **Policy** (once the critic has had ``critic_warmup_updates``): draw ``states_per_iteration`` states of
   this iteration's episodes (active sampling by action variance, as GRPO draws reset points); at
   each, sample G actions from pi_old under the recorded context, score each with min(Q1, Q2),
   group-normalise, and make token-level clipped-ratio updates (one action per token).

Nothing is ever restored, so it runs on resettable and non-resettable tasks alike.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from dtrl.models.backbone import fill_last_rtg
from dtrl.config import doc, require
from dtrl.harness.critic import TrajectoryBuffer, TwinQ, final_rtg, soft_update
from dtrl.methods.grpo import (CTX_KEYS, LearnBatch, PGConfig, PolicyGradientDT, advantage_stats, group_advantages,
                       last_slot_dist, stack_contexts)
from dtrl.util.guard import check_terms
from dtrl.harness.online import RunContext
from dtrl.models.optim import load_optimizer_state


class QGRPO(PolicyGradientDT):
    resume_fixed = ("critic_hidden", "buffer_size")  # dtrl.harness.online.OnlineMethod.resume_fixed
    @dataclass
    class Config(PGConfig):
        explore_episodes: int = doc(1, "Exploration episodes per iteration (ODT's 1 rollout per iteration): the "
                                       "critic learns from every step, so small iterations keep it fresh.")
        group_size: int = doc(8, "G: actions drawn from pi_old at each chosen state and scored by the critic "
                                 "(GRPO's default group size).")
        states_per_iteration: int = doc(256, "States per iteration at which groups are drawn (M*G = 2048 tokens), "
                                             "about a quarter of a 1000-step episode.")
        reset_sampling: Literal["variance", "squashed_variance", "uniform"] = doc(
            "variance", "How the states are drawn: weighted by the policy's pre-squash action variance (as GRPO's "
                        "reset points), by the squashed action's variance, or uniformly.")
        variance_temperature: float = doc(1.0, "Temperature of the softmax over log action-variance.")
        minibatch_size: int = doc(256, "State-action tokens per minibatch (8 minibatches of the default 2048).")
        adv_eps: float = doc(1e-8, "Added to the group std in the advantage denominator.")
        zero_spread_tol: float = doc(1e-6, "Groups with Q spread at most this times max(1, |mean|) get advantage 0.")
        critic_hidden: list[int] = doc([256, 256], "Twin-Q MLP hidden sizes (ODT+TD3: 256-256).")
        critic_lr: float = doc(3e-4, "Adam learning rate of the critics (TD3's).")
        gamma: float = doc(0.99, "Discount of the TD target (ODT+TD3: 0.99).")
        tau: float = doc(0.005, "Polyak rate of the target critics (ODT+TD3: 0.005).")
        policy_noise: float = doc(0.2, "Std of the target-action smoothing noise (TD3/ODT+TD3: 0.2).")
        noise_clip: float = doc(0.5, "Clip of the smoothing noise (TD3/ODT+TD3: 0.5).")
        critic_batch_size: int = doc(256, "Transitions per critic update (TD3: 256).")
        critic_updates_per_step: float = doc(1.0, "Critic updates per new env step (TD3's update-to-data ratio of 1).")
        critic_warmup_updates: int = doc(1000, "No policy update until the critic has made this many updates: "
                                               "group advantages from an untrained critic are noise.")
        buffer_size: int = doc(1_000_000, "Replay capacity in transitions (whole trajectories, FIFO).")
        q_reduce: Literal["min", "mean"] = doc("min", "How the twin Qs score an action for the advantage: min "
                                                      "(TD3's conservative estimate) or mean.")

        def validate(self) -> None:
            super().validate()
            require(self.group_size >= 2, "group_size must be >= 2")
            require(self.states_per_iteration >= 1, "states_per_iteration must be >= 1")
            require(0.0 < self.gamma <= 1.0 and 0.0 < self.tau <= 1.0, "gamma and tau must be in (0, 1]")
            require(self.critic_updates_per_step >= 0, "critic_updates_per_step must be >= 0")

    def __init__(self, cfg: "QGRPO.Config", ctx: RunContext):
        super().__init__(cfg, ctx)
        m = self.model
        self.critic = TwinQ(ctx.obs_dim, ctx.act_dim, cfg.critic_hidden, m.state_mean, m.state_std).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.buffer = TrajectoryBuffer(cfg.buffer_size, self.k)
        self.critic_updates = 0
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(ctx.seed + 104_729)
        self._fraction = 0.0  # carries fractional critic updates between iterations

    # -- critic ----------------------------------------------------------------------------------------
    def critic_step(self) -> tuple[float, float]:
        cfg = self.cfg
        b = self.buffer.sample(cfg.critic_batch_size, self.ctx.np_rng)
        obs, act = self.to_device(b["obs"]), self.to_device(b["act"])
        rew, term = self.to_device(b["rew"]), self.to_device(b["term"], torch.float32)
        next_ctx = {k: self.to_device(v) for k, v in b["next_ctx"].items()}
        with torch.no_grad():
            was = self.model.training
            self.model.eval()
            # the next state's RTG token is never recorded: a backbone that predicts it does so here
            mean = last_slot_dist(self.model, fill_last_rtg(self.model, next_ctx)).mean
            self.model.train(was)
            noise = (torch.randn(mean.shape, generator=self.gen, device=self.device) * cfg.policy_noise
                     ).clamp(-cfg.noise_clip, cfg.noise_clip)
            a_next = (torch.tanh(mean) + noise).clamp(-1.0, 1.0)
            q1t, q2t = self.critic_target(self.to_device(b["next_obs"]), a_next)
            y = rew + cfg.gamma * (1.0 - term) * torch.minimum(q1t, q2t)
        q1, q2 = self.critic(obs, act)
        loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        soft_update(self.critic_target, self.critic, cfg.tau)
        self.critic_updates += 1
        self.ctx.counters.critic_updates += 1
        out = loss.item(), q1.mean().item()
        check_terms({"critic_loss": out[0], "critic_q_mean": out[1]},
                    {"critic_loss": "critic_lr", "critic_q_mean": "critic_lr"}, "the critic update")
        return out

    # -- policy ----------------------------------------------------------------------------------------
    def learn_batch(self, trajs, chosen: list[tuple[int, int]]) -> tuple[LearnBatch, dict[str, float]]:
        cfg, G = self.cfg, self.cfg.group_size
        ctx_np = {k: np.stack([trajs[j].contexts[k][t] for j, t in chosen]) for k in CTX_KEYS}
        obs = self.to_device(np.stack([trajs[j].observations[t] for j, t in chosen]))
        acting = stack_contexts([ctx_np], self.device)
        with torch.no_grad():
            was = self.model.training
            self.model.eval()  # pi_old acts exactly as in the rollouts: eval mode, the recorded context
            d = last_slot_dist(self.model, acting)
            self.model.train(was)
            noise = torch.randn((len(chosen), G, d.mean.shape[-1]), generator=self.gen, device=self.device)
            actions = torch.tanh(d.mean[:, None] + d.std[:, None] * noise)  # (M, G, A)
            logp_old = d.log_prob(actions.transpose(0, 1)).transpose(0, 1)  # (M, G)
            q1, q2 = self.critic(obs[:, None].expand(-1, G, -1).reshape(-1, obs.shape[-1]),
                                 actions.reshape(-1, actions.shape[-1]))
            q = torch.minimum(q1, q2) if cfg.q_reduce == "min" else 0.5 * (q1 + q2)
        q = q.view(len(chosen), G).cpu().numpy()
        adv, flat = group_advantages(q, cfg.adv_eps, cfg.zero_spread_tol)
        learner = self.learner_contexts(ctx_np, np.array([final_rtg(trajs[j]) for j, _ in chosen]))
        M = len(chosen)
        batch = LearnBatch(
            contexts=stack_contexts([learner], self.device),
            ctx_index=self.to_device(np.repeat(np.arange(M), G), torch.long),
            actions=actions.reshape(M * G, -1),
            logp_old=logp_old.reshape(-1),
            unit=self.to_device(np.arange(M * G), torch.long),
            advantages=self.to_device(adv.reshape(-1), torch.float32),
        )
        return batch, {"group_q_mean": float(q.mean()), "group_q_std": float(q.std(axis=1).mean()),
                       "zero_spread_frac": float(flat.mean()), **advantage_stats(adv)}

    def train_iteration(self) -> dict[str, float]:
        cfg = self.cfg
        trajs, finals = self.explore(record_contexts=True)
        for tr, fo in zip(trajs, finals):
            self.buffer.add(tr, fo)
        steps = sum(len(t) for t in trajs)
        self._fraction += cfg.critic_updates_per_step * steps
        n_critic = int(self._fraction)
        self._fraction -= n_critic
        closs, qmean = [], []
        for _ in range(n_critic):
            lo, qm = self.critic_step()
            closs.append(lo)
            qmean.append(qm)
        nan = float("nan")
        diag: dict[str, float] = {
            "explore_return": float(np.mean([t.total_return for t in trajs])),
            "explore_len": float(np.mean([len(t) for t in trajs])),
            "iter_critic_updates": n_critic,
            "critic_loss": float(np.mean(closs)) if closs else nan,
            "critic_q_mean": float(np.mean(qmean)) if qmean else nan,
            "buffer_size": self.buffer.size,
        }
        keys = ("group_q_mean", "group_q_std", "zero_spread_frac", "adv_mean", "adv_std", "adv_absmax",
                "reset_var_mean", "reset_var_max", "candidate_var_mean")
        if self.critic_updates < cfg.critic_warmup_updates:
            return {**diag, **{k: nan for k in keys}, **self.empty_update_diag()}
        cand = [(j, t) for j, tr in enumerate(trajs) for t in range(len(tr))]
        var = self.candidate_weights(trajs, cfg.reset_sampling)
        idx = self.draw_states(var, cfg.states_per_iteration, cfg.reset_sampling, cfg.variance_temperature)
        batch, gdiag = self.learn_batch(trajs, [cand[i] for i in idx])
        diag.update(gdiag, reset_var_mean=float(var[idx].mean()), reset_var_max=float(var[idx].max()),
                    candidate_var_mean=float(var.mean()))
        return {**diag, **self.policy_update(batch, "token")}

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "buffer": self.buffer.state_dict(), "critic_updates": self.critic_updates,
                "gen": self.gen.get_state(), "fraction": self._fraction}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        load_optimizer_state(self.critic_opt, state["critic_opt"])  # the config's critic_lr, not the checkpoint's
        self.buffer.load_state_dict(state["buffer"])
        self.critic_updates = int(state["critic_updates"])
        self.gen.set_state(state["gen"])
        self._fraction = float(state["fraction"])
