"""ODT's stochastic Decision Transformer, written directly in torch.

Tokens are interleaved per timestep as (return-to-go, state, action); a causal GPT-style
transformer reads them and the hidden state at each *state* token parameterises a tanh-squashed
Gaussian over that step's action.

The default architecture is ODT's (facebookresearch/online-dt @c376fa1, default ``--ordering 0``):
no timestep and no positional embedding -- ``main.py:479-480`` defaults ``ordering`` to 0,
``decision_transformer.py:220-227`` then adds nothing to the token embeddings (its
``embed_timestep``, line 162, is never used in ``forward``) and ``trajectory_gpt2.py:521,680-681``
removes GPT-2's positional table -- so order reaches the model only through the causal mask; and
ReLU in the MLPs (``main.py:476`` ``activation_function="relu"`` -> ``trajectory_gpt2.py:253``).
``ModelConfig.timestep_embedding`` (ODT's ``--ordering 1``, the original DT's timestep embedding),
``slot_embedding`` (dtrl's own) and ``activation: gelu`` switch the alternatives on.

The temperature of the entropy bonus is a real ``nn.Parameter`` (``log_temperature``), so it
lives in ``state_dict`` and checkpoints, unlike in ODT's code.

Inputs are raw: the model owns the state normalisation (``state_mean``/``state_std`` buffers) and
the RTG scale (``reward_scale``), so every method feeds environment quantities and no caller can
forget a normalisation.

Shapes: states (B, T, S), actions (B, T, A), rtg (B, T) raw returns-to-go as fed to the policy,
timesteps (B, T) long, mask (B, T) bool with True for real steps (contexts are left-padded).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dtrl.config.model import LEGACY_MODEL_CFG, ModelConfig  # noqa: F401  (re-exported)

LOG2 = math.log(2.0)
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
class SquashedGaussian:
    """tanh(N(mean, std)) with a numerically stable log-density for actions near +-1."""

    # Actions are clamped this far inside (-1, 1) before atanh so stored actions at the bounds
    # (float32 tanh saturates at |y| > ~9) give finite log-probs.
    EPS = 1e-6

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean = mean
        self.log_std = log_std
        self.std = log_std.exp()

    @staticmethod
    def _log_det_tanh(y: torch.Tensor) -> torch.Tensor:
        # log(1 - tanh(y)^2) = 2 * (log 2 - y - softplus(-2y)), stable for large |y|.
        return 2.0 * (LOG2 - y - F.softplus(-2.0 * y))

    def _normal_log_prob(self, y: torch.Tensor) -> torch.Tensor:
        z = (y - self.mean) / self.std
        return -0.5 * z.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)

    def log_prob_pre_tanh(self, y: torch.Tensor) -> torch.Tensor:
        """Log-density (summed over action dims) of tanh(y), given the pre-squash sample y."""
        return (self._normal_log_prob(y) - self._log_det_tanh(y)).sum(-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """Log-density of a squashed action, summed over action dims: shape action.shape[:-1]."""
        a = action.clamp(-1.0 + self.EPS, 1.0 - self.EPS)
        return self.log_prob_pre_tanh(torch.atanh(a))

    def rsample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised sample and its pre-tanh value: (action, y)."""
        y = self.mean + self.std * torch.randn_like(self.mean)
        return torch.tanh(y), y

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
            return self.action_from_noise(noise)

    def action_from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """The sampled action for standard-normal ``noise`` (how the rollout engine samples)."""
        return torch.tanh(self.mean + self.std * noise)

    @property
    def mode(self) -> torch.Tensor:
        """The deterministic action used for evaluation: tanh of the Gaussian mean."""
        return torch.tanh(self.mean)

    def entropy(self, n_samples: int = 1) -> torch.Tensor:
        """Monte-Carlo entropy estimate -E[log p(a)] (no closed form under tanh), shape mean.shape[:-1]."""
        total = 0.0
        for _ in range(n_samples):
            y = self.mean + self.std * torch.randn_like(self.mean)
            total = total - self.log_prob_pre_tanh(y)
        return total / n_samples

    def gaussian_entropy(self) -> torch.Tensor:
        """Entropy of the pre-squash Gaussian, summed over action dims (a cheap, exact diagnostic)."""
        return (self.log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)


class DeterministicAction(SquashedGaussian):
    """The deterministic head's output: the action tanh(mean); ``log_std`` (default -inf, std 0) is
    the std of exploration noise added *after* the tanh and clipped to the action bounds, as
    ODT+TD3 explores: ``clamp(a + expl_noise * N(0, 1), action_range)`` with action_range the
    env's bounds shrunk by 1e-6 (RL_as_Vitamin..., evaluation.py:172-174, main.py:152-155).

    ``log_prob`` is the density of that Gaussian noise (a diagnostic; 0 with no noise). A point
    action has no entropy: losses of the stochastic head refuse it.
    """

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor | None = None):
        super().__init__(mean, torch.full_like(mean, -math.inf) if log_std is None else log_std)

    def action_from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.mean) + self.std * noise).clamp(-1.0 + self.EPS, 1.0 - self.EPS)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        noisy = self.std > 0
        std = torch.where(noisy, self.std, torch.ones_like(self.std))
        z = (action - torch.tanh(self.mean)) / std
        lp = -0.5 * z.pow(2) - std.log() - 0.5 * math.log(2 * math.pi)
        return torch.where(noisy, lp, torch.zeros_like(lp)).sum(-1)

    def rsample(self):
        raise TypeError("a deterministic DT has no action distribution to sample (model.action_head=deterministic)")

    def entropy(self, n_samples: int = 1):
        raise TypeError("a deterministic DT has no entropy (model.action_head=deterministic)")


class Block(nn.Module):
    """Pre-LayerNorm GPT-2 block with fused scaled-dot-product attention."""

    def __init__(self, dim: int, n_heads: int, dropout: float, activation: str = "relu"):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), ACTIVATIONS[activation](), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.drop(self.proj(h.transpose(1, 2).reshape(B, L, D)))
        return x + self.drop(self.mlp(self.ln2(x)))


class DecisionTransformer(nn.Module):
    backbone = "dt"  # the backbone interface (dtrl.models.backbone)
    predicts_rtg = False  # its RTG token is the running target, set by whoever rolls it out

    def __init__(self, obs_dim: int, act_dim: int, cfg: ModelConfig, reward_scale: float = 1e-3):
        super().__init__()
        self.obs_dim, self.act_dim, self.cfg = obs_dim, act_dim, cfg
        d = cfg.embed_dim
        self.register_buffer("state_mean", torch.zeros(obs_dim))
        self.register_buffer("state_std", torch.ones(obs_dim))
        self.register_buffer("reward_scale", torch.tensor(float(reward_scale)))
        self.embed_timestep = nn.Embedding(cfg.max_timestep, d) if cfg.timestep_embedding else None
        self.embed_return = nn.Linear(1, d)
        self.embed_state = nn.Linear(obs_dim, d)
        self.embed_action = nn.Linear(act_dim, d)
        self.embed_slot = nn.Parameter(torch.zeros(3 * cfg.context_len, d)) if cfg.slot_embedding else None
        self.embed_ln = nn.LayerNorm(d)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.dropout, cfg.activation) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.mean_head = nn.Linear(d, act_dim)
        self.deterministic = cfg.action_head == "deterministic"
        if self.deterministic:  # no log-std head and no temperature at all (ODT+TD3's --stoc 0)
            self.log_std_head = None
            self.register_parameter("log_temperature", None)
        else:
            self.log_std_head = nn.Linear(d, act_dim)
            self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.target_entropy = -float(act_dim)
        self._init_parameters(cfg.init)

    def _init_parameters(self, init: str) -> None:
        """``model.init``: modules are built with PyTorch's defaults; re-initialise what the reference does."""
        if init == "normal":
            self.apply(_normal_init)
            return
        # Only GPT2Model's own modules get GPT-2's init in ODT; the embeddings are built outside it.
        self.blocks.apply(_normal_init)
        if not self.deterministic:
            for head in (self.mean_head, self.log_std_head):
                nn.init.orthogonal_(head.weight)
                nn.init.zeros_(head.bias)

    @property
    def act_context_len(self) -> int:
        """Timesteps of context it acts with by default (ODT: ``eval_context_len``)."""
        return self.cfg.eval_context_len

    # -- parameters, split so each loss reaches only its own -------------------------------------
    def policy_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n != "log_temperature"]

    @property
    def temperature(self) -> torch.Tensor | None:
        return None if self.log_temperature is None else self.log_temperature.exp()

    def set_state_normalization(self, mean, std) -> None:
        self.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.state_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, states: torch.Tensor, actions: torch.Tensor, rtg: torch.Tensor, timesteps: torch.Tensor,
                mask: torch.Tensor | None = None) -> SquashedGaussian:
        """Action distribution at every context position, predicted from the state token
        (a :class:`DeterministicAction` for the deterministic head)."""
        B, T, _ = states.shape
        if T > self.cfg.context_len:
            raise ValueError(f"context of {T} steps exceeds model.context_len={self.cfg.context_len}")
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=states.device)
        s = (states - self.state_mean) / self.state_std
        r = (rtg * self.reward_scale).unsqueeze(-1)
        tokens = torch.stack([self.embed_return(r), self.embed_state(s), self.embed_action(actions)], dim=2)
        if self.embed_timestep is not None:
            tokens = tokens + self.embed_timestep(timesteps.clamp(0, self.cfg.max_timestep - 1)).unsqueeze(2)
        tokens = tokens.reshape(B, 3 * T, -1)
        if self.embed_slot is not None:
            # Right-align slots so the most recent step always sees the same slot embedding.
            tokens = tokens + self.embed_slot[3 * (self.cfg.context_len - T):]
        x = self.embed_drop(self.embed_ln(tokens))
        attn_mask = self._attention_mask(mask)
        for block in self.blocks:
            x = block(x, attn_mask)
        h = self.ln_f(x).reshape(B, T, 3, -1)[:, :, 1]  # hidden state at each state token
        return self.action_distribution(h)

    def action_distribution(self, h: torch.Tensor) -> SquashedGaussian:
        """The action heads on the final hidden states of the state tokens (B, T, D)."""
        mean = self.mean_head(h)
        if self.deterministic:
            return DeterministicAction(mean)
        # Squash log-std smoothly into [min, max] (ODT's parameterisation).
        lo, hi = self.cfg.log_std_min, self.cfg.log_std_max
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(self.log_std_head(h)) + 1.0)
        return SquashedGaussian(mean, log_std)

    @staticmethod
    def _attention_mask(mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, 3T, 3T) bool: causal, padded keys hidden, every token sees itself (no empty rows)."""
        B, T = mask.shape
        L = 3 * T
        key_ok = mask.repeat_interleave(3, dim=1)  # (B, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
        eye = torch.eye(L, dtype=torch.bool, device=mask.device)
        return ((causal & key_ok[:, None, :]) | eye).unsqueeze(1)


def _normal_init(m: nn.Module) -> None:
    """GPT-2's init: Linear and Embedding weights N(0, 0.02), Linear biases 0 (LayerNorms keep 1 and 0)."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def build_model(obs_dim: int, act_dim: int, cfg: ModelConfig, reward_scale: float,
                state_mean=None, state_std=None) -> DecisionTransformer:
    """The backbone ``cfg.backbone`` names (dtrl.models.backbone; the DT by default)."""
    from dtrl.models.backbone import build_backbone

    return build_backbone(obs_dim, act_dim, cfg, reward_scale, state_mean, state_std)
