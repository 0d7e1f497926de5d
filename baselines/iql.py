"""IQL, offline-to-online (Kostrikov, Nair & Levine, "Offline RL with Implicit Q-Learning", ICLR 2022).

The MLP baseline of the paper's tables (Yan et al. 2024 report its final finetuned scores). It
shares tasks, datasets, evaluation, logging and budgets with every dtrl method, not the DT.

One run, under the shared harness (:func:`dtrl.harness.online.run_online`):

1. **Offline phase**: ``offline_updates`` IQL updates on the task's dataset, ``offline_updates_per_iteration``
   per harness iteration and no env step, so progress is logged and a killed run resumes mid-phase.
   When the phase ends the offline policy is evaluated once (``offline_eval_*`` columns).
2. **Online phase**: the replay buffer keeps the offline data and appends every new transition (as
   IQL's ``train_finetune.py``); ``n_envs`` envs act with actions sampled from the Gaussian actor,
   and ``utd`` updates are made per env step (1, as published), ``env_steps_per_iteration`` per iteration.

One update (the order of the reference code): the value net V regresses the expectile ``expectile`` of
the target critic's min(Q1, Q2)(s, a); the actor maximises advantage-weighted log-likelihood of the
buffer's actions, weights exp(beta * (Q_target - V)) clipped at ``max_weight``, with V already updated;
the twin critic regresses r + discount * mask * V(s'), mask = 0 only at env terminals (a time-limit
cut bootstraps); the target critic follows by Polyak averaging.

Choices for details the paper leaves open (each also a Config field where it is a number):

- Actor: a Gaussian whose mean is tanh(MLP(s)) and whose log-std is one state-independent parameter
  vector clipped to [-5, 2] -- the reference JAX code's ``NormalTanhPolicy(state_dependent_std=False,
  tanh_squash_distribution=False)``. Exploration samples from it and clips to [-1, 1]; evaluation and
  the "deterministic" action use tanh-mean. The log-likelihood of the buffer's actions is that of the
  unsquashed Gaussian (dataset actions are clipped to +-(1 - 1e-5) first, as the reference loader does).
- Weights: orthogonal init with gain sqrt(2) and zero biases for every layer (flax ``default_init``).
- Learning rates: constant Adam 3e-4 for the actor in both phases. What the reference locomotion
  finetuning would do cannot be run as written: ``train_finetune.py:100-103`` builds the Learner
  from ``configs/mujoco_config.py`` (which sets no ``opt_decay_schedule``) and no ``max_steps``, so
  the Learner's default ``opt_decay_schedule="cosine"`` (``learner.py:63``) calls
  ``optax.cosine_decay_schedule(-actor_lr, None)`` (``learner.py:85-86``), which refuses a decay
  length that is not a positive number. The one finetuning config the repository ships turns the
  schedule off (``configs/antmaze_finetune_config.py:21``, constant Adam), and that is what dtrl
  runs. ``actor_lr_schedule: cosine`` is ``train_offline.py:88-92``'s decay over the offline phase
  (the offline-only paper numbers); online the actor then uses ``online_actor_lr``.
- Reward normalisation (locomotion): rewards * 1000 / (max - min) of the dataset's trajectory returns
  (``train_finetune.py:42-59``), on the dataset only; online rewards are stored raw, as the reference
  stores them (``train_finetune.py:123``), so locomotion finetuning mixes two reward scales in one
  buffer (``online_reward_scale: raw``). ``online_reward_scale: offline`` applies the dataset's factor
  to online rewards too, one scale in the buffer. The reference normalises hopper, halfcheetah and
  walker2d only (``train_finetune.py:80-82``): config/config.yaml switches ant to ``none`` with an
  ``overrides`` entry. If every trajectory has the same return the factor is 1. ``reward_shift``
  (AntMaze's -1) applies to every sampled reward, offline and online, as the reference's
  ``train_finetune.py:137-142``.
- Evaluation uses the shared harness's protocol (``eval.final_episodes``, ODT's 10) rather than the
  reference's 100 episodes every 100k steps (``train_finetune.py:22,25``), so every method is scored alike.
- Transitions: a trajectory without ``next_observations`` takes s' from the next row; its last row is
  kept only if it is terminal (s' is then unused), since a time-limit cut has no s' to bootstrap from.
- Seeds: exploration env episodes are seeded from 10**8 + 10**6 * seed on, apart from evaluation seeds.
- Speed: on CUDA one whole update is recorded once as a CUDA graph and replayed (``cuda_graph``);
  an H100 measured 0.9 ms/update against 7.8 ms eager with the default 256-256 nets, batch 256.
- Resume: checkpoints hold the networks, optimisers, the online part of the buffer and the
  exploration envs' exact simulator states, so a resumed run continues the same numbers.

The generic pieces here -- :func:`mlp`, :class:`ReplayBuffer` -- are not IQL-specific and could move
into the dtrl core once a second MLP method needs them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dtrl.config import doc, require
from dtrl.harness.critic import mlp
from dtrl.data.trajectories import DataError, TrajectoryDataset
from dtrl.envs.make import get_sim_state, set_sim_state
from dtrl.util.guard import WEIGHT_LIMIT, FiniteSince, check_values, weight_absmax
from dtrl.harness.online import Evaluation, OnlineMethod, RunContext, eval_seed
from dtrl.envs.vec import VecStepper, evaluate_policy
from dtrl.models.optim import load_optimizer_state

ACTION_LIMIT = 1.0 - 1e-5  # dataset actions are clipped to this before their log-likelihood is taken


@dataclass
class IQLConfig:
    # Schedule of the run.
    offline_updates: int = doc(1_000_000, "Offline IQL updates before any env step (reference "
                                          "train_finetune.py:28 num_pretraining_steps 1M).")
    offline_updates_per_iteration: int = doc(5_000, "Offline updates per harness iteration: one logged row and "
                                                    "checkpoint each, so a killed run resumes mid-phase.")
    offline_eval_episodes: int = doc(10, "Episodes evaluated once when the offline phase ends (offline_eval_* "
                                         "columns; 0 = skip). Charged to env_steps_eval, not the budget.")
    env_steps_per_iteration: int = doc(1_000, "Online env steps per harness iteration (rounded up to whole "
                                              "batches of n_envs).")
    n_envs: int = doc(1, "Exploration envs stepped together (1 in the paper; more trades freshness for speed).")
    utd: float = doc(1.0, "Gradient updates per online env step (reference train_finetune.py:109-143: one).")
    batch_size: int = doc(256, "Minibatch size (reference train_finetune.py:26: 256).")
    # Networks and optimisers.
    hidden_dims: list[int] = doc([256, 256], "Hidden layers of the actor, twin critic and value MLPs, ReLU, no "
                                             "dropout (reference configs/mujoco_config.py:11,17).")
    actor_lr: float = doc(3e-4, "Adam learning rate of the actor in the offline phase (mujoco_config.py:7).")
    actor_lr_schedule: Literal["cosine", "constant"] = doc(
        "constant", "Offline actor lr schedule. constant = the finetuning run that the reference can run: "
                    "antmaze_finetune_config.py:21 sets opt_decay_schedule None; with mujoco_config.py the Learner's "
                    "default cosine schedule gets no max_steps (train_finetune.py:100-103, learner.py:63,85-86) and "
                    "optax refuses it. cosine = decay to 0 over offline_updates as train_offline.py:88-92 "
                    "(offline-only training).")
    online_actor_lr: float = doc(3e-4, "Constant actor lr online (the reference finetuning run: Adam 3e-4, no decay).")
    critic_lr: float = doc(3e-4, "Adam learning rate of the twin critic (mujoco_config.py:9).")
    value_lr: float = doc(3e-4, "Adam learning rate of the value net (mujoco_config.py:8).")
    log_std_min: float = doc(-5.0, "Lower clip of the actor's state-independent log-std (reference learner.py:80).")
    log_std_max: float = doc(2.0, "Upper clip of the actor's log-std (reference policy.py:16,50).")
    # IQL itself.
    expectile: float = doc(0.7, "Expectile tau of the value regression (mujoco_config.py:15; AntMaze 0.9).")
    beta: float = doc(3.0, "Inverse temperature of the advantage weights exp(beta * A) (mujoco_config.py:16 "
                           "`temperature`; AntMaze 10).")
    max_weight: float = doc(100.0, "Clip of the advantage weights (reference actor.py:16).")
    discount: float = doc(0.99, "Discount (mujoco_config.py:13).")
    weight_limit: float = doc(WEIGHT_LIMIT, "Largest |weight| of a network after its step before the run counts "
                                            "as diverged (a dtrl guard, not in the reference): the huge but finite "
                                            "weights of a too-large learning rate are named at the step that made "
                                            "them, before another network's loss overflows.")
    polyak: float = doc(0.005, "Target critic update rate: target <- (1 - polyak) target + polyak critic "
                               "(mujoco_config.py:19 `tau`).")
    # Data.
    reward_normalization: Literal["minmax", "none"] = doc(
        "minmax", "minmax: dataset rewards * 1000 / (max - min trajectory return of the dataset), the reference's "
                  "for hopper, halfcheetah, walker2d (train_finetune.py:42-59,80-82); none: raw rewards (the "
                  "reference's for ant: config/config.yaml's overrides). Online rewards: online_reward_scale.")
    online_reward_scale: Literal["raw", "offline"] = doc(
        "raw", "Online rewards next to the normalised offline ones. raw = the reference's: stored as the env pays "
               "them (train_finetune.py:123), two reward scales in one buffer on the normalised tasks; offline = "
               "multiplied by the dataset's normalisation factor, one scale.")
    reward_shift: float = doc(0.0, "Added to every reward after scaling (IQL's AntMaze uses -1; 0 for locomotion).")
    buffer_capacity: int = doc(0, "Replay capacity in transitions; 0 keeps the offline data and every online "
                                  "transition (the reference's 2M, train_finetune.py:30, holds both at its budgets). "
                                  "Positive: FIFO, the oldest (offline) rows go first.")
    cuda_graph: bool = doc(True, "On CUDA, record one whole update as a CUDA graph and replay it: the same "
                                 "math, ~10x faster, since an update is ~150 tiny kernels whose launches "
                                 "dominate. Ignored on CPU.")

    def validate(self) -> None:
        require(self.offline_updates >= 0, "iql.offline_updates must be >= 0")
        require(self.offline_updates_per_iteration >= 1, "iql.offline_updates_per_iteration must be >= 1")
        require(self.offline_eval_episodes >= 0, "iql.offline_eval_episodes must be >= 0")
        require(self.env_steps_per_iteration >= 1 and self.n_envs >= 1,
                "iql.env_steps_per_iteration and iql.n_envs must be >= 1")
        require(self.utd >= 0, "iql.utd must be >= 0")
        require(self.batch_size >= 1, "iql.batch_size must be >= 1")
        require(len(self.hidden_dims) >= 1 and all(h >= 1 for h in self.hidden_dims),
                "iql.hidden_dims must list at least one positive layer width")
        require(0.0 < self.expectile < 1.0, "iql.expectile must be in (0, 1)")
        require(0.0 <= self.discount <= 1.0, "iql.discount must be in [0, 1]")
        require(0.0 < self.polyak <= 1.0, "iql.polyak must be in (0, 1]")
        require(self.max_weight > 0, "iql.max_weight must be > 0")
        require(self.log_std_min <= self.log_std_max, "iql.log_std_min must be <= iql.log_std_max")
        require(self.buffer_capacity >= 0, "iql.buffer_capacity must be >= 0")
        require(self.online_reward_scale in ("raw", "offline"), "iql.online_reward_scale must be 'raw' or 'offline'")


# ---------------------------------------------------------------------------------------------------
# Generic pieces (candidates for the core).


class ReplayBuffer:
    """Uniform replay of (obs, act, rew, next_obs, mask) transitions held as tensors on one device.

    ``capacity`` 0 grows without bound (doubling its storage); a positive capacity is a FIFO ring.
    ``mask`` is 1 - terminal: 0 stops the bootstrap, time-limit cuts keep 1.
    """

    FIELDS = ("obs", "act", "rew", "next_obs", "mask")

    def __init__(self, obs_dim: int, act_dim: int, device: torch.device, capacity: int = 0):
        self.capacity = int(capacity)
        self.device = device
        self.widths = {"obs": obs_dim, "act": act_dim, "rew": 0, "next_obs": obs_dim, "mask": 0}
        self.size = 0  # valid rows
        self.ptr = 0  # next row written
        self.wrapped = False  # a ring buffer has overwritten rows
        self.data = self._alloc(self.capacity or 1024)

    def _alloc(self, n: int) -> dict[str, torch.Tensor]:
        return {k: torch.zeros((n, w) if w else (n,), dtype=torch.float32, device=self.device)
                for k, w in self.widths.items()}

    def _rows(self) -> int:
        return self.data["rew"].shape[0]

    def _grow(self, need: int) -> None:
        rows = self._rows()
        if need <= rows:
            return
        new = self._alloc(max(need, 2 * rows))
        for k in self.FIELDS:
            new[k][:self.size] = self.data[k][:self.size]
        self.data = new

    def add(self, **batch: np.ndarray) -> None:
        """Append a batch of transitions given as arrays named like FIELDS."""
        n = int(np.asarray(batch["rew"]).shape[0])
        if self.capacity == 0:
            self._grow(self.size + n)
            rows = torch.arange(self.size, self.size + n, device=self.device)
        else:
            if n > self.capacity:
                raise ValueError(f"{n} transitions do not fit a replay buffer of capacity {self.capacity}")
            rows = (torch.arange(n, device=self.device) + self.ptr) % self.capacity
            self.wrapped = self.wrapped or self.size + n > self.capacity  # rows get overwritten
        for k in self.FIELDS:
            self.data[k][rows] = torch.as_tensor(np.asarray(batch[k]), dtype=torch.float32, device=self.device)
        self.size = min(self.size + n, self.capacity) if self.capacity else self.size + n
        self.ptr = (self.ptr + n) % self.capacity if self.capacity else self.size

    def sample(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx] for k, v in self.data.items()}

    def state_dict(self, skip: int = 0) -> dict[str, Any]:
        """Rows from ``skip`` on (rows before it, e.g. the offline data, the owner rebuilds itself)."""
        skip = 0 if self.wrapped else min(skip, self.size)
        return {"size": self.size, "ptr": self.ptr, "wrapped": self.wrapped, "skip": skip,
                "data": {k: v[skip:self.size].cpu().clone() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._grow(state["size"])
        skip = state["skip"]
        for k in self.FIELDS:
            self.data[k][skip:state["size"]] = state["data"][k].to(self.device)
        self.size, self.ptr, self.wrapped = state["size"], state["ptr"], state["wrapped"]


# ---------------------------------------------------------------------------------------------------
# IQL's networks and losses.


class GaussianActor(nn.Module):
    """N(tanh(MLP(s)), exp(log_std)^2) with one state-independent log-std vector (reference NormalTanhPolicy)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], log_std_min: float, log_std_max: float):
        super().__init__()
        self.net = mlp(obs_dim, hidden, act_dim, orthogonal_init=True)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std), mean in (-1, 1), log_std broadcast to the mean's shape."""
        mean = torch.tanh(self.net(obs))
        log_std = self.log_std.clamp(self.log_std_min, self.log_std_max).expand_as(mean)
        return mean, log_std

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(obs)
        z = (act - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


class TwinCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int]):
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, hidden, 1, orthogonal_init=True)
        self.q2 = mlp(obs_dim + act_dim, hidden, 1, orthogonal_init=True)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, act], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |expectile - 1(diff < 0)| * diff^2, diff = target - prediction (IQL eq. 2)."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.pow(2)).mean()


def advantage_weights(adv: torch.Tensor, beta: float, max_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(min(exp(beta * adv), max_weight), mask of the clipped entries)."""
    raw = torch.exp(beta * adv)
    return raw.clamp(max=max_weight), raw > max_weight


def td_target(rew: torch.Tensor, mask: torch.Tensor, next_v: torch.Tensor, discount: float) -> torch.Tensor:
    """r + discount * mask * V(s'): mask 0 at terminals (no bootstrap), 1 at time-limit cuts."""
    return rew + discount * mask * next_v


class IQLLearner(nn.Module):
    """The four networks, their optimisers and one IQL update, independent of envs and data."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: IQLConfig, device: torch.device):
        super().__init__()
        self.cfg = cfg
        h = list(cfg.hidden_dims)
        self.actor = GaussianActor(obs_dim, act_dim, h, cfg.log_std_min, cfg.log_std_max)
        self.critic = TwinCritic(obs_dim, act_dim, h)
        self.value = mlp(obs_dim, h, 1, orthogonal_init=True)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.to(device)
        # foreach: one kernel per op over all tensors (the default per-tensor loop is slow on CPU).
        # A CUDA graph needs capturable optimisers and the actor lr as a tensor it reads at replay.
        self.use_graph = device.type == "cuda" and cfg.cuda_graph
        kw: dict[str, Any] = {"foreach": True, "capturable": self.use_graph}
        actor_lr = torch.tensor(cfg.actor_lr, device=device) if self.use_graph else cfg.actor_lr
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=actor_lr, **kw)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, **kw)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr, **kw)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_in: dict[str, torch.Tensor] = {}
        self._static_out: dict[str, torch.Tensor] = {}
        self._target_params = list(self.target_critic.parameters())
        self._critic_params = list(self.critic.parameters())

    def v(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value(obs).squeeze(-1)

    # The three losses. Each takes the frozen quantities it needs (computed here when not given), so
    # its gradient reaches exactly one network: V, the actor, or the twin critic.

    def target_q(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return torch.min(*self.target_critic(b["obs"], b["act"]))

    def value_loss(self, b: dict[str, torch.Tensor], q_t: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        q_t = self.target_q(b) if q_t is None else q_t
        v = self.v(b["obs"])
        return expectile_loss(q_t - v, self.cfg.expectile), {"v_mean": v.detach().mean()}

    def actor_loss(self, b: dict[str, torch.Tensor], q_t: torch.Tensor | None = None,
                   v: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            q_t = self.target_q(b) if q_t is None else q_t
            adv = q_t - (self.v(b["obs"]) if v is None else v)
            w, clipped = advantage_weights(adv, self.cfg.beta, self.cfg.max_weight)
        act = b["act"].clamp(-ACTION_LIMIT, ACTION_LIMIT)
        loss = -(w * self.actor.log_prob(b["obs"], act)).mean()
        return loss, {"adv_mean": adv.mean(), "weight_mean": w.mean(), "weight_clip_frac": clipped.float().mean()}

    def critic_loss(self, b: dict[str, torch.Tensor], next_v: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            next_v = self.v(b["next_obs"]) if next_v is None else next_v
            target = td_target(b["rew"], b["mask"], next_v, self.cfg.discount)
        q1, q2 = self.critic(b["obs"], b["act"])
        loss = ((q1 - target).pow(2) + (q2 - target).pow(2)).mean()
        return loss, {"q_mean": torch.min(q1, q2).detach().mean()}

    @staticmethod
    def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def update(self, b: dict[str, torch.Tensor], actor_lr: float) -> dict[str, torch.Tensor]:
        """One IQL update with this actor lr; returns its diagnostics (0-d tensors)."""
        for g in self.actor_opt.param_groups:
            if torch.is_tensor(g["lr"]):
                g["lr"].fill_(actor_lr)
            else:
                g["lr"] = actor_lr
        if not self.use_graph:
            return self._update(b)
        if self._graph is None:
            self._capture(b)
        for k, v in b.items():
            self._static_in[k].copy_(v)
        self._graph.replay()
        return {k: v.clone() for k, v in self._static_out.items()}

    def _capture(self, b: dict[str, torch.Tensor]) -> None:
        """Record ``_update`` as a CUDA graph (PyTorch's whole-network recipe).

        The recipe first runs a few warm-up updates on a side stream (they allocate the gradients and
        the optimiser state); the parameters and optimiser state are put back afterwards, so the
        warm-up leaves no trace and recording happens as if at the same point of training.
        """
        params = [p.detach().clone() for p in self.parameters()]
        opts = (self.actor_opt, self.critic_opt, self.value_opt)
        saved = [{p: {k: v.clone() for k, v in st.items()} for p, st in o.state.items()} for o in opts]
        self._static_in = {k: v.clone() for k, v in b.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._update(self._static_in)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for p, v in zip(self.parameters(), params):
                p.copy_(v)
            for o, before in zip(opts, saved):
                for p, st in o.state.items():
                    for k, v in st.items():
                        if torch.is_tensor(v):
                            v.copy_(before[p][k]) if p in before else v.zero_()
        for o in opts:
            o.zero_grad(set_to_none=True)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._static_out = self._update(self._static_in)

    def _update(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One IQL update in the reference order: V, then actor and critic with the new V, then the target."""
        q_t = self.target_q(b)  # the target critic is fixed until the end of the update
        v_loss, info = self.value_loss(b, q_t)
        self._step(self.value_opt, v_loss)
        # Each network's max |w| right after its step (dtrl.util.guard.weight_absmax): a step that blew the
        # weights up is named before the losses of the networks that read them overflow.
        sizes = {"value_weight_absmax": weight_absmax(self.value.parameters(), self.cfg.weight_limit)}
        with torch.no_grad():  # the updated V, at s for the advantage and at s' for the TD target
            v, next_v = self.v(torch.cat([b["obs"], b["next_obs"]])).chunk(2)
        a_loss, a_info = self.actor_loss(b, q_t, v)
        self._step(self.actor_opt, a_loss)
        sizes["actor_weight_absmax"] = weight_absmax(self.actor.parameters(), self.cfg.weight_limit)
        c_loss, c_info = self.critic_loss(b, next_v)
        self._step(self.critic_opt, c_loss)
        sizes["critic_weight_absmax"] = weight_absmax(self._critic_params, self.cfg.weight_limit)
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.cfg.polyak)
        return {"value_loss": v_loss.detach(), "actor_loss": a_loss.detach(), "critic_loss": c_loss.detach(),
                **info, **a_info, **c_info, "log_std_mean": self.actor.log_std.detach().mean(), **sizes}

    @torch.no_grad()
    def act(self, obs: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """tanh-mean action (noise None) or mean + std * noise, clipped to [-1, 1]."""
        p = next(self.actor.parameters())
        mean, log_std = self.actor(torch.as_tensor(obs, dtype=torch.float32, device=p.device))
        if noise is not None:
            mean = mean + torch.exp(log_std) * torch.as_tensor(noise, dtype=torch.float32, device=p.device)
        out = mean.clamp(-1.0, 1.0).cpu().numpy().astype(np.float64)
        check_values(out, "actor actions", "actor_lr", "the actor's outputs")  # a NaN policy is never scored
        return out

    def optim_state(self) -> dict[str, Any]:
        return {k: getattr(self, k).state_dict() for k in ("actor_opt", "critic_opt", "value_opt")}

    def load_optim_state(self, state: dict[str, Any]) -> None:
        """Load optimiser states, possibly saved on another device or with/without a CUDA graph."""
        for k, v in state.items():
            opt = getattr(self, k)
            # The group options stay this learner's: the config's learning rates, graph or not (capturable, a
            # tensor actor lr); the actor's lr is set again before every update anyway.
            load_optimizer_state(opt, v)
            for p, st in opt.state.items():
                if "step" in st:  # capturable Adam keeps its step count on the device, eager Adam on the CPU
                    st["step"] = st["step"].to(device=p.device if self.use_graph else "cpu", dtype=torch.float32)
        self._graph = None  # loading replaced the optimiser state tensors a recorded graph points at


def cosine_lr(base: float, step: int, total: int) -> float:
    """optax.cosine_decay_schedule: base * 0.5 * (1 + cos(pi * min(step, total) / total))."""
    if total <= 0:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


# ---------------------------------------------------------------------------------------------------
# Data.


def dataset_transitions(dataset: TrajectoryDataset) -> dict[str, np.ndarray]:
    """Flat (obs, act, rew, next_obs, mask) arrays of a dataset, raw rewards; see the module notes."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ReplayBuffer.FIELDS}
    for t in dataset:
        n = len(t)
        if t.next_observations is not None:
            keep, nxt = n, t.next_observations
        else:
            keep = n if bool(t.terminals[-1]) else n - 1  # a cut without s' cannot be bootstrapped
            nxt = np.concatenate([t.observations[1:], t.observations[-1:]], 0)
        if keep <= 0:
            continue
        parts["obs"].append(t.observations[:keep])
        parts["act"].append(t.actions[:keep])
        parts["rew"].append(t.rewards[:keep])
        parts["next_obs"].append(nxt[:keep])
        parts["mask"].append(1.0 - t.terminals[:keep].astype(np.float32))
    if not parts["rew"]:
        raise DataError(f"{dataset.source}: no transition with a next observation for IQL")
    return {k: np.concatenate(v, 0).astype(np.float32) for k, v in parts.items()}


def reward_scale(dataset: TrajectoryDataset, mode: str) -> float:
    """1000 / (max - min trajectory return) for 'minmax' (IQL's locomotion normalisation), else 1."""
    if mode == "none":
        return 1.0
    r = dataset.returns()
    spread = float(r.max() - r.min())
    return 1000.0 / spread if spread > 1e-8 else 1.0


# ---------------------------------------------------------------------------------------------------
# The method.


class IQL(OnlineMethod):
    """IQL offline pretraining then online finetuning, as one run of the shared harness."""

    Config = IQLConfig
    needs_pretrained_dt = False
    needs_dataset = True
    # A D4RL file's steps after its last terminal/timeout stay in IQL's data: its D4RLDataset ends the last
    # trajectory at the file's end (implicit_q_learning dataset_utils.py:92); data.unflagged_tail overrides.
    reference_keeps_unflagged_tail = True
    fault_key = "critic_lr"
    # Cannot change on a resume (dtrl.harness.online.OnlineMethod.resume_fixed): network sizes, the buffer, the envs
    # stepped, and the reward transform the buffered rewards were stored under.
    resume_fixed = ("hidden_dims", "n_envs", "buffer_capacity", "reward_normalization", "reward_shift")
    # Checked once per iteration (dtrl.util.guard), the term that broke first named; ties (one update) in the
    # order the update computes them, so a network's blown-up weights are named before the losses reading them.
    FAULT_KEYS = {"value_loss": "value_lr", "v_mean": "value_lr", "value_weight_absmax": "value_lr",
                  "actor_loss": "actor_lr", "log_std_mean": "actor_lr", "actor_weight_absmax": "actor_lr",
                  "critic_loss": "critic_lr", "q_mean": "critic_lr", "critic_weight_absmax": "critic_lr"}

    def __init__(self, cfg: IQLConfig, ctx: RunContext):
        super().__init__(cfg, ctx)
        if ctx.dataset is None:
            raise ValueError("IQL needs the task's offline dataset (RunContext.dataset is None)")
        ctx.dataset.validate(ctx.obs_dim, ctx.act_dim)
        self.learner = IQLLearner(ctx.obs_dim, ctx.act_dim, cfg, ctx.device)
        self.reward_scale = reward_scale(ctx.dataset, cfg.reward_normalization)
        data = dataset_transitions(ctx.dataset)
        data["rew"] = data["rew"] * self.reward_scale + cfg.reward_shift
        self.n_offline = int(data["rew"].shape[0])
        if cfg.buffer_capacity and cfg.buffer_capacity < self.n_offline:
            raise ValueError(f"iql.buffer_capacity {cfg.buffer_capacity} is smaller than the offline data "
                             f"({self.n_offline} transitions)")
        self.buffer = ReplayBuffer(ctx.obs_dim, ctx.act_dim, ctx.device, cfg.buffer_capacity)
        self.buffer.add(**data)
        self.stepper = VecStepper(ctx.task, cfg.n_envs, seed=10**8 + 10**6 * ctx.seed)
        self.offline_done = 0
        self.online_done = 0
        self.update_credit = 0.0  # fractional updates owed when utd * n_envs is not whole
        self._finite = FiniteSince()

    # -- helpers --------------------------------------------------------------------------------------

    def _indices(self, n: int) -> torch.Tensor:
        idx = self.ctx.np_rng.integers(0, self.buffer.size, size=(n, self.cfg.batch_size))
        return torch.as_tensor(idx, device=self.ctx.device)

    def _offline_actor_lr(self) -> float:
        if self.cfg.actor_lr_schedule == "cosine":
            return cosine_lr(self.cfg.actor_lr, self.offline_done, self.cfg.offline_updates)
        return self.cfg.actor_lr

    def _updates(self, n: int, online: bool, acc: dict[str, torch.Tensor], idx: torch.Tensor | None = None) -> None:
        idx = self._indices(n) if idx is None else idx
        for i in range(n):
            lr = self.cfg.online_actor_lr if online else self._offline_actor_lr()
            info = self.learner.update(self.buffer.sample(idx[i]), lr)
            for k, v in info.items():
                acc[k] = acc[k] + v if k in acc else v
            self._finite.add({k: acc[k] for k in self.FAULT_KEYS if k in acc})
            acc["_n"] = acc.get("_n", 0) + 1
            acc["_lr"] = acc.get("_lr", 0.0) + lr
            if online:
                self.online_done += 1
            else:
                self.offline_done += 1
        self.ctx.counters.policy_updates += n  # each update steps the actor, Q and V once
        self.ctx.counters.critic_updates += n
        self.ctx.counters.add("online_updates" if online else "offline_updates", n)

    def _diagnostics(self, acc: dict[str, torch.Tensor], phase: int) -> dict[str, float]:
        self._finite.check(self.FAULT_KEYS, "the offline update" if phase == 0 else "the online update")
        self._finite.reset()
        n = acc.pop("_n", 0)
        lr = acc.pop("_lr", 0.0)
        out: dict[str, float] = {"phase": phase}
        if n:
            out.update({k: float(v) / n for k, v in acc.items()})
            out["actor_lr"] = lr / n
        out.update(updates_offline=self.offline_done, updates_online=self.online_done,
                   buffer_size=self.buffer.size, reward_scale=self.reward_scale)
        return out

    # -- the OnlineMethod interface -------------------------------------------------------------------

    def train_iteration(self) -> dict[str, float]:
        acc: dict[str, torch.Tensor] = {}
        if self.offline_done < self.cfg.offline_updates:
            n = min(self.cfg.offline_updates_per_iteration, self.cfg.offline_updates - self.offline_done)
            self._updates(n, online=False, acc=acc)
            diag = self._diagnostics(acc, phase=0)
            if self.offline_done == self.cfg.offline_updates and self.cfg.offline_eval_episodes:
                r = self.evaluate(self.cfg.offline_eval_episodes, eval_seed(self.ctx.eval_cfg, self.ctx.seed, 0)).returns
                diag.update(offline_eval_return=float(r.mean()),
                            offline_eval_norm_return=float(np.mean(self.ctx.task.normalize(r))))
            return diag

        cfg, st = self.cfg, self.stepper
        ep_returns: list[float] = []
        steps = 0
        while steps < cfg.env_steps_per_iteration:
            noise = self.ctx.np_rng.standard_normal((st.n, self.ctx.act_dim))
            b = st.step(self.learner.act(st.obs, noise))
            scale = self.reward_scale if cfg.online_reward_scale == "offline" else 1.0
            self.buffer.add(obs=b.obs, act=b.actions, rew=b.rewards * scale + cfg.reward_shift,
                            next_obs=b.next_obs, mask=1.0 - b.terminals.astype(np.float32))
            steps += st.n
            ep_returns += b.episode_returns
            self.update_credit += cfg.utd * st.n
            n = int(self.update_credit + 1e-9)  # whole updates owed (the epsilon absorbs float drift)
            if n:
                self.update_credit -= n
                self._updates(n, online=True, acc=acc)
        self.ctx.counters.env_steps += steps
        diag = self._diagnostics(acc, phase=1)
        diag["explore_episodes"] = len(ep_returns)
        if ep_returns:
            diag["explore_return"] = float(np.mean(ep_returns))
        return diag

    def evaluate(self, episodes: int, seed: int) -> Evaluation:
        returns, lengths, goal = evaluate_policy(self.learner.act, self.ctx.task, episodes, seed=seed,
                                                 n_envs=self.ctx.eval_cfg.n_envs)
        self.ctx.counters.env_steps_eval += int(lengths.sum())
        return Evaluation(returns, goal)

    @classmethod
    def checkpoint_policy(cls, state: dict[str, Any], cfg: IQLConfig, obs_dim: int, act_dim: int,
                          device: torch.device):
        """The tanh-mean actor of a checkpoint's networks: what :meth:`evaluate` acts with."""
        learner = IQLLearner(obs_dim, act_dim, cfg, device)
        learner.load_state_dict(state["nets"])
        return learner.act

    def state_dict(self) -> dict[str, Any]:
        st = self.stepper
        return {
            "nets": self.learner.state_dict(),
            "optim": self.learner.optim_state(),
            "buffer": self.buffer.state_dict(skip=self.n_offline),
            "stepper": {"sim": [get_sim_state(e) for e in st.envs], "obs": st.obs.copy(), "t": st.t.copy(),
                        "ret": st.ret.copy(), "episodes": st._episodes},
            "offline_done": self.offline_done,
            "online_done": self.online_done,
            "update_credit": self.update_credit,
            "reward_scale": self.reward_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["nets"])
        self.learner.load_optim_state(state["optim"])
        self.buffer.load_state_dict(state["buffer"])
        st, s = self.stepper, state["stepper"]
        for env, sim in zip(st.envs, s["sim"]):
            set_sim_state(env, sim)
        st.obs[:], st.t[:], st.ret[:] = s["obs"], s["t"], s["ret"]
        st._episodes = s["episodes"]
        self.offline_done, self.online_done = state["offline_done"], state["online_done"]
        self.update_credit = state["update_credit"]
        self.reward_scale = state["reward_scale"]
