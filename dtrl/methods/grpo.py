"""GRPO-DT: online finetuning of a pretrained Decision Transformer with pure RL gradients.

One iteration (PAPER.md, "One reading of a GRPO-DT iteration"; the defaults are ours):

1. **Explore**: ``explore_episodes`` episodes from env resets at the RTG the method trains under
   (``rtg``: the task's eval_rtg by default, which evaluation then also uses), actions sampled,
   simulator state and the RTG tokens as fed recorded at every step.
2. **Reset points**: ``reset_points`` steps of those episodes, drawn with probability
   ``softmax(log var / variance_temperature)`` of the pre-squash action variance (active sampling) or
   of the squashed action's variance, or uniformly (ablation).
3. **Groups**: from each reset point (simulator *and* DT context restored exactly) ``group_size``
   continuations: ``traj_len`` sampled steps (their log-probs under the acting policy pi_old are
   recorded) then up to ``eval_len`` mean-action steps. A member's score is its summed reward.
4. **Advantages**: ``A_i = (R_i - mean R) / (std R + eps)`` within each group.
5. **Updates**: ``epochs`` passes of minibatches of sub-trajectories; the ratio of a member is
   ``exp(sum_t log pi_theta - log pi_old)`` over its sampled steps (``ratio: sequence``;
   ``geometric``, the mean instead of the sum, and ``token`` are the alternatives), each step
   re-evaluated under exactly the context it was sampled in; loss
   ``-mean min(rho A, clip(rho, 1-eps, 1+eps) A) - entropy_coef * entropy``. No supervised term.

``relabel: learner`` reproduces ODT's hindsight relabeling inside this objective: the learner's
log-prob uses contexts whose RTG tokens are replaced by the return actually achieved from each
position (to the end of the collected sub-trajectory), while pi_old's log-prob stays the one recorded
at rollout time under the rollout RTG. That is the mismatch the paper blames for the instability.
``relabel: both`` re-evaluates pi_old under the relabeled contexts too (PAPER.md's formula).

The shared machinery (exploration, learner batches, the clipped update and its diagnostics) lives
in :class:`PolicyGradientDT`; :mod:`dtrl.methods.qgrpo` (critic advantages, no resets) and
:mod:`dtrl.methods.ppo_dt` (GAE advantages) reuse it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from dtrl.config import ConfigError, doc, require
from dtrl.harness.critic import final_rtg
from dtrl.harness.dt_method import DTMethod
from dtrl.util.guard import check_parameters, check_terms, check_values
from dtrl.models.dt import DecisionTransformer, SquashedGaussian
from dtrl.harness.online import RunContext
from dtrl.harness.rollout import RolloutEngine, RolloutTrajectory, Start
from dtrl.models.optim import load_optimizer_state

CTX_KEYS = ("states", "actions", "rtg", "timesteps", "mask")


# -- small pieces, public so tests can pin them down -----------------------------------------------

def group_advantages(returns: np.ndarray, eps: float = 1e-8, zero_spread_tol: float = 1e-6
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Group-normalised advantages of ``returns`` (M groups, G members): (advantages (M, G), zero_spread (M,)).

    Within a group the advantages have mean 0 and (population) std 1. A group whose spread is at or
    below ``zero_spread_tol * max(1, |mean|)`` teaches nothing and gets advantages exactly 0.
    """
    r = np.asarray(returns, dtype=np.float64)
    mean = r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, keepdims=True)
    flat = std[:, 0] <= zero_spread_tol * np.maximum(1.0, np.abs(mean[:, 0]))
    adv = (r - mean) / (std + eps)
    adv[flat] = 0.0
    return adv, flat


RATIO_KINDS = ("sequence", "geometric", "token")


def selection_probs(action_var: np.ndarray, mode: str, temperature: float) -> np.ndarray:
    """Probability of drawing each candidate state: softmax(log var / temperature), or uniform.

    ``action_var`` is whichever variance ``mode`` weights by (pre-squash or squashed action).
    """
    v = np.asarray(action_var, dtype=np.float64)
    if mode == "uniform" or len(v) == 0:
        return np.full(len(v), 1.0 / max(1, len(v)))
    logits = np.log(np.maximum(v, 1e-30)) / temperature
    logits -= logits.max()
    p = np.exp(logits)
    return p / p.sum()


LOG_RATIO_QUANTILES = (0.05, 0.5, 0.95)  # logged per iteration as log_ratio_q05 / _q50 / _q95


def approx_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """The low-variance KL(pi_old || pi) estimator mean((r - 1) - log r) over samples from pi_old."""
    return ((log_ratio.exp() - 1.0) - log_ratio).mean()


def relabel_contexts(contexts: dict[str, np.ndarray], offset: np.ndarray | float) -> dict[str, np.ndarray]:
    """Contexts with hindsight RTG tokens: every real token ``g`` becomes ``g - offset``.

    A rollout's RTG tokens are ``g_0 - (rewards so far)`` along its whole path, so with ``offset`` the
    token after its last step, ``g - offset`` is exactly the return achieved from that position on.
    """
    out = dict(contexts)
    off = np.asarray(offset, dtype=np.float32).reshape(-1, *([1] * (contexts["rtg"].ndim - 1)))
    out["rtg"] = np.where(contexts["mask"], contexts["rtg"] - off, 0.0).astype(np.float32)
    return out


def last_slot_dist(model: DecisionTransformer, contexts: dict[str, torch.Tensor],
                   rows: torch.Tensor | None = None) -> SquashedGaussian:
    """The action distribution at the last slot of the given contexts, as the rollout engine acts."""
    c = contexts if rows is None else {k: v[rows] for k, v in contexts.items()}
    dist = model(c["states"], c["actions"], c["rtg"], c["timesteps"], c["mask"])
    return SquashedGaussian(dist.mean[:, -1], dist.log_std[:, -1])


@dataclass
class LearnBatch:
    """Sampled actions to re-evaluate, each under the exact context it was taken in.

    Tokens are grouped into ratio *units* (a GRPO sub-trajectory; or the token itself), sorted by unit.
    """

    contexts: dict[str, torch.Tensor]  # (C, k, .) what the learner feeds (RTG relabeled iff relabel)
    ctx_index: torch.Tensor  # (N,) long: the context row of each token
    actions: torch.Tensor  # (N, A)
    logp_old: torch.Tensor  # (N,) log pi_old(a | context as fed at rollout time), never recomputed
    unit: torch.Tensor  # (N,) long, ascending
    advantages: torch.Tensor  # (U,) one per unit

    @property
    def n_units(self) -> int:
        return int(self.advantages.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.actions.shape[0])


def minibatch_log_ratios(model: DecisionTransformer, batch: "LearnBatch", units: torch.Tensor, ratio: str):
    """Log-ratios of the ratio units ``units`` (sorted): (log_rho, advantages, per-token log-ratios, distribution).

    Each token is re-evaluated under its own recorded context (contexts shared by several tokens are
    run once). ``sequence``: one log-ratio per unit, the sum over its tokens (joint likelihood, no
    length normalisation); ``geometric``: the mean over its tokens (GSPO's length-normalised ratio,
    the geometric mean of the per-step ratios); ``token``: one per token, paired with its unit's
    advantage.
    """
    tok = torch.isin(batch.unit, units).nonzero().squeeze(1)
    rows, inv = torch.unique(batch.ctx_index[tok], return_inverse=True)
    d = last_slot_dist(model, batch.contexts, rows)
    logp = SquashedGaussian(d.mean[inv], d.log_std[inv]).log_prob(batch.actions[tok])
    log_ratio_tok = logp - batch.logp_old[tok]
    if ratio in ("sequence", "geometric"):
        local = torch.searchsorted(units, batch.unit[tok])
        log_rho = torch.zeros(len(units), device=log_ratio_tok.device).index_add(0, local, log_ratio_tok)
        if ratio == "geometric":
            log_rho = log_rho / torch.bincount(local, minlength=len(units)).clamp_min(1)
        return log_rho, batch.advantages[units], log_ratio_tok, d
    return log_ratio_tok, batch.advantages[batch.unit[tok]], log_ratio_tok, d


def carries_gradient(rho: torch.Tensor, adv: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """Which ratio units the clipped surrogate passes a policy gradient through (bool, per unit).

    ``min(rho A, clip(rho) A)`` is flat in theta where the clipped term is the smaller one, i.e.
    ``rho > 1 + eps`` with ``A > 0`` or ``rho < 1 - eps`` with ``A < 0``; ``A = 0`` carries none.
    """
    flat = ((rho > 1.0 + clip_eps) & (adv > 0)) | ((rho < 1.0 - clip_eps) & (adv < 0))
    return ~flat & (adv != 0)


def stack_contexts(parts: list[dict[str, np.ndarray]], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.concatenate([p[k] for p in parts]), device=device) for k in CTX_KEYS}


# -- the shared method machinery -------------------------------------------------------------------

@dataclass
class PGConfig:
    """Fields every pure-RL-gradient DT method shares (each method re-declares those whose default differs)."""

    relabel: Literal["none", "learner", "both"] | bool = doc(
        "none", "Hindsight RTG relabeling (ODT's practice), two readings. none: the paper's method, both "
                "log-probs under the RTG tokens fed at rollout time. learner: the learner's log-prob uses "
                "contexts whose RTG tokens are the returns actually achieved, pi_old's stays the one recorded "
                "under the rollout RTG (the ratio mismatch the paper identifies; the first ratios are not 1). "
                "both: pi_old is re-evaluated under the relabeled contexts too, PAPER.md's formula "
                "pi_theta(a|h,g_actual) / pi_old(a|h,g_actual), which starts at 1 although the actions were not "
                "drawn under that conditioning. true/false are the old spellings of learner/none.")
    dropout: float | None = doc(0.0, "Dropout during finetuning, overriding the pretrained rate (null keeps it). Off, "
                                     "so the acting policy (eval mode) and the learner are the same function and the "
                                     "first minibatch's ratios are exactly 1.")
    rollout_context_len: int | None = doc(None, "Context (timesteps) the policy acts with during online rollouts; "
                                                "null = the backbone's acting context (the DT: model.eval_context_len, "
                                                "as ODT acts; Reinformer: model.context_len). The learner re-evaluates "
                                                "every action under the same recorded context.")
    explore_episodes: int = doc(4, "Exploration episodes from env resets per iteration (ODT: 1). 4 gives reset "
                                   "points from several starts at a small step cost next to the groups.")
    rtg: Literal["eval", "online"] = doc(
        "eval", "Which of the task's RTG targets the method explores (and, with no relabeling, is trained) "
                "under: eval (task.eval_rtg, e.g. hopper 3600) or online (task.online_rtg, ODT's exploration "
                "target, hopper 7200). eval: without relabeling the updates only train the conditioning "
                "they explore under, so evaluation can use that same target; on the CPU Hopper sweep "
                "(docs/grpo-tuning.md) it scored no worse than online (7.5 +- 0.3 vs 7.3 +- 0.2, 3 seeds).")
    explore_rtg: float | None = doc(None, "RTG target of exploration rollouts, a number overriding `rtg`; null = "
                                          "the task's target named by `rtg`.")
    eval_at: Literal["train", "task"] = doc(
        "train", "Which RTG evaluation conditions on: train = the exploration RTG the method was trained under "
                 "(without relabeling the RL updates only ever see RTG tokens on paths that start there); task = "
                 "the harness's rule (eval.rtg, else task.eval_rtg), as ODT is evaluated. A set eval.rtg "
                 "overrides both. Every evaluation row and summary records the RTG used (eval_rtg).")
    explore_max_steps: int = doc(0, "Cut exploration episodes after this many steps (a timeout, not a terminal); "
                                    "0 = whole episodes.")
    n_envs: int = doc(0, "Envs the rollout engine steps together; 0 = as many as one iteration needs at once.")
    epochs: int = doc(4, "Passes over the iteration's batch (PPO-style; PAPER.md suggests 4).")
    minibatch_size: int = doc(32, "Ratio units per minibatch.")
    clip_eps: float = doc(0.2, "PPO clip range of the ratio (the common PPO/GRPO value), for every ratio kind not "
                               "named in clip_eps_per_ratio.")
    clip_eps_per_ratio: dict[str, float] = doc(
        {"geometric": 0.05}, "Clip range per ratio kind (sequence, geometric, token), overriding clip_eps. The "
                             "geometric (length-normalised) ratio moves far less than the product of its steps' "
                             "ratios, so it gets a narrower range (GSPO uses 3e-4 over LLM sequences of "
                             "thousands of tokens; ours have L_traj = 10-20).")
    entropy_coef: float = doc(1e-3, "Weight of the entropy bonus (Monte-Carlo entropy of the squashed Gaussian); "
                                    "small, as a pure RL objective only needs it to keep exploration alive.")
    lr: float = doc(3e-5, "Adam learning rate of the DT (PAPER.md: 1e-5 to 1e-4; the middle of that range in log "
                          "scale, small because the pretrained policy is already good).")
    weight_decay: float = doc(0.0, "Adam weight decay (none: no supervised anchor is wanted either).")
    max_grad_norm: float = doc(1.0, "Clip the DT's gradient norm per update (0 = no clipping); guards against the "
                                    "rare huge sequence ratio with a negative advantage.")
    max_log_ratio: float = doc(20.0, "Clamp |log ratio| before exponentiating so a mismatched ratio (relabel: true) "
                                     "is huge but finite; diagnostics report the unclamped value.")
    target_kl: float | None = doc(None, "Stop the iteration's epochs once a minibatch's approx KL exceeds 1.5x this "
                                        "(null = never; the paper mentions no early stopping).")

    def validate(self) -> None:
        require(self.explore_episodes >= 1, "explore_episodes must be >= 1")
        require(self.epochs >= 1 and self.minibatch_size >= 1, "epochs and minibatch_size must be >= 1")
        require(0.0 < self.clip_eps < 1.0, "clip_eps must be in (0, 1)")
        require(self.lr > 0, "lr must be > 0")
        require(self.dropout is None or 0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(self.rollout_context_len is None or self.rollout_context_len >= 1, "rollout_context_len must be >= 1")
        require(self.max_log_ratio > 0, "max_log_ratio must be > 0")
        bad = sorted(set(self.clip_eps_per_ratio) - set(RATIO_KINDS))
        require(not bad, f"clip_eps_per_ratio: unknown ratio kind(s) {bad}; use {list(RATIO_KINDS)}")
        require(all(0.0 < v < 1.0 for v in self.clip_eps_per_ratio.values()),
                "clip_eps_per_ratio: every clip range must be in (0, 1)")

    @property
    def relabel_mode(self) -> str:
        """``relabel`` as one of none / learner / both (true and false are accepted as learner / none)."""
        if isinstance(self.relabel, bool):
            return "learner" if self.relabel else "none"
        return self.relabel

    def clip_for(self, ratio: str) -> float:
        return float(self.clip_eps_per_ratio.get(ratio, self.clip_eps))


class PolicyGradientDT(DTMethod):
    """Exploration, learner batches and the clipped policy update shared by GRPO, QGRPO and PPO-DT.

    They reach the model only through the backbone seam (dtrl.models.backbone): the engine's rollouts, and
    ``model(contexts)`` on the recorded contexts. On a backbone that predicts its RTG token (Reinformer),
    the token recorded at rollout time is part of the recorded context, exactly as the DT's target RTG is,
    so the learner re-evaluates each action under the very conditioning it was sampled with.
    """

    uses_resets = False  # GRPO restores simulator states; the others never do
    backbones = None  # any backbone (dtrl.config.registry.BACKBONES)
    # Loss terms checked after each minibatch (dtrl.util.guard), with the config field blamed when one is non-finite.
    POLICY_FAULT_KEYS = {"policy_loss": "lr", "entropy": "entropy_coef", "grad_norm": "lr"}

    def __init__(self, cfg: Any, ctx: RunContext):
        super().__init__(cfg, ctx)
        m = self.model
        if cfg.relabel_mode != "none" and m.predicts_rtg:
            raise ConfigError(f"relabel: {cfg.relabel_mode} rewrites RTG tokens as target minus rewards, but the "
                              f"{m.backbone} backbone predicts its own RTG tokens; use relabel: none")
        self.k = min(cfg.rollout_context_len or m.act_context_len, m.cfg.context_len)
        self.device = ctx.device
        self.engine = RolloutEngine(ctx.task, self._engine_envs(), m.cfg.context_len, ctx.device, seed=ctx.seed)
        self.opt = torch.optim.Adam(m.policy_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.first_minibatch_ratios: np.ndarray | None = None  # ratios of the last iteration's first minibatch

    def _engine_envs(self) -> int:
        return self.cfg.n_envs or self.cfg.explore_episodes

    # -- the RTG it is trained and evaluated under ------------------------------------------------------
    def train_rtg(self) -> float:
        """The RTG target exploration (and so every group and learner context) starts from."""
        cfg, task = self.cfg, self.ctx.task
        if cfg.explore_rtg is not None:
            return float(cfg.explore_rtg)
        return float(task.eval_rtg if cfg.rtg == "eval" else task.online_rtg)

    def eval_rtg(self) -> float:
        if self.ctx.eval_cfg.rtg is None and self.cfg.eval_at == "train":
            return self.train_rtg()
        return super().eval_rtg()

    def eval_rtg_rule(self) -> str:
        if self.ctx.eval_cfg.rtg is None and self.cfg.eval_at == "train":
            return "train" if self.cfg.explore_rtg is not None else f"train:{self.cfg.rtg}_rtg"
        return super().eval_rtg_rule()

    def learner_contexts(self, ctx: dict[str, np.ndarray], offset) -> dict[str, np.ndarray]:
        """The contexts the learner re-evaluates a rollout's actions under: relabeled unless relabel is none."""
        return ctx if self.cfg.relabel_mode == "none" else relabel_contexts(ctx, offset)

    @torch.no_grad()
    def old_logp_under_learner_contexts(self, batch: LearnBatch) -> None:
        """relabel: both — replace the recorded pi_old log-probs by pi_old's under the learner's contexts."""
        was = self.model.training
        self.model.eval()  # as the acting policy: the first minibatch's ratios are then exactly 1
        d = last_slot_dist(self.model, batch.contexts)
        batch.logp_old = SquashedGaussian(d.mean[batch.ctx_index], d.log_std[batch.ctx_index]).log_prob(batch.actions)
        self.model.train(was)

    # -- rollouts --------------------------------------------------------------------------------------
    def explore(self, record_contexts: bool, sample: bool = True) -> tuple[list[RolloutTrajectory], np.ndarray]:
        """This iteration's exploration episodes and the observation after each one's last step; their
        actions are sampled from the policy, or its mean actions with ``sample=False``."""
        cfg, c = self.cfg, self.ctx.counters
        rtg = self.train_rtg()
        seeds = self.ctx.np_rng.integers(0, 2**31 - 1, size=cfg.explore_episodes)
        trajs: list[RolloutTrajectory] = []
        finals = []
        for lo in range(0, len(seeds), self.engine.n):
            starts = [Start(target_rtg=rtg, seed=int(s)) for s in seeds[lo:lo + self.engine.n]]
            trajs += self.engine.run(self.model, starts, sample_steps=0, sample_all=sample,
                                     max_steps=cfg.explore_max_steps or None, record_sim_states=self.uses_resets,
                                     record_contexts=record_contexts, context_len=self.k)
            finals.append(self.engine.obs[:len(starts)].astype(np.float32))
        n = sum(len(t) for t in trajs)
        c.add("explore", n)
        c.env_steps += n
        return trajs, np.concatenate(finals)

    @staticmethod
    def candidate_weights(trajs: list[RolloutTrajectory], mode: str) -> np.ndarray:
        """Per candidate state, the variance active sampling weights by: the pre-squash Gaussian's
        (``variance``) or the squashed action's, which the env receives (``squashed_variance``)."""
        key = "squashed_var" if mode == "squashed_variance" else "action_var"
        return np.concatenate([getattr(tr, key) for tr in trajs]).astype(np.float64)

    def draw_states(self, action_var: np.ndarray, n: int, mode: str, temperature: float) -> np.ndarray:
        """Indices of ``n`` candidate states (without replacement while there are enough). Non-finite
        variances are a diverged policy (dtrl.util.guard), whatever the sampling mode."""
        check_values(action_var, "reset-sampling variances", "lr", "the reset-point draw")
        p = selection_probs(action_var, mode, temperature)
        return self.ctx.np_rng.choice(len(p), size=n, replace=n > len(p), p=p)

    def to_device(self, x: np.ndarray, dtype=None) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=dtype, device=self.device)

    # -- the clipped update ----------------------------------------------------------------------------
    def policy_update(self, batch: LearnBatch, ratio: str) -> dict[str, float]:
        """``epochs`` passes of clipped-ratio minibatch updates over ``batch``; returns diagnostics.

        Besides the means, ``clip_frac_epoch<e>`` is the fraction of ratios outside the clip range in
        epoch e and ``grad_frac_epoch<e>`` the fraction of ratio units that carried a policy gradient
        there (``grad_units``: their count over the iteration, one per unit and update).
        """
        cfg, model = self.cfg, self.model
        eps = cfg.clip_for(ratio)
        if cfg.relabel_mode == "both":
            self.old_logp_under_learner_contexts(batch)
        params = model.policy_parameters()
        model.train()  # dropout as configured (0 by default: identical to the acting eval mode)
        U = batch.n_units
        mb = max(1, min(cfg.minibatch_size, U))
        acc: dict[str, list] = {k: [] for k in ("ratio", "log_rho", "log_ratio", "clip", "kl", "ent", "gent", "loss", "gn")}
        clip_n = np.zeros(cfg.epochs)  # per epoch: ratios outside the clip range, units with gradient, ratios
        grad_n = np.zeros(cfg.epochs)
        seen_n = np.zeros(cfg.epochs)
        self.first_minibatch_ratios = None
        updates = 0
        stop = False
        for epoch in range(cfg.epochs):
            perm = self.ctx.np_rng.permutation(U)
            for lo in range(0, U, mb):
                us = self.to_device(np.sort(perm[lo:lo + mb]), torch.long)
                log_rho, adv, log_ratio_tok, d = minibatch_log_ratios(model, batch, us, ratio)
                rho = log_rho.clamp(-cfg.max_log_ratio, cfg.max_log_ratio).exp()
                surr = torch.minimum(rho * adv, rho.clamp(1.0 - eps, 1.0 + eps) * adv)
                policy_loss = -surr.mean()
                entropy = d.entropy().mean()
                loss = policy_loss - cfg.entropy_coef * entropy
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
                self.opt.step()
                updates += 1
                with torch.no_grad():
                    r_np = rho.detach().cpu().numpy()
                    if self.first_minibatch_ratios is None:
                        self.first_minibatch_ratios = r_np
                    kl = approx_kl(log_ratio_tok.detach().clamp(-cfg.max_log_ratio, cfg.max_log_ratio)).item()
                    acc["ratio"].append(r_np)
                    acc["log_rho"].append(log_rho.detach().cpu().numpy())
                    acc["log_ratio"].append(log_rho.detach().abs().max().item())
                    outside = ((rho - 1.0).abs() > eps).float()
                    acc["clip"].append(outside.mean().item())
                    clip_n[epoch] += outside.sum().item()
                    grad_n[epoch] += carries_gradient(rho, adv, eps).sum().item()
                    seen_n[epoch] += len(rho)
                    acc["kl"].append(kl)
                    acc["ent"].append(entropy.item())
                    acc["gent"].append(d.gaussian_entropy().mean().item())
                    acc["loss"].append(policy_loss.item())
                    acc["gn"].append(float(gn))
                check_terms({"policy_loss": acc["loss"][-1], "entropy": acc["ent"][-1], "grad_norm": acc["gn"][-1]},
                            self.POLICY_FAULT_KEYS, "the policy update")
                # The loop reads every minibatch's terms anyway: the weights are checked after each update too.
                check_parameters(model, "lr", f"the DT's parameters after update {updates} of the iteration")
                if cfg.target_kl is not None and kl > 1.5 * cfg.target_kl:
                    stop = True
                    break
            if stop:
                break
        self.ctx.counters.policy_updates += updates
        r_all = np.concatenate(acc["ratio"])
        first = self.first_minibatch_ratios
        # The distribution of unclamped log-ratios over the iteration's ratio units (every epoch): the
        # spread relabeling is blamed for, which the clamped ratio_min/max and the mean KL can hide.
        q05, q50, q95 = np.quantile(np.concatenate(acc["log_rho"]), LOG_RATIO_QUANTILES)
        with np.errstate(invalid="ignore", divide="ignore"):  # epochs skipped by early stopping: NaN
            per_epoch = {**{f"clip_frac_epoch{e + 1}": float(clip_n[e] / seen_n[e]) for e in range(cfg.epochs)},
                         **{f"grad_frac_epoch{e + 1}": float(grad_n[e] / seen_n[e]) for e in range(cfg.epochs)}}
        return {
            "iter_policy_updates": updates,  # this iteration's; the harness logs the running total
            "ratio_mean": float(r_all.mean()),
            "ratio_max": float(r_all.max()),
            "ratio_min": float(r_all.min()),
            "ratio_first_absdev": float(np.abs(first - 1.0).max()),  # 0 up to float error unless relabel/dropout
            "log_ratio_absmax": float(max(acc["log_ratio"])),  # unclamped
            "log_ratio_q05": float(q05),
            "log_ratio_q50": float(q50),
            "log_ratio_q95": float(q95),
            "clip_frac": float(np.mean(acc["clip"])),
            "grad_units": int(grad_n.sum()),
            "grad_frac": float(grad_n.sum() / seen_n.sum()),
            **per_epoch,
            "approx_kl": float(np.mean(acc["kl"])),
            "entropy": float(np.mean(acc["ent"])),
            "gaussian_entropy": float(np.mean(acc["gent"])),
            "policy_loss": float(np.mean(acc["loss"])),
            "grad_norm": float(np.mean(acc["gn"])),
            "grad_norm_max": float(np.max(acc["gn"])),
            "early_stop": float(stop),
            "lr": float(self.opt.param_groups[0]["lr"]),  # the value in force (a resume may change it)
        }

    def empty_update_diag(self) -> dict[str, float]:
        nan = float("nan")
        per_epoch = [f"{k}_epoch{e + 1}" for k in ("clip_frac", "grad_frac") for e in range(self.cfg.epochs)]
        return {k: nan for k in ("ratio_mean", "ratio_max", "ratio_min", "ratio_first_absdev", "log_ratio_absmax",
                                 "log_ratio_q05", "log_ratio_q50", "log_ratio_q95",
                                 "clip_frac", "grad_frac", *per_epoch, "approx_kl", "entropy", "gaussian_entropy",
                                 "policy_loss", "grad_norm", "grad_norm_max",
                                 "early_stop")} | {"iter_policy_updates": 0, "grad_units": 0,
                                                   "lr": float(self.opt.param_groups[0]["lr"])}

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "opt": self.opt.state_dict(), "engine_rng": self.engine.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        load_optimizer_state(self.opt, state["opt"])  # the config's lr, not the checkpoint's
        self.engine.generator.set_state(state["engine_rng"])


def advantage_stats(adv: np.ndarray) -> dict[str, float]:
    a = np.asarray(adv, dtype=np.float64)
    return {"adv_mean": float(a.mean()), "adv_std": float(a.std()), "adv_absmax": float(np.abs(a).max())}


# -- GRPO-DT -----------------------------------------------------------------------------------------

class GRPO(PolicyGradientDT):
    """GRPO for Decision Transformers: group-relative advantages from exact simulator resets."""

    uses_resets = True

    @dataclass
    class Config(PGConfig):
        ratio: Literal["sequence", "geometric", "token"] = doc(
            "sequence", "Likelihood ratio of a sub-trajectory: sequence = the joint likelihood of its sampled "
                        "actions, exp(sum of per-step log-ratios), no length normalisation (the method); geometric "
                        "= GSPO's length-normalised ratio exp(mean of per-step log-ratios), a trust region that "
                        "does not tighten with L_traj (clip range: clip_eps_per_ratio.geometric); token = one ratio "
                        "per step, each with its member's advantage (ablation).")
        reset_sampling: Literal["variance", "squashed_variance", "uniform"] = doc(
            "variance", "How reset points are drawn: weighted by the policy's pre-squash Gaussian variance there "
                        "(active sampling, the method), by the variance of the squashed action the env receives "
                        "(which is ~0 where tanh saturates however wide the Gaussian), or uniformly (ablation).")
        variance_temperature: float = doc(1.0, "Temperature of the softmax over log action-variance (1: probability "
                                               "proportional to the variance itself; larger is closer to uniform).")
        explore_actions: Literal["sample", "mean"] = doc(
            "sample", "Actions of the exploration episodes that reset points are drawn from: sampled from the "
                      "policy, or its mean action, the policy evaluation scores. PAPER.md says only 'collect a "
                      "trajectory with the current policy'. Sampled episodes of a noisy pretrained DT fall early "
                      "(Hopper medium-replay: 80-140 steps against the DT's 700-780 mean-action steps), so "
                      "every reset point lies in the first part of the episodes evaluation plays; mean-action "
                      "episodes put reset points "
                      "along the evaluated policy's own path (docs/grpo-tuning.md measures both).")
        group_size: int = doc(8, "G: continuations per reset point (PAPER.md suggests 8).")
        reset_points: int = doc(16, "M: reset points per iteration (PAPER.md suggests 16), so M*G = 128 rollouts "
                                    "stepped together.")
        traj_len: int = doc(20, "L_traj: sampled steps per continuation (PAPER.md: 20, the training context K).")
        eval_len: int = doc(400, "L_eval: mean-action steps scoring each continuation (400 on MuJoCo per the "
                                 "reviews); the score is the reward over all L_traj + L_eval steps. A member cut "
                                 "by a terminal or the time limit is scored on the steps it had, without a "
                                 "bootstrap: a terminal's missing reward is the true cost of falling, and a time-"
                                 "limit cut is the same for every member of a group (they start at the same "
                                 "timestep), so it shortens all of them alike (docs/grpo-tuning.md).")
        minibatch_size: int = doc(32, "Sub-trajectories per minibatch: 4 minibatches of the default 128, so 4 epochs "
                                      "make 16 updates per iteration.")
        adv_eps: float = doc(1e-8, "Added to the group std in the advantage denominator.")
        zero_spread_tol: float = doc(1e-6, "A group whose return std is at most this times max(1, |mean|) has zero "
                                           "spread: its advantages are 0 (it teaches nothing).")
        drop_zero_spread: bool = doc(True, "Leave zero-spread groups out of the update (as DAPO's dynamic sampling "
                                           "does): they carry no policy gradient, only the entropy bonus, which on "
                                           "its own made the policy drift once every group was saturated.")
        zero_spread_warn_iterations: int = doc(
            5, "Warn (once per streak) when every group has had zero spread for this many iterations in a row: "
               "no update is made then, so the policy stands still (and a policy emitting NaN would score "
               "whatever the simulator makes of it, which the output checks of dtrl.util.guard stop). progress.csv's "
               "zero_spread_streak column counts the streak; 0 = never warn.")

        def validate(self) -> None:
            super().validate()
            require(self.group_size >= 2, "group_size must be >= 2 (advantages are relative within a group)")
            require(self.reset_points >= 1 and self.traj_len >= 1 and self.eval_len >= 0,
                    "reset_points and traj_len must be >= 1, eval_len >= 0")
            require(self.variance_temperature > 0, "variance_temperature must be > 0")
            require(self.zero_spread_warn_iterations >= 0, "zero_spread_warn_iterations must be >= 0")

    def __init__(self, cfg: "GRPO.Config", ctx: RunContext):
        if not ctx.task.resettable:
            raise ValueError(f"task {ctx.task.name} cannot be reset to a saved simulator state (task.resettable is "
                             "false), which GRPO needs; use qgrpo")
        super().__init__(cfg, ctx)
        self.zero_spread_streak = 0  # iterations in a row in which every group had zero spread
        self._warned_no_spread = False  # the first all-flat iteration of a run is said once

    def _engine_envs(self) -> int:
        c = self.cfg
        return c.n_envs or max(c.explore_episodes, c.reset_points * c.group_size)

    def collect(self) -> tuple[LearnBatch, dict[str, float]]:
        """Explore, draw reset points, roll out the groups; the learner batch and rollout diagnostics."""
        cfg, c = self.cfg, self.ctx.counters
        explore, _ = self.explore(record_contexts=False, sample=cfg.explore_actions == "sample")
        cand = [(j, t) for j, tr in enumerate(explore) for t in range(len(tr))]
        var = self.candidate_weights(explore, cfg.reset_sampling)
        chosen = self.draw_states(var, cfg.reset_points, cfg.reset_sampling, cfg.variance_temperature)
        starts = [Start(traj=explore[cand[i][0]], t=cand[i][1]) for i in chosen for _ in range(cfg.group_size)]
        members: list[RolloutTrajectory] = []
        for lo in range(0, len(starts), self.engine.n):
            members += self.engine.run(self.model, starts[lo:lo + self.engine.n], sample_steps=cfg.traj_len,
                                       max_steps=cfg.traj_len + cfg.eval_len, record_contexts=True,
                                       context_len=self.k)
        n_sampled = int(sum(int(m.sampled.sum()) for m in members))
        n_total = int(sum(len(m) for m in members))
        c.add("sampled", n_sampled)
        c.add("scoring", n_total - n_sampled)
        c.env_steps += n_total

        returns = np.array([m.total_return for m in members]).reshape(cfg.reset_points, cfg.group_size)
        adv, flat = group_advantages(returns, cfg.adv_eps, cfg.zero_spread_tol)
        keep = np.repeat(~flat if cfg.drop_zero_spread else np.ones_like(flat), cfg.group_size)
        batch = (self.learn_batch([m for m, k in zip(members, keep) if k], adv.reshape(-1)[keep])
                 if keep.any() else None)
        diag = {
            "explore_return": float(np.mean([t.total_return for t in explore])),
            "explore_len": float(np.mean([len(t) for t in explore])),
            "group_return_mean": float(returns.mean()),
            "group_return_std": float(returns.std(axis=1).mean()),  # mean within-group spread
            "zero_spread_frac": float(flat.mean()),
            "member_len": float(n_total / len(members)),
            **advantage_stats(adv),
            "reset_var_mean": float(var[chosen].mean()),
            "reset_var_max": float(var[chosen].max()),
            "candidate_var_mean": float(var.mean()),
            "reset_t_mean": float(np.mean([cand[i][1] for i in chosen])),
        }
        return batch, diag

    def learn_batch(self, members: list[RolloutTrajectory], advantages: np.ndarray) -> LearnBatch:
        """One unit per member: its sampled steps (the first ones), their recorded contexts and log-probs."""
        parts, acts, logps, units = [], [], [], []
        for u, m in enumerate(members):
            n = int(m.sampled.sum())
            parts.append(self.learner_contexts({k: m.contexts[k][:n] for k in CTX_KEYS}, final_rtg(m)))
            acts.append(m.actions[:n])
            logps.append(m.log_probs[:n])
            units.append(np.full(n, u))
        N = sum(len(a) for a in acts)
        return LearnBatch(
            contexts=stack_contexts(parts, self.device),
            ctx_index=self.to_device(np.arange(N), torch.long),
            actions=self.to_device(np.concatenate(acts), torch.float32),
            logp_old=self.to_device(np.concatenate(logps), torch.float32),
            unit=self.to_device(np.concatenate(units), torch.long),
            advantages=self.to_device(advantages, torch.float32),
        )

    def train_iteration(self) -> dict[str, float]:
        batch, diag = self.collect()
        diag["zero_spread_streak"] = self._count_zero_spread(diag["zero_spread_frac"] == 1.0)
        if batch is None:  # every group had zero spread: nothing to learn from this iteration
            return {**diag, **self.empty_update_diag()}
        return {**diag, **self.policy_update(batch, self.cfg.ratio)}

    def _count_zero_spread(self, all_flat: bool) -> int:
        """Count iterations in a row whose groups all had zero return spread, and say so on the terminal.

        On a sparse-reward task before any success every member scores the same and GRPO learns nothing;
        progress.csv records it (zero_spread_frac, zero_spread_streak), but a user watching the run should not
        have to look there: the first such iteration of a run is said once, and a streak of
        ``zero_spread_warn_iterations`` (the policy has stood still that long) is said when it is reached.
        """
        self.zero_spread_streak = self.zero_spread_streak + 1 if all_flat else 0
        it = self.ctx.counters.iterations + 1
        if all_flat and not self._warned_no_spread:
            self._warned_no_spread = True
            print(f"dtrl: warning: GRPO on {self.ctx.task.name}, iteration {it}: all {self.cfg.reset_points} groups "
                  f"had zero return spread (every member scored the same, as a sparse reward gives before any "
                  f"success), so this iteration has nothing to learn from; progress.csv's zero_spread_frac counts "
                  f"such groups per iteration (this warning is not repeated)", file=sys.stderr)
        n = self.cfg.zero_spread_warn_iterations
        if n and self.zero_spread_streak == n:
            print(f"dtrl: warning: {self.ctx.out_dir}: every group has had zero spread for {n} iterations in a row "
                  f"(iterations {it - n + 1}-{it}): no update since, the policy stands still (column "
                  "zero_spread_streak of progress.csv)", file=sys.stderr)
        return self.zero_spread_streak

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "zero_spread_streak": self.zero_spread_streak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.zero_spread_streak = int(state.get("zero_spread_streak", 0))  # absent in older checkpoints
