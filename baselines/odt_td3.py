"""ODT+TD3 (Yan, Schwing & Wang, NeurIPS 2024, "RL gradients as vitamin"): `--method odt_td3`.

ODT's online phase (``baselines.common.ODTFamily``: same buffer, relabeling, LAMB) on a
*deterministic* DT, with a TD3 critic whose gradient is added to the DT's supervised loss:

    DT loss     = MSE(pi(context), a) - alpha * mean_{real context positions} Q1(s_t, pi(context_t))
    critic loss = sum_i mean (Q_i(s_t, a_t) - y_t)^2
    y_t         = r_t + gamma * (1 - terminal_t) * min_i Q_i'(s_{t+1}, a'_{t+1})
    a'_{t+1}    = clip(pi'(context_{t+1}) + clip(N(0, 0.2), -0.5, 0.5), -1, 1)

where pi(context) is the action of the DT's deterministic head (``model.action_head:
deterministic``: linear + tanh, no temperature), MSE the masked mean squared error over real
positions and action dims (``dtrl.models.losses.dt_mse_loss``), Q' the target critic, pi' the target DT
(Polyak-averaged copies, tau = 0.005), and the twin critic is an MLP 256-256
(``dtrl.harness.critic.TwinQ``) on the DT's normalised state. Every MuJoCo command of the reference passes
``--stoc 0 --use_entropy_reg 0`` (KaiYan289/RL_as_Vitamin_for_Online_Decision_Transformers
readme.md:102-114), so the supervised term is the MSE of a deterministic head (main.py:647-648,
trainer.py:891-893), not ODT's NLL and entropy: the workflow pretrains that DT with MSE per (task,
seed), under ``pretrain_det/``, and this method refuses a stochastic one.

Per iteration the reference draws ``num_updates_per_online_iter * num_actor_update_interval`` =
300 * 2 = 600 minibatches (main.py:549); every one trains the critic, the DT (and both targets)
learns on every second (trainer.py:175-188): here ``updates_per_iteration`` (300) DT updates and
``updates_per_iteration * policy_delay`` (600) critic updates. Exploration rollouts act with the
deterministic action plus N(0, 0.1) noise added after the tanh and clipped to the action bounds
(evaluation.py:172-174, ``--expl_noise 0.1``), in eval mode as the reference's default
``--online_data_mode eval`` (evaluation.py:87).

The TD target is built as the reference builds it, each difference a switch:

* ``online_terminals: last_step``: every online episode's last step is stored terminal, time-limit
  cuts included (evaluation.py:250-252 sets ``terminals[-1] = 1`` for every collected episode);
  ``env`` lets only the env's own terminals stop the bootstrap, so a time-limit cut bootstraps
  from the observation after it. Offline trajectories keep their dataset terminals either way: a
  timeout bootstraps from its next observation (``next_observations`` of offline files); a last
  step with neither that nor a terminal has no target and is left out.
* ``target_padding_mask: all_ones``: the target DT reads the next window with every slot visible,
  padding included (trainer.py:630-638 calls ``get_predictions`` with ``external_context_len`` =
  K, whose padding mask, decision_transformer.py:277,295-304, then has no zeros); ``real`` hides
  the padded slots from it, as from the DT everywhere else.
* ``critic_loss_mean: all_slots``: the critic loss is summed over real positions and divided by
  all B x K slots (trainer.py:798, ``(((Q1-y)^2 + (Q2-y)^2) * mask).mean()``); ``real`` divides by
  the real positions with a defined target instead.

Reconstruction choices (not published, or cheaper variants; each is a config field or noted):

* Next contexts come from the same sampled window, as the reference builds them
  (trainer.py:609-640): the window shifted by one step, i.e. at slot j the states are the next
  observations s_{j+1} (the stored next observation, so the window's last slot bootstraps as
  well), the actions, RTG tokens and timesteps those of slot j+1, the last slot's RTG r-decremented
  (rtg_K - r_K) and its timestep + 1, its action 0. One target-DT forward gives a'_{t+1} for every
  position. A next context is thereby one step shorter at the window's start than a rollout's
  context would be, as every context position's prediction is in ODT's training.
* The target action comes from a Polyak-averaged target copy of the DT (``target_dt: true``, as
  TD3's target actor); ``false`` uses the current DT (in eval mode, no dropout).
* The critic is warmed up on the offline-seeded buffer for ``critic_warmup_updates`` critic-only
  updates before the first online iteration (policy evaluation of the pretrained DT); 0 switches
  it off. The reference trains the critic during pretraining instead: its pretraining draws
  ``num_updates_per_pretrain_iter * num_actor_update_interval`` = 10k minibatches, the critic
  learning on each (main.py:424, 438), so the critic also has 10k updates when the online phase
  starts, but learnt them while the DT was still being pretrained. As there, the target critic is
  Polyak-updated after the critic step of every ``policy_delay``-th minibatch (where the
  reference's actor step and soft updates run, trainer.py:187, 979-981), and when online training
  starts the targets are hard copies of the critic and the DT (the online trainer deep-copies
  them, trainer.py:47, 51). These updates are counted in ``critic_updates``.
* Critic optimizer: AdamW, lr 1e-3, torch's default weight decay 0.01 (main.py:134,
  get_args.py:62; the readme pins torch 2.0.1, whose AdamW default is 0.01); no gradient clipping
  of the critic (trainer.py:665-668).

Speed (issue 13): a minibatch is drawn on the device (``sampler: device``), the critic loss (target
DT, target critic, critic) and the actor loss (DT, MSE, the critic with its parameters detached)
each run under pretraining's ``torch.compile`` switch (``compile``, ``dtrl.harness.pretrain.CompiledLoss``)
and bf16 autocast on CUDA, the critic's AdamW is fused and the Polyak updates are multi-tensor
kernels; between the critic and the actor step nothing waits for the host, and the iteration's
diagnostics are read, and checked for divergence, once at its end.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from baselines.common import MeanTerms, ODTConfig, ODTFamily
from dtrl.util.guard import WEIGHT_LIMIT, DivergenceError, weight_absmax
from dtrl.models.batching import ContextBatch
from dtrl.config import doc, require
from dtrl.harness.critic import TwinQ, soft_update
from dtrl.models.losses import dt_mse_loss, masked_mean
from dtrl.models.dt import DeterministicAction
from dtrl.harness.online import RunContext
from dtrl.harness.pretrain import CompiledLoss, amp_dtype_of, autocast
from dtrl.models.optim import load_optimizer_state


@dataclass
class ODTTD3Config(ODTConfig):
    alpha: float = doc(0.1, "Weight of the TD3 actor term alpha * -Q1(s, pi(context)) in the DT's loss "
                            "(Yan et al. 2024: 0.1).")
    gamma: float = doc(0.99, "Discount of the critic's TD target (TD3: 0.99).")
    weight_limit: float = doc(WEIGHT_LIMIT, "Largest |weight| of a network after its step before the run counts "
                                            "as diverged (a dtrl guard, not in the reference): the huge but finite "
                                            "weights of a too-large learning rate are named at the step that made "
                                            "them, before another network's loss overflows.")
    tau: float = doc(0.005, "Polyak rate of the target critic and the target DT (TD3: 0.005).")
    policy_noise: float = doc(0.2, "Std of the target policy smoothing noise on a' (TD3: 0.2).")
    noise_clip: float = doc(0.5, "Clip of the target policy smoothing noise (TD3: 0.5).")
    policy_delay: int = doc(2, "Critic updates per DT (actor) and target update: TD3's delayed policy updates "
                               "(Yan et al.: `--num_actor_update_interval 2`, get_args.py:77). Every minibatch "
                               "trains the critic; an iteration draws updates_per_iteration * policy_delay "
                               "minibatches (main.py:549), the DT learning on the first of every policy_delay "
                               "(trainer.py:187).")
    exploration_noise: float = doc(0.1, "Std of the Gaussian exploration noise added to the DT's action after the "
                                        "tanh, clipped to the action bounds, in exploration rollouts (Yan et al.: "
                                        "`--expl_noise 0.1`, get_args.py:79, evaluation.py:172-174; 0 = the "
                                        "deterministic action).")
    critic_hidden: list[int] = doc([256, 256], "Hidden widths of each Q MLP (Yan et al.: 256-256).")
    critic_lr: float = doc(1e-3, "AdamW learning rate of the critic (Yan et al.: `--critic_learning_rate` "
                                 "default 1e-3, get_args.py:62; AdamW at main.py:134).")
    critic_weight_decay: float = doc(0.01, "AdamW weight decay of the critic: torch's default, which the reference "
                                           "leaves in place (main.py:134 passes only the lr; torch 2.0.1).")
    critic_warmup_updates: int = doc(10_000, "Critic-only updates on the offline-seeded buffer before the first "
                                             "online iteration (0 = off), the target critic Polyak-updated after "
                                             "every policy_delay-th; online training then starts with target critic "
                                             "= critic and target DT = DT. The reference's critic gets its 10k "
                                             "updates (5000 x 2 minibatches, main.py:424, 438; soft updates "
                                             "trainer.py:187, 979-981; copies trainer.py:47, 51) alongside the "
                                             "DT's pretraining instead.")
    target_dt: bool = doc(True, "Target actions a' from a Polyak-averaged target copy of the DT (TD3's target "
                                "actor); false = from the current DT.")
    online_terminals: Literal["last_step", "env"] = doc(
        "last_step", "Which online steps stop the bootstrap. 'last_step' = the reference's: every online episode's "
                     "last step is stored terminal, time-limit cuts included (RL_as_Vitamin evaluation.py:250-252); "
                     "'env' = only the env's terminals, a time-limit cut bootstrapping from its next observation. "
                     "Offline trajectories keep their dataset terminals either way.")
    target_padding_mask: Literal["all_ones", "real"] = doc(
        "all_ones", "What the target DT sees of the next window's padding. 'all_ones' = the reference's: every slot "
                    "visible, padded ones included (trainer.py:630-638 -> decision_transformer.py:277,295-304 builds "
                    "a mask of K ones); 'real' = padded slots hidden, as from the DT everywhere else.")
    critic_loss_mean: Literal["all_slots", "real"] = doc(
        "all_slots", "Denominator of the critic loss. 'all_slots' = the reference's: the squared errors of real "
                     "positions summed and divided by all B x K slots, padding included (trainer.py:798); 'real' = "
                     "divided by the real positions with a defined TD target.")

    def validate(self) -> None:
        super().validate()
        require(self.alpha >= 0, "alpha must be >= 0")
        require(0 <= self.gamma < 1, "gamma must be in [0, 1)")
        require(0 < self.tau <= 1, "tau must be in (0, 1]")
        require(self.policy_noise >= 0 and self.noise_clip >= 0, "policy_noise and noise_clip must be >= 0")
        require(self.policy_delay >= 1, "policy_delay must be >= 1")
        require(self.exploration_noise >= 0, "exploration_noise must be >= 0")
        require(len(self.critic_hidden) >= 1 and all(h >= 1 for h in self.critic_hidden),
                "critic_hidden must list at least one positive width")
        require(self.critic_lr > 0, "critic_lr must be > 0")
        require(self.critic_weight_decay >= 0, "critic_weight_decay must be >= 0")
        require(self.critic_warmup_updates >= 0, "critic_warmup_updates must be >= 0")
        require(self.online_terminals in ("last_step", "env"), "online_terminals must be 'last_step' or 'env'")
        require(self.target_padding_mask in ("all_ones", "real"), "target_padding_mask must be 'all_ones' or 'real'")
        require(self.critic_loss_mean in ("all_slots", "real"), "critic_loss_mean must be 'all_slots' or 'real'")


class NoisyAction(nn.Module):
    """The deterministic DT acting with clamp(action + N(0, std)) (post-tanh), in the form the rollout engine samples."""

    def __init__(self, dt: nn.Module, std: float):
        super().__init__()
        self.dt = dt
        self.log_std = math.log(std)
        self.train(dt.training)  # the engine restores this mode on the DT after the rollout

    def forward(self, *args, **kwargs) -> DeterministicAction:
        dist = self.dt(*args, **kwargs)
        return DeterministicAction(dist.mean, torch.full_like(dist.mean, self.log_std))


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    was = module.training
    if was:
        module.eval()
    try:
        yield module
    finally:
        if was:
            module.train(True)


def next_window(batch: ContextBatch, all_ones: bool = False) -> dict[str, torch.Tensor]:
    """The sampled windows shifted one step ahead: slot j holds step j+1 (see the module docstring).

    ``all_ones``: every slot visible to the target DT, padding included (the reference's mask);
    else the window's own mask."""
    x = batch.extra
    last_rtg = batch.rtg[:, -1:] - x["reward"][:, -1:]
    return {
        "states": x["next_obs"],
        "actions": torch.cat([batch.actions[:, 1:], torch.zeros_like(batch.actions[:, :1])], dim=1),
        "rtg": torch.cat([batch.rtg[:, 1:], last_rtg], dim=1),
        "timesteps": torch.cat([batch.timesteps[:, 1:], batch.timesteps[:, -1:] + 1], dim=1),
        "mask": torch.ones_like(batch.mask) if all_ones else batch.mask,
    }


def slot_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is True over *all* slots of ``mask`` (the reference's ``(x * mask).mean()``)."""
    return torch.where(mask, x, torch.zeros_like(x)).sum() / mask.numel()


def _backward(loss_fn, args: tuple, zero_grad, key: str) -> dict[str, torch.Tensor]:
    """One forward (``loss_fn(*args)``) and the backward of its ``key`` term: what CompiledLoss runs."""
    terms = loss_fn(*args)
    zero_grad()
    terms[key].backward()
    return terms


def _copy_out(terms: dict[str, torch.Tensor], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The named terms, detached and copied out in one kernel (CUDA-graph outputs are overwritten by the
    next replay; the iteration's sums keep them)."""
    values = torch.stack([terms[k].detach().reshape(()).float() for k in keys])
    return dict(zip(keys, values.unbind()))


def _check_earliest(checks: list[tuple[MeanTerms, dict[str, str], str, list[int]]]) -> None:
    """Raise the DivergenceError of the accumulator that broke first. Each check: (terms, fault keys, where,
    the minibatch of each of its updates); a tie (one minibatch) goes to the first listed, which ran first."""
    found = []
    for order, (acc, keys, where, at) in enumerate(checks):
        try:
            acc.check(keys, where)
        except DivergenceError as e:
            found.append((at[min(e.finite_updates or 0, len(at) - 1)], order, e))
    if found:
        raise min(found, key=lambda f: f[:2])[2]


class ODTTD3(ODTFamily):
    Config = ODTTD3Config
    needs_dataset = True
    buffer_transitions = True
    # Checked once per iteration (dtrl.util.guard): the critic's terms first, since a broken critic breaks the actor.
    CRITIC_FAULT_KEYS = {"critic_loss": "critic_lr", "q_mean": "critic_lr", "td_error": "critic_lr",
                         "target_q": "critic_lr", "critic_weight_absmax": "critic_lr"}
    # ODT's part broken -> lr; ODT's part finite but the total not -> the TD3 term's weight alpha.
    ACTOR_FAULT_KEYS = {"loss_supervised": "lr", "nll": "lr", "entropy": "lr", "actor_q": "alpha", "loss": "alpha",
                        "grad_norm": "lr", "loss_temperature": "temperature_lr", "temperature": "temperature_lr",
                        "dt_weight_absmax": "lr"}
    pretrained_head = "deterministic"
    resume_fixed = ODTFamily.resume_fixed + ("critic_hidden", "target_dt", "critic_warmup_updates")
    # *_weight_absmax: max |w| after the step (dtrl.util.guard.weight_absmax), so a step that blew a network's
    # weights up is named, not the loss of the other network that reads them next (the critic's TD target reads
    # the DT's actions; the DT's TD3 term reads the critic).
    CRITIC_TERMS = ("critic_loss", "q_mean", "td_error", "target_q", "critic_weight_absmax")
    ACTOR_TERMS = ("loss", "loss_supervised", "mse", "actor_q", "grad_norm", "dt_weight_absmax")

    def __init__(self, cfg: ODTTD3Config, ctx: RunContext):
        super().__init__(cfg, ctx)
        m = self.model
        self.critic = TwinQ(ctx.obs_dim, ctx.act_dim, cfg.critic_hidden, m.state_mean, m.state_std).to(ctx.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        on_cuda = ctx.device.type == "cuda"
        # fused on CUDA: one kernel for the whole critic instead of a few per tensor
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr,
                                            weight_decay=cfg.critic_weight_decay, fused=True if on_cuda else None)
        self.target = copy.deepcopy(m).requires_grad_(False).eval() if cfg.target_dt else None
        self.minibatches = 0  # critic updates made online (the policy delay counts these)
        self.warmed_up = cfg.critic_warmup_updates == 0
        # Pretraining's switches and code (dtrl.harness.pretrain): bf16 autocast of the DT forwards and the two
        # loss computations compiled (cfg.compile, CUDA only); the optimizer steps, soft updates and
        # diagnostics between them are device kernels with no host sync.
        self.device_type = ctx.device.type
        self.amp_dtype = amp_dtype_of(cfg.amp)
        self.critic_compiled = CompiledLoss(self._critic_terms, cfg.compile, self.device_type)
        self.actor_compiled = CompiledLoss(self._actor_terms, cfg.compile, self.device_type)

    # -- exploration: deterministic action + Gaussian noise -----------------------------------------
    def _explorer(self) -> tuple[nn.Module, bool]:
        if self.cfg.exploration_noise == 0:
            return self.model, False
        return NoisyAction(self.model, self.cfg.exploration_noise), True

    # -- the critic ---------------------------------------------------------------------------------
    def target_actor(self) -> nn.Module:
        """The DT that gives a': the target copy (always in eval mode), or the current DT (``target_dt: false``),
        which :meth:`_critic_step` puts in eval mode around the critic loss."""
        return self.target if self.target is not None else self.model

    @torch.no_grad()
    def target_actions(self, batch: ContextBatch) -> torch.Tensor:
        """a'_{t+1} at every context position: the target DT's mean action on the next window, smoothed."""
        actor = self.target_actor()
        if actor.training:  # the current DT, called outside _critic_step (which sets eval mode around it)
            with eval_mode(actor):
                return self.target_actions(batch)
        cfg = self.cfg
        nxt = next_window(batch, all_ones=cfg.target_padding_mask == "all_ones")
        with autocast(self.device_type, self.amp_dtype):
            dist = actor(nxt["states"], nxt["actions"], nxt["rtg"], nxt["timesteps"], nxt["mask"])
        a = torch.tanh(dist.mean.float())
        noise = (torch.randn_like(a) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
        return (a + noise).clamp(-1.0, 1.0)

    @torch.no_grad()
    def td_target(self, batch: ContextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, w): TD targets at every context position and where they are defined (real step, td_ok).

        Only a stored ``terminal`` stops the bootstrap (``online_terminals`` decides whether an online
        episode's time-limit cut is stored as one).
        """
        x = batch.extra
        q1_next, q2_next = self.critic_target(x["next_obs"], self.target_actions(batch))
        y = x["reward"] + self.cfg.gamma * (1.0 - x["terminal"]) * torch.min(q1_next, q2_next)
        return y, batch.mask & x["td_ok"]

    def critic_loss(self, batch: ContextBatch) -> dict[str, torch.Tensor]:
        """TD3's clipped double-Q loss over every real position whose TD target is defined, divided by
        all B x K slots or by those positions (``critic_loss_mean``)."""
        y, w = self.td_target(batch)
        q1, q2 = self.critic(batch.states, batch.actions)
        mean = slot_mean if self.cfg.critic_loss_mean == "all_slots" else masked_mean
        loss = mean((q1 - y).pow(2) + (q2 - y).pow(2), w)
        return {"critic_loss": loss, "q_mean": masked_mean(q1.detach(), w),
                "td_error": masked_mean((q1.detach() - y).abs(), w), "target_q": masked_mean(y, w)}

    def _critic_terms(self, states, actions, rtg, timesteps, mask, reward, terminal, next_obs, td_ok):
        """:meth:`critic_loss` on tensors: the function ``compile`` compiles."""
        extra = {"reward": reward, "terminal": terminal, "next_obs": next_obs, "td_ok": td_ok}
        return self.critic_loss(ContextBatch(states, actions, rtg, timesteps, mask, extra=extra))

    def _critic_step(self, batch: ContextBatch) -> dict[str, torch.Tensor]:
        x = batch.extra
        args = (batch.states, batch.actions, batch.rtg, batch.timesteps, batch.mask,
                x["reward"], x["terminal"], x["next_obs"], x["td_ok"])
        zero = lambda: self.critic_opt.zero_grad(set_to_none=True)  # noqa: E731
        with eval_mode(self.target_actor()):
            terms = self.critic_compiled(lambda loss_fn: _backward(loss_fn, args, zero, "critic_loss"))
        self.critic_opt.step()
        terms["critic_weight_absmax"] = weight_absmax(self.critic.parameters(), self.cfg.weight_limit)
        return _copy_out(terms, self.CRITIC_TERMS)

    # -- the actor (the DT) ---------------------------------------------------------------------------
    def actor_loss(self, batch: ContextBatch) -> dict[str, torch.Tensor]:
        """The masked MSE plus the TD3 term; ``loss`` reaches the DT's policy parameters only."""
        m = self.model
        with autocast(self.device_type, self.amp_dtype):
            dist = m(batch.states, batch.actions, batch.rtg, batch.timesteps, batch.mask)
        terms = dt_mse_loss(dist, batch.actions, batch.mask)
        pi = torch.tanh(dist.mean.float())
        q_pi = self.critic(batch.states, pi, frozen=True)[0]  # the actor term moves the DT, never the critic
        actor_q = masked_mean(q_pi, batch.mask)
        return {**terms, "loss_supervised": terms["loss"].detach(), "actor_q": actor_q,
                "loss": terms["loss"] - self.cfg.alpha * actor_q}

    def _actor_terms(self, states, actions, rtg, timesteps, mask):
        """:meth:`actor_loss` on tensors: the function ``compile`` compiles."""
        return self.actor_loss(ContextBatch(states, actions, rtg, timesteps, mask))

    def _actor_step(self, batch: ContextBatch) -> dict[str, torch.Tensor]:
        tr = self.trainer
        args = (batch.states, batch.actions, batch.rtg, batch.timesteps, batch.mask)
        terms = self.actor_compiled(lambda loss_fn: _backward(loss_fn, args, tr.zero_grad, "loss"))
        terms["grad_norm"] = tr.step()
        terms["dt_weight_absmax"] = weight_absmax(tr.policy_params, self.cfg.weight_limit)
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        if self.target is not None:
            soft_update(self.target, self.model, self.cfg.tau)
        return _copy_out(terms, self.ACTOR_TERMS)

    # -- one iteration --------------------------------------------------------------------------------
    def _online_last_terminal(self) -> bool:
        return self.cfg.online_terminals == "last_step"

    def warm_up_critic(self) -> MeanTerms:
        """``critic_warmup_updates`` critic steps, the target critic Polyak-updated after every
        ``policy_delay``-th (the reference's pretraining schedule; the DT and its target stay as loaded)."""
        acc = MeanTerms()
        for i in range(self.cfg.critic_warmup_updates):
            acc.add(self._critic_step(self.buffer.sample(self.cfg.batch_size)))
            if i % self.cfg.policy_delay == 0:
                soft_update(self.critic_target, self.critic, self.cfg.tau)
        self.ctx.counters.critic_updates += self.cfg.critic_warmup_updates
        return acc

    def _before_first_iteration(self) -> dict[str, float]:
        if self.warmed_up:
            return {}
        acc = self.warm_up_critic()
        self.warmed_up = True
        acc.check(self.CRITIC_FAULT_KEYS, "the critic warmup")
        # The online phase starts from hard copies of the critic and the DT, as the reference's online
        # trainer deep-copies both into its targets (trainer.py:47, 51).
        self.critic_target.load_state_dict(self.critic.state_dict())
        if self.target is not None:
            self.target.load_state_dict(self.model.state_dict())
        return acc.means(prefix="warmup_")

    def _update_many(self, n: int) -> dict[str, float]:
        """``n`` DT updates: ``n * policy_delay`` minibatches, each a critic update, the DT learning on
        the first of every ``policy_delay`` (the reference's ``_ % actor_update_interval == 0``)."""
        critic_acc, actor_acc = MeanTerms(), MeanTerms()
        actor_at: list[int] = []  # the minibatch (of this call) of each DT update
        n_minibatches = n * self.cfg.policy_delay
        for i in range(n_minibatches):
            batch = self.buffer.sample(self.cfg.batch_size)
            critic_acc.add(self._critic_step(batch))
            if self.minibatches % self.cfg.policy_delay == 0:
                actor_acc.add(self._actor_step(batch))
                actor_at.append(i)
            self.minibatches += 1
        n_actor = len(actor_at)
        c = self.ctx.counters
        c.critic_updates += n_minibatches
        c.policy_updates += n_actor
        _check_earliest([(critic_acc, self.CRITIC_FAULT_KEYS, "the critic update", list(range(n_minibatches))),
                         (actor_acc, self.ACTOR_FAULT_KEYS, "the actor (DT) update", actor_at)])
        return {**critic_acc.means(), **actor_acc.means()}

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "target_dt": None if self.target is None else self.target.state_dict(),
                "minibatches": self.minibatches, "warmed_up": self.warmed_up}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        load_optimizer_state(self.critic_opt, state["critic_opt"])  # the config's critic_lr, not the checkpoint's
        if self.target is not None:
            self.target.load_state_dict(state["target_dt"])
        self.minibatches = int(state["minibatches"])
        self.warmed_up = bool(state["warmed_up"])
