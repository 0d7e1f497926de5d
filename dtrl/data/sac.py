"""dtrl's small, fast SAC: the learner behind the D4RL recipe's behaviour policies.

Soft actor-critic (Haarnoja et al. 2018) with a tanh-squashed Gaussian actor, twin Q critics with
Polyak-averaged targets and automatic entropy tuning (target entropy -act_dim). What makes it fast:

* the twin critics are one batched ensemble (``baddbmm`` over a leading member axis), so both Qs
  cost one kernel per layer, and the actor's critic evaluation reuses the same weights detached;
* one update computes the critic, actor and temperature losses in a single graph and takes one
  backward and one fused/foreach Adam step over all parameters. The losses touch disjoint
  parameters (targets under no_grad, critic weights detached in the actor loss, the temperature
  detached everywhere but its own loss), so the gradients equal three separate updates; the only
  difference to the textbook order is that the actor sees the critic from before this step's
  critic update, a one-step lag that SAC does not care about;
* the replay buffer lives on the training device as one packed (capacity, row) tensor, so a
  minibatch is one ``index_select``; indices come from ``torch.rand`` on the device, so an update
  never syncs with the host;
* on CUDA the updates of one env step (sac_envs * sac_utd of them) are captured once as a single
  CUDA graph and replayed: small-MLP SAC is bound by kernel-launch overhead, not by arithmetic.

Actions are the raw tanh outputs in [-1, 1] and are fed to ``env.step`` unscaled, exactly as the DT
rollout engine does, so the actions a dataset stores are the ones the env saw and lie in the DT's
squashed range (for every task but the pendulum this is also the env's full action range).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
_LOG2 = math.log(2.0)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy: obs -> MLP -> (mean, log_std) of the pre-tanh action."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, hidden
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2 * act_dim))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action in [-1, 1] and its log-probability (tanh change of variables)."""
        mean, log_std = self(obs)
        noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
        u = mean + log_std.exp() * noise
        # log N(u; mean, std) - sum log(1 - tanh(u)^2), the latter in its overflow-free softplus form.
        logp = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = logp - (2.0 * (_LOG2 - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), logp

    @torch.no_grad()
    def act(self, obs: np.ndarray, sample: bool = True, generator: torch.Generator | None = None) -> np.ndarray:
        """Batched actions for numpy observations (N, obs_dim), on the actor's device."""
        p = next(self.parameters())
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=p.device)
        if sample:
            a, _ = self.sample(x, generator)
        else:
            a = torch.tanh(self(x)[0])
        return a.cpu().numpy().astype(np.float32)


class EnsembleQ(nn.Module):
    """``members`` independent Q MLPs evaluated as one batched matmul per layer."""

    def __init__(self, in_dim: int, hidden: int, members: int = 2):
        super().__init__()
        dims = [in_dim, hidden, hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, o in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(i)  # nn.Linear's default initialisation, per member
            self.weights.append(nn.Parameter(torch.empty(members, i, o).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(members, 1, o).uniform_(-bound, bound)))
        self.members = members

    def forward(self, x: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """Q values (members, B) of inputs (B, in_dim); ``detach`` stops gradients into the weights."""
        h = x.unsqueeze(0).expand(self.members, *x.shape)
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            if detach:
                w, b = w.detach(), b.detach()
            h = torch.baddbmm(b, h, w)
            if k < last:
                h = F.relu(h)
        return h.squeeze(-1)


class SAC:
    """SAC learner with an on-device replay buffer. ``update(n)`` takes n gradient steps."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: Any, capacity: int, device: torch.device | str):
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        self.batch_size = int(cfg.sac_batch_size)
        self.gamma, self.tau = float(cfg.sac_gamma), float(cfg.sac_tau)
        self.target_entropy = -float(act_dim)
        dev = self.device
        self.actor = Actor(obs_dim, act_dim, cfg.sac_hidden).to(dev)
        self.critic = EnsembleQ(obs_dim + act_dim, cfg.sac_hidden).to(dev)
        self.critic_target = EnsembleQ(obs_dim + act_dim, cfg.sac_hidden).to(dev)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.full((), math.log(float(cfg.sac_init_alpha)), device=dev))
        self._graphable = dev.type == "cuda" and bool(getattr(cfg, "sac_cuda_graph", False))
        params = [*self.actor.parameters(), *self.critic.parameters(), self.log_alpha]
        opt_kw: dict[str, Any] = {"lr": float(cfg.sac_lr)}
        # One fused kernel for all parameters (CUDA and CPU both have one) instead of dozens of small ops.
        opt_kw["fused"] = True
        if dev.type == "cuda":
            opt_kw["capturable"] = self._graphable
        self.opt = torch.optim.Adam(params, **opt_kw)
        self._online = list(self.critic.parameters())
        self._target = list(self.critic_target.parameters())

        # Replay rows: [obs | action | reward | next_obs | terminal], float32, a ring of `capacity`.
        self.row_dim = 2 * obs_dim + act_dim + 2
        self.capacity = int(capacity)
        self.buffer = torch.zeros(self.capacity, self.row_dim, device=dev)
        self.size = 0
        self.ptr = 0
        # The buffer size as device tensors, read by the (possibly graph-captured) minibatch sampler.
        self._size_f = torch.zeros((), device=dev)
        self._size_last = torch.zeros((), dtype=torch.long, device=dev)
        # Last update's diagnostics, written on the device, read only when displayed.
        self.stats = torch.zeros(4, device=dev)  # critic loss, actor loss, alpha, entropy
        self.updates = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_k = 1

    # -- replay --------------------------------------------------------------------------------------
    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
            terminals: np.ndarray) -> None:
        n = obs.shape[0]
        rows = np.concatenate([obs, actions, rewards.reshape(n, 1), next_obs, terminals.reshape(n, 1)],
                              axis=1).astype(np.float32)
        self._put(torch.from_numpy(rows))

    def _put(self, rows: torch.Tensor) -> None:
        n = rows.shape[0]
        first = min(n, self.capacity - self.ptr)
        self.buffer[self.ptr:self.ptr + first].copy_(rows[:first], non_blocking=False)
        if first < n:
            self.buffer[:n - first].copy_(rows[first:])
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        self._size_f.fill_(float(self.size))
        self._size_last.fill_(self.size - 1)

    # -- learning ------------------------------------------------------------------------------------
    def _update_body(self) -> None:
        """One SAC gradient step; device ops only (no host sync), so it can be graph-captured."""
        B, S, A = self.batch_size, self.obs_dim, self.act_dim
        idx = torch.minimum((torch.rand(B, device=self.device) * self._size_f).long(), self._size_last)
        batch = self.buffer.index_select(0, idx)
        obs, act = batch[:, :S], batch[:, S:S + A]
        rew, next_obs, term = batch[:, S + A], batch[:, S + A + 1:2 * S + A + 1], batch[:, -1]

        # One actor pass over [obs; next_obs]: the obs half feeds the actor loss, the next_obs half
        # (detached) the critic target.
        pi_all, logp_all = self.actor.sample(torch.cat([obs, next_obs], 0))
        pi, logp = pi_all[:B], logp_all[:B]
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            q_next = self.critic_target(torch.cat([next_obs, pi_all[B:]], -1)).min(0).values
            target = rew + self.gamma * (1.0 - term) * (q_next - alpha * logp_all[B:])
        q = self.critic(torch.cat([obs, act], -1))
        critic_loss = 0.5 * (q - target).pow(2).mean(1).sum()
        q_pi = self.critic(torch.cat([obs, pi], -1), detach=True).min(0).values
        actor_loss = (alpha * logp - q_pi).mean()
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()

        self.opt.zero_grad(set_to_none=False)
        (critic_loss + actor_loss + alpha_loss).backward()
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._target, self._online, self.tau)
            self.stats.copy_(torch.stack([critic_loss.detach(), actor_loss.detach(), alpha, -logp.detach().mean()]))

    def update(self, n: int) -> None:
        """Take ``n`` gradient steps (graph replays of ``graph_k`` steps where available)."""
        if n <= 0:
            return
        if self.size < self.batch_size:
            raise RuntimeError(f"SAC update with {self.size} transitions in the buffer, fewer than a minibatch "
                               f"({self.batch_size}); raise sac_start_steps")
        done = 0
        if self._graphable and self._graph is None:
            done += self._capture(n)
        if self._graph is not None:
            while n - done >= self._graph_k:
                self._graph.replay()
                done += self._graph_k
        while done < n:
            self._update_body()
            done += 1
        self.updates += done  # the first call may overshoot n by the graph's warm-up updates

    def _capture(self, k: int) -> int:
        """Warm up on a side stream (real updates), then capture ``k`` updates as one CUDA graph."""
        warm = 3
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(warm):
                self._update_body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(k):
                self._update_body()
        self._graph, self._graph_k = graph, k
        return warm

    def diagnostics(self) -> dict[str, float]:
        c, a, alpha, ent = self.stats.tolist()
        return {"critic_loss": c, "actor_loss": a, "alpha": alpha, "entropy": ent}

    # -- saving --------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to resume learning (buffer included), on the CPU."""
        return {
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().cpu(),
            "opt": self.opt.state_dict(), "buffer": self.buffer[:self.size].cpu() if self.ptr == self.size
            else torch.cat([self.buffer[self.ptr:self.size], self.buffer[:self.ptr]]).cpu(),
            "updates": self.updates,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.opt.load_state_dict(state["opt"])
        self.size = self.ptr = 0
        self._put(state["buffer"].to(self.device))
        self.updates = int(state["updates"])


class NumpyActor:
    """The actor's forward pass in numpy, for dataset rollouts on the CPU.

    A batch of a few observations through a small MLP costs microseconds in numpy but can cost
    milliseconds in torch on a busy machine, where every op waits for its intra-op thread pool.
    """

    def __init__(self, actor: Actor):
        layers = [m for m in actor.net if isinstance(m, nn.Linear)]
        self.params = [(m.weight.detach().cpu().numpy().T.astype(np.float64), m.bias.detach().cpu().numpy()
                        .astype(np.float64)) for m in layers]
        self.act_dim = actor.act_dim

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.asarray(obs, dtype=np.float64)
        for k, (w, b) in enumerate(self.params):
            h = h @ w + b
            if k < len(self.params) - 1:
                h = np.maximum(h, 0.0)
        mean, log_std = h[:, : self.act_dim], h[:, self.act_dim:]
        return mean, np.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


def actor_payload(actor: Actor, **info: Any) -> dict[str, Any]:
    """A self-describing, CPU-side checkpoint of a policy (what ``load_actor`` reads)."""
    return {"kind": "dtrl_sac_actor", "obs_dim": actor.obs_dim, "act_dim": actor.act_dim, "hidden": actor.hidden,
            "state_dict": {k: v.detach().cpu().clone() for k, v in actor.state_dict().items()}, "info": info}


def load_actor(payload: dict[str, Any], device: str | torch.device = "cpu") -> Actor:
    if payload.get("kind") != "dtrl_sac_actor":
        raise ValueError("not a dtrl SAC actor checkpoint")
    actor = Actor(payload["obs_dim"], payload["act_dim"], payload["hidden"])
    actor.load_state_dict(payload["state_dict"])
    return actor.to(device).eval()
