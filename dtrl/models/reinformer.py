"""Reinformer (Zhuang et al., ICML 2024, arXiv 2405.08740) as a dtrl backbone: max-return sequence modeling.

Built as its reference code builds it (Dragon-Zhuang/Reinformer @61eaed9, cited file:line):

- **Tokens** (s_t, R_t, a_t) per timestep, each embedded by a linear layer plus a learned embedding of the
  env timestep, then one LayerNorm (model/reinformer.py:47-51,78-99). No final LayerNorm.
- **Blocks** are post-LayerNorm: ``x = LN(x + Attn(x)); x = LN(x + MLP(x))`` with separate q/k/v
  projections, dropout on the attention output (not on its weights) and a GELU MLP of width 4h
  (model/net.py:27-31,84-89,117-131). PyTorch's default initialisation (no custom init).
- **Heads** (model/reinformer.py:113-116): the return-to-go is predicted from the hidden state of the
  *state* token, ``R_hat_t = f(s_<=t, R_<t, a_<t)``; the action from the hidden state of the *RTG* token,
  so it is conditioned on R_t. The reference also predicts the next state from the action token, but
  never uses it (trainer.py:81-90 discards it, eval.py never reads it), so it is left out here.
- **Loss** (:func:`reinformer_loss`, trainer.py:92-119): the RTG head by expectile regression towards the
  in-distribution return-to-go with ``tau`` = 0.99 (main.py:186), so it learns the *maximum* return the
  data shows from that state; the action head by NLL - temperature x entropy; their plain sum.
- **Inference** (eval.py:53-98, here :meth:`predict_rtg` in the rollout engine): at every step the
  model first predicts R_hat_t from the context ending in s_t, writes it into the context as the RTG
  token R_t and then acts conditioned on it; nothing is subtracted after a reward. No target RTG.

Where dtrl differs, and why:

- **Action head.** The reference's actor is ``Normal(tanh(mu(h)), exp(log_std))`` with one
  *state-independent* log-std parameter (model/net.py:135-146), whose samples leave the action box.
  Here it is dtrl's DT head: a tanh-squashed Gaussian with a state-dependent, bounded log-std and the
  same learned temperature (:class:`dtrl.models.dt.SquashedGaussian`). GRPO-DT's likelihood ratios, its
  action-variance active sampling (which needs a per-state variance) and every method's rollouts then
  work on Reinformer exactly as on the DT. Evaluation acts with tanh of the mean, as the reference acts
  with its Normal's mean, itself a tanh (eval.py:84,92).
- **Padding.** The reference right-pads trajectories shorter than K and relies on the causal mask
  (data/d4rl_trajectory_dataset.py:114-174); dtrl's contexts are left-padded with a key mask, the DT's
  convention (:meth:`dtrl.models.dt.DecisionTransformer._attention_mask`). Real positions see the same tokens.
- **Entropy average.** The reference averages the entropy over padded positions too (trainer.py:116);
  here, as for dtrl's DT (dtrl.models.losses), the NLL and the entropy are both means over real positions.
- **RTG units.** The model takes and returns raw returns-to-go like the DT (``reward_scale`` inside);
  the expectile loss is computed on the scaled values, as the reference's (its dataset divides by the
  same scale, d4rl_trajectory_dataset.py:33-55), and is invariant to the scale anyway (u is divided by
  the batch's mean |target|).

Acting context: the reference acts with its whole training context (eval.py:58-73), so
:attr:`act_context_len` is ``model.context_len`` (the DT acts with ``model.eval_context_len``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dtrl.models.losses import dt_supervised_loss
from dtrl.config.model import ModelConfig
from dtrl.models.dt import DecisionTransformer, SquashedGaussian


class PostLNBlock(nn.Module):
    """Reinformer's transformer block (model/net.py:93-132): attention and MLP each followed by LayerNorm."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.q_net, self.k_net, self.v_net = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj_net = nn.Linear(dim, dim)
        self.att_drop, self.proj_drop = nn.Dropout(dropout), nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        H = self.n_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, L, H, D // H).transpose(1, 2)

        h = F.scaled_dot_product_attention(heads(self.q_net(x)), heads(self.k_net(x)), heads(self.v_net(x)),
                                           attn_mask=attn_mask)
        # net.py:84: the reference drops out the attention *output*, not the attention weights.
        h = self.att_drop(h).transpose(1, 2).reshape(B, L, D)
        x = self.ln1(x + self.proj_drop(self.proj_net(h)))
        return self.ln2(x + self.mlp(x))


class Reinformer(nn.Module):
    """The backbone interface of :mod:`dtrl.models.backbone`: ``forward`` (contexts -> action distribution at
    every position, given the RTG tokens), ``predict_rtg`` (the RTG token it needs at the last slot),
    ``supervised_terms`` (its pretraining loss). Shapes as :class:`dtrl.models.dt.DecisionTransformer`."""

    backbone = "reinformer"
    predicts_rtg = True  # the rollout engine fills each step's RTG token with predict_rtg
    deterministic = False

    def __init__(self, obs_dim: int, act_dim: int, cfg: ModelConfig, reward_scale: float = 1e-3):
        super().__init__()
        if cfg.action_head != "gaussian":
            raise ValueError("the Reinformer backbone has the stochastic head only (model.action_head: gaussian)")
        self.obs_dim, self.act_dim, self.cfg = obs_dim, act_dim, cfg
        d = cfg.embed_dim
        self.register_buffer("state_mean", torch.zeros(obs_dim))
        self.register_buffer("state_std", torch.ones(obs_dim))
        self.register_buffer("reward_scale", torch.tensor(float(reward_scale)))
        self.embed_timestep = nn.Embedding(cfg.max_timestep, d)
        self.embed_state = nn.Linear(obs_dim, d)
        self.embed_rtg = nn.Linear(1, d)
        self.embed_action = nn.Linear(act_dim, d)
        self.embed_ln = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(PostLNBlock(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.predict_rtg_head = nn.Linear(d, 1)
        self.mean_head = nn.Linear(d, act_dim)
        self.log_std_head = nn.Linear(d, act_dim)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.target_entropy = -float(act_dim)  # trainer.py:32

    # -- the parts shared with the DT's interface -------------------------------------------------------
    policy_parameters = DecisionTransformer.policy_parameters
    temperature = DecisionTransformer.temperature
    set_state_normalization = DecisionTransformer.set_state_normalization

    @property
    def act_context_len(self) -> int:
        """Timesteps of context it acts with: its whole training context, as eval.py:58-73."""
        return self.cfg.context_len

    # -- forward ------------------------------------------------------------------------------------
    def heads(self, states, actions, rtg, timesteps, mask=None) -> tuple[torch.Tensor, torch.Tensor, SquashedGaussian]:
        """(RTG prediction at every position in scaled units (B, T), the same in raw units, action distribution)."""
        B, T, _ = states.shape
        if T > self.cfg.context_len:
            raise ValueError(f"context of {T} steps exceeds model.context_len={self.cfg.context_len}")
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=states.device)
        time = self.embed_timestep(timesteps.clamp(0, self.cfg.max_timestep - 1))
        s = self.embed_state((states - self.state_mean) / self.state_std) + time
        r = self.embed_rtg((rtg * self.reward_scale).unsqueeze(-1)) + time
        a = self.embed_action(actions) + time
        x = self.embed_ln(torch.stack([s, r, a], dim=2).reshape(B, 3 * T, -1))  # (s_0, R_0, a_0, s_1, ...)
        attn_mask = DecisionTransformer._attention_mask(mask)
        for block in self.blocks:
            x = block(x, attn_mask)
        h = x.reshape(B, T, 3, -1)
        rtg_scaled = self.predict_rtg_head(h[:, :, 0]).squeeze(-1)  # from the state token
        ha = h[:, :, 1]  # the RTG token: the action is conditioned on R_t
        lo, hi = self.cfg.log_std_min, self.cfg.log_std_max
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(self.log_std_head(ha)) + 1.0)
        return rtg_scaled, rtg_scaled / self.reward_scale, SquashedGaussian(self.mean_head(ha), log_std)

    def forward(self, states, actions, rtg, timesteps, mask=None) -> SquashedGaussian:
        """Action distribution at every context position, conditioned on the RTG tokens given."""
        return self.heads(states, actions, rtg, timesteps, mask)[2]

    def predict_rtg(self, states, actions, rtg, timesteps, mask=None) -> torch.Tensor:
        """The raw RTG it predicts at the last slot (B,), from the state token there: what the rollout
        engine feeds back as that step's RTG token (eval.py:57-75). The last slot's own RTG and action
        tokens come after the state token, so their values do not matter."""
        return self.heads(states, actions, rtg, timesteps, mask)[1][:, -1]

    # -- pretraining ------------------------------------------------------------------------------------
    def supervised_terms(self, states, actions, rtg, timesteps, mask, entropy_samples: int = 1
                         ) -> dict[str, torch.Tensor]:
        rtg_scaled, _, dist = self.heads(states, actions, rtg, timesteps, mask)
        return reinformer_loss(dist, rtg_scaled, rtg * self.reward_scale, actions, mask, self.log_temperature,
                               self.target_entropy, self.cfg.rtg_expectile, self.cfg.rtg_loss_weight,
                               self.cfg.action_loss_weight, entropy_samples)


def expectile_rtg_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """trainer.py:101-108: mean over real positions of ``|tau - 1(u < 0)| u^2``, with
    ``u = (target - pred) / mean|target|``. With tau near 1 an under-prediction costs ~tau and an
    over-prediction ~1 - tau, so the minimiser is a high expectile: the best return the data reaches."""
    m = mask.bool()
    t, p = target.float()[m], pred.float()[m]
    u = (t - p) / t.abs().mean()
    return (torch.abs(tau - (u < 0).float()) * u.pow(2)).mean()


def reinformer_loss(dist: SquashedGaussian, rtg_pred: torch.Tensor, rtg_target: torch.Tensor, actions: torch.Tensor,
                    mask: torch.Tensor, log_temperature: torch.Tensor, target_entropy: float, tau: float,
                    rtg_weight: float = 1.0, action_weight: float = 1.0, entropy_samples: int = 1
                    ) -> dict[str, torch.Tensor]:
    """Reinformer's terms by name: loss = rtg_weight x expectile RTG loss + action_weight x (NLL - temperature
    x entropy) (trainer.py:119 adds them with weight 1 each), loss_temperature (trainer.py:130-135), and the
    detached diagnostics nll, entropy, temperature, rtg_loss. RTGs in scaled units (B, T)."""
    terms = dt_supervised_loss(dist, actions, mask, log_temperature, target_entropy, entropy_samples)
    rtg_loss = expectile_rtg_loss(rtg_pred, rtg_target, mask, tau)
    terms["loss"] = rtg_weight * rtg_loss + action_weight * terms["loss"]
    terms["rtg_loss"] = rtg_loss.detach()
    return terms

