"""Critics for the DT policy-gradient variants: a TD3-style twin Q (QGRPO), a value function (PPO-DT),
and a replay buffer of whole online trajectories that rebuilds the DT context of any stored step.

The critics are Markovian MLPs on the raw environment state (normalised with the DT's own state
statistics); only the *policy* is the Decision Transformer. The buffer keeps what a TD target with
the DT as target actor needs: the next state's exact DT context (RTG tokens as fed at rollout time),
built by index arithmetic from flat arrays rather than stored per transition.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dtrl.harness.rollout import RolloutTrajectory


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, orthogonal_init: bool = False) -> nn.Sequential:
    """ReLU MLP. ``orthogonal_init``: orthogonal weights (gain sqrt 2) and zero biases, flax's default
    init that IQL's reference code uses; otherwise torch's default init."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    if orthogonal_init:
        for m in layers:
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, gain=math.sqrt(2.0))
                nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class TwinQ(nn.Module):
    """Two independent Q(s, a) MLPs (TD3's clipped double-Q)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], state_mean, state_std):
        super().__init__()
        self.register_buffer("state_mean", torch.as_tensor(state_mean, dtype=torch.float32).clone())
        self.register_buffer("state_std", torch.as_tensor(state_std, dtype=torch.float32).clone())
        self.q1 = mlp(obs_dim + act_dim, hidden, 1)
        self.q2 = mlp(obs_dim + act_dim, hidden, 1)

    def forward(self, obs: torch.Tensor, act: torch.Tensor, frozen: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q1, Q2). ``frozen``: with the parameters detached, so the result's gradient reaches ``act``
        (and whatever produced it) but never the critic; the same values, and no toggling of
        ``requires_grad`` (which a compiled region could not do)."""
        x = torch.cat([(obs - self.state_mean) / self.state_std, act], dim=-1)
        if not frozen:
            return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)
        return _frozen_mlp(self.q1, x).squeeze(-1), _frozen_mlp(self.q2, x).squeeze(-1)


def _frozen_mlp(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` with every Linear's weight and bias detached (the layers of :func:`mlp`)."""
    for m in net:
        if isinstance(m, nn.Linear):
            x = F.linear(x, m.weight.detach(), None if m.bias is None else m.bias.detach())
        else:
            x = m(x)
    return x


class ValueNet(nn.Module):
    """V(s, rtg, t): the DT policy depends on its RTG token and the timestep, so the value does too.

    Outputs are in units of ``1 / value_scale`` (returns times the task's reward scale), so the
    regression is well conditioned whatever the reward magnitude; :meth:`forward` returns raw returns.
    """

    def __init__(self, obs_dim: int, hidden: Sequence[int], state_mean, state_std, rtg_scale: float,
                 max_timestep: int, value_scale: float):
        super().__init__()
        self.register_buffer("state_mean", torch.as_tensor(state_mean, dtype=torch.float32).clone())
        self.register_buffer("state_std", torch.as_tensor(state_std, dtype=torch.float32).clone())
        self.rtg_scale, self.max_timestep, self.value_scale = float(rtg_scale), float(max_timestep), float(value_scale)
        self.net = mlp(obs_dim + 2, hidden, 1)

    def scaled(self, obs: torch.Tensor, rtg: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = torch.cat([(obs - self.state_mean) / self.state_std, (rtg * self.rtg_scale)[:, None],
                       (t.float() / self.max_timestep)[:, None]], dim=-1)
        return self.net(x).squeeze(-1)

    def forward(self, obs: torch.Tensor, rtg: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scaled(obs, rtg, t) / self.value_scale


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source, parameter by parameter: two multi-tensor kernels (the same
    arithmetic as ``pt.mul_(1 - tau).add_(ps, alpha=tau)`` per parameter)."""
    tgt, src = list(target.parameters()), list(source.parameters())
    if len(tgt) != len(src):
        raise ValueError(f"soft_update: target has {len(tgt)} parameters, source {len(src)}")
    if tgt:
        torch._foreach_mul_(tgt, 1.0 - tau)
        torch._foreach_add_(tgt, src, alpha=tau)


def final_rtg(traj: RolloutTrajectory) -> np.float32:
    """The RTG token the policy would have been fed after the last step (float32, as the engine keeps it)."""
    return np.float32(traj.policy_rtg[-1]) - np.float32(traj.rewards[-1])


class TrajectoryBuffer:
    """FIFO replay of whole online trajectories, sampled as transitions with the next step's DT context.

    Each trajectory is stored *extended* by its final position (the observation after its last step,
    the RTG token after it, timestep + 1), so a timeout's last transition can bootstrap: timeouts
    are never terminals.
    """

    def __init__(self, capacity: int, context_len: int):
        self.capacity, self.K = int(capacity), int(context_len)
        self.trajs: list[dict[str, np.ndarray]] = []
        self.size = 0
        self._flat: dict[str, np.ndarray] | None = None

    def add(self, traj: RolloutTrajectory, final_obs: np.ndarray) -> None:
        T = len(traj)
        self.trajs.append({
            "obs": np.concatenate([traj.observations, np.asarray(final_obs, np.float32)[None]]).astype(np.float32),
            "act": np.concatenate([traj.actions, np.zeros((1, traj.actions.shape[1]), np.float32)]),
            "rtg": np.concatenate([traj.policy_rtg, [final_rtg(traj)]]).astype(np.float32),
            "ts": np.concatenate([traj.timesteps, [traj.timesteps[-1] + 1]]).astype(np.int64),
            "rew": traj.rewards.astype(np.float32),
            "term": traj.terminals.astype(bool),
        })
        self.size += T
        while self.size > self.capacity and len(self.trajs) > 1:
            self.size -= len(self.trajs.pop(0)["rew"])
        self._flat = None

    def _build(self) -> dict[str, np.ndarray]:
        if self._flat is None:
            lens = np.array([len(d["rew"]) for d in self.trajs])
            starts = np.concatenate([[0], np.cumsum(lens + 1)[:-1]])  # flat index of each trajectory's position 0
            flat = {k: np.concatenate([d[k] for d in self.trajs]) for k in ("obs", "act", "rtg", "ts")}
            flat["ep_start"] = np.repeat(starts, lens + 1)
            flat["trans_pos"] = np.concatenate([s + np.arange(n) for s, n in zip(starts, lens)])
            flat["rew"] = np.concatenate([d["rew"] for d in self.trajs])
            flat["term"] = np.concatenate([d["term"] for d in self.trajs])
            self._flat = flat
        return self._flat

    def contexts(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        """The K-step DT contexts at flat positions ``pos`` (as ``rollout.context_at`` builds them)."""
        f = self._build()
        idx = pos[:, None] + np.arange(-self.K + 1, 1)[None, :]
        valid = idx >= f["ep_start"][pos][:, None]
        idx = np.where(valid, idx, f["ep_start"][pos][:, None])
        out = {"states": f["obs"][idx] * valid[..., None], "actions": f["act"][idx] * valid[..., None],
               "rtg": f["rtg"][idx] * valid, "timesteps": f["ts"][idx] * valid, "mask": valid}
        out["actions"][:, -1] = 0.0
        return out

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        f = self._build()
        j = rng.integers(0, len(f["trans_pos"]), size=n)
        p = f["trans_pos"][j]
        return {"obs": f["obs"][p], "act": f["act"][p], "rew": f["rew"][j], "term": f["term"][j],
                "next_obs": f["obs"][p + 1], "next_ctx": self.contexts(p + 1)}

    def state_dict(self) -> dict:
        return {"trajs": self.trajs, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        self.trajs, self.size, self._flat = list(state["trajs"]), int(state["size"]), None
