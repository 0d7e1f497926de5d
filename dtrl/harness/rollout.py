"""Batched Decision-Transformer rollouts with exact resets.

:class:`RolloutEngine` steps many envs together with ONE batched DT forward per step. Each env's
context (the last K RTG/state/action/timestep tokens) lives in preallocated ``(N, K, .)`` tensors
on the model's device; a step shifts it left and writes the new token in place.

Every step records what a ratio method needs to re-evaluate it exactly: the action, the RTG token
*as fed to the policy* (``policy_rtg``: never relabeled), the log-prob under the acting policy, the
action's pre-squash variance and the variance of the squashed action the env receives (the two
weightings of active sampling) and, on request, the simulator snapshot taken before the step and
the whole context the policy saw.

An env can be put back into any recorded state with :meth:`RolloutEngine.restore` — simulator
state via ``mj_setState`` (bit-exact) plus the DT context rebuilt from the recorded trajectory —
which is how GRPO-DT rolls out groups of continuations from reset points.

The engine talks to the model through the backbone seam (:mod:`dtrl.models.backbone`): the DT's RTG token
is the running target (``target - rewards so far``); a backbone that ``predicts_rtg`` (Reinformer) is
asked for each step's RTG token before it acts, and that token is what is recorded and fed. A restored
env reuses the recorded token of its reset step, so its context is exactly the one recorded.

Time limits are enforced here (``task.max_episode_steps``): a cut is a timeout, never a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from dtrl.data.trajectories import Trajectory
from dtrl.models.dt import DecisionTransformer
from dtrl.util.guard import OutputCheck
from dtrl.tasks import Task
from dtrl.envs.workers import EnvSet


@dataclass
class RolloutTrajectory(Trajectory):
    """A trajectory collected online, with what the policy saw and did at each step."""

    policy_rtg: np.ndarray | None = None  # (T,) RTG token fed to the policy at each step (raw, unscaled)
    timesteps: np.ndarray | None = None  # (T,) env timestep of each step
    log_probs: np.ndarray | None = None  # (T,) log pi_old(a_t | context_t) of the taken action
    action_var: np.ndarray | None = None  # (T,) mean over action dims of the pre-squash Gaussian variance
    squashed_var: np.ndarray | None = None  # (T,) mean over action dims of Var[tanh(u)], u ~ the Gaussian
    sampled: np.ndarray | None = None  # (T,) bool: action was sampled (True) or the mean action (False)
    goal: np.ndarray | None = None  # (T,) bool: the env's info["success"] after the step (Adroit's goal_achieved)
    contexts: dict[str, np.ndarray] | None = None  # per step: states/actions/rtg/timesteps/mask (T, K, .)
    start_context: dict[str, np.ndarray] | None = None  # context history before step 0 (restored rollouts)


@dataclass
class Start:
    """Where an env begins: a fresh env reset (``traj is None``) or step ``t`` of a recorded trajectory."""

    target_rtg: float = 0.0  # used for fresh resets
    seed: int | None = None  # used for fresh resets
    traj: RolloutTrajectory | None = None
    t: int = 0


@dataclass
class _EnvBook:
    obs: list = field(default_factory=list)
    act: list = field(default_factory=list)
    rew: list = field(default_factory=list)
    term: list = field(default_factory=list)
    tout: list = field(default_factory=list)
    rtg: list = field(default_factory=list)
    ts: list = field(default_factory=list)
    logp: list = field(default_factory=list)
    var: list = field(default_factory=list)
    svar: list = field(default_factory=list)
    sampled: list = field(default_factory=list)
    goal: list = field(default_factory=list)
    sim: list = field(default_factory=list)
    ctx: list = field(default_factory=list)


class RolloutEngine:
    def __init__(self, task: Task, n_envs: int, context_len: int, device: torch.device | str = "cpu",
                 seed: int = 0, workers: int | None = None):
        self.task = task
        self.n = int(n_envs)
        self.K = int(context_len)
        self.device = torch.device(device)
        # workers: env worker processes (dtrl.envs.workers; None = config rollout_workers, 0 = in-process)
        self.env_set = EnvSet(task, [seed + i for i in range(self.n)], workers)
        self.envs = self.env_set.envs  # the env objects when stepped in-process, else None
        self.obs_dim, self.act_dim = self.env_set.info["obs_dim"], self.env_set.info["act_dim"]
        N, K, S, A, dev = self.n, self.K, self.obs_dim, self.act_dim, self.device
        self.c_states = torch.zeros(N, K, S, device=dev)
        self.c_actions = torch.zeros(N, K, A, device=dev)
        self.c_rtg = torch.zeros(N, K, device=dev)
        self.c_ts = torch.zeros(N, K, dtype=torch.long, device=dev)
        self.c_mask = torch.zeros(N, K, dtype=torch.bool, device=dev)
        self.t = np.zeros(N, dtype=np.int64)
        # float32 like the stored tokens, so an env restored from a recorded RTG continues bit-identically
        self.rtg = np.zeros(N, dtype=np.float32)
        self.obs = np.zeros((N, S), dtype=np.float64)
        self.active = np.zeros(N, dtype=bool)
        # The last slot's RTG token is already the one to act with (a restored step's recorded token), so a
        # backbone that predicts its RTG (dtrl.models.backbone) is not asked again there.
        self.rtg_given = np.zeros(N, dtype=bool)
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)

    # -- putting envs somewhere --------------------------------------------------------------------
    def _clear_context(self, i: int) -> None:
        self.c_states[i].zero_()
        self.c_actions[i].zero_()
        self.c_rtg[i].zero_()
        self.c_ts[i].zero_()
        self.c_mask[i].zero_()

    def _write_last(self, i: int) -> None:
        """Write env i's current (state, rtg, t) into the last context slot; its action stays 0."""
        self.c_states[i, -1] = torch.as_tensor(self.obs[i], dtype=torch.float32, device=self.device)
        self.c_rtg[i, -1] = float(self.rtg[i])
        self.c_ts[i, -1] = int(self.t[i])
        self.c_actions[i, -1] = 0.0
        self.c_mask[i, -1] = True

    def reset(self, i: int, target_rtg: float, seed: int | None = None) -> None:
        self.obs[i] = self.env_set.reset([i], [seed])[0]
        self.t[i] = 0
        self.rtg[i] = target_rtg
        self._clear_context(i)
        self._write_last(i)
        self.active[i] = True
        self.rtg_given[i] = False

    def restore(self, i: int, traj: RolloutTrajectory, t: int) -> None:
        """Put env i exactly where ``traj`` was before its step ``t``: simulator and DT context."""
        if traj.sim_states is None:
            raise ValueError("cannot restore: the trajectory was collected without record_sim_states=True")
        self.env_set.set_sim([i], traj.sim_states[t][None])
        self.obs[i] = traj.observations[t]
        self.t[i] = int(traj.timesteps[t])
        self.rtg[i] = float(traj.policy_rtg[t])
        ctx = context_at(traj, t, self.K)
        self.c_states[i] = torch.as_tensor(ctx["states"], device=self.device)
        self.c_actions[i] = torch.as_tensor(ctx["actions"], device=self.device)
        self.c_rtg[i] = torch.as_tensor(ctx["rtg"], device=self.device)
        self.c_ts[i] = torch.as_tensor(ctx["timesteps"], device=self.device)
        self.c_mask[i] = torch.as_tensor(ctx["mask"], device=self.device)
        self.active[i] = True
        self.rtg_given[i] = True

    # -- stepping ----------------------------------------------------------------------------------
    @torch.no_grad()
    def condition(self, model: DecisionTransformer, rows_np: np.ndarray, context_len: int | None = None) -> None:
        """Write the RTG token a backbone that predicts it acts with into the last slot of the given rows
        (not where it is already given: a restored step). Nothing for the DT, nor for a module that is no
        backbone (a wrapper acting with the DT, e.g. ODT+TD3's exploration noise)."""
        if not getattr(model, "predicts_rtg", False):
            return
        rows_np = rows_np[~self.rtg_given[rows_np]]
        if len(rows_np) == 0:
            return
        k = self.K if context_len is None else min(context_len, self.K)
        rows = torch.as_tensor(rows_np, device=self.device)
        pred = model.predict_rtg(self.c_states[rows, -k:], self.c_actions[rows, -k:], self.c_rtg[rows, -k:],
                                 self.c_ts[rows, -k:], self.c_mask[rows, -k:]).float()
        self.c_rtg[rows, -1] = pred
        self.rtg[rows_np] = pred.cpu().numpy()
        self.rtg_given[rows_np] = True

    @torch.no_grad()
    def policy(self, model: DecisionTransformer, rows: torch.Tensor, context_len: int | None = None):
        """The action distribution at the last context slot of the given env rows."""
        k = self.K if context_len is None else min(context_len, self.K)
        dist = model(self.c_states[rows, -k:], self.c_actions[rows, -k:], self.c_rtg[rows, -k:],
                     self.c_ts[rows, -k:], self.c_mask[rows, -k:])
        mean, log_std = dist.mean[:, -1], dist.log_std[:, -1]
        return type(dist)(mean, log_std)

    def run(self, model: DecisionTransformer, starts: Sequence[Start], sample_steps: int | Sequence[int],
            max_steps: int | None = None, record_sim_states: bool = False, record_contexts: bool = False,
            context_len: int | None = None, sample_all: bool = False) -> list[RolloutTrajectory]:
        """Roll out one trajectory per start, all envs stepped together.

        Each env takes its first ``sample_steps`` actions sampled from the policy and the rest as
        the mean action (``sample_all`` samples every action), for at most ``max_steps`` steps,
        ending early at a terminal or the task's time limit. ``len(starts) <= n_envs``.
        """
        if len(starts) > self.n:
            raise ValueError(f"{len(starts)} starts but the engine has {self.n} envs")
        was_training = model.training
        model.eval()  # the acting policy never uses dropout, so logged log-probs are reproducible
        try:
            return self._run(model, starts, sample_steps, max_steps, record_sim_states, record_contexts,
                             context_len, sample_all)
        finally:
            model.train(was_training)

    def _run(self, model, starts, sample_steps, max_steps, record_sim_states, record_contexts, context_len,
             sample_all):
        n = len(starts)
        self.active[:] = False
        for i, s in enumerate(starts):
            if s.traj is None:
                self.reset(i, s.target_rtg, s.seed)
            else:
                self.restore(i, s.traj, s.t)
        sample_budget = np.broadcast_to(np.asarray(sample_steps, dtype=np.int64), (n,)).copy()
        limit = np.full(n, np.iinfo(np.int64).max if max_steps is None else int(max_steps), dtype=np.int64)
        taken = np.zeros(n, dtype=np.int64)
        books = [_EnvBook() for _ in range(n)]
        k_ctx = self.K if context_len is None else min(context_len, self.K)
        outputs = OutputCheck(self.device)  # a policy emitting NaN is never scored (dtrl.util.guard)
        while self.active[:n].any():
            rows_np = np.flatnonzero(self.active[:n])
            rows = torch.as_tensor(rows_np, device=self.device)
            self.condition(model, rows_np, k_ctx)
            dist = self.policy(model, rows, k_ctx)
            outputs.add(dist.mean, dist.log_std)
            # Before any env receives the actions (the loop reads them back every step anyway): a NaN action
            # never reaches the simulator, which would only warn and reset itself.
            outputs.check("the policy's outputs in a rollout")
            sample = torch.as_tensor(sample_all | (taken[rows_np] < sample_budget[rows_np]), device=self.device)
            noise = torch.randn(dist.mean.shape, generator=self.generator, device=self.device)
            action = torch.where(sample[:, None], dist.action_from_noise(noise), dist.mode)
            logp = dist.log_prob(action)
            var = (2.0 * dist.log_std).exp().mean(-1)
            svar = squashed_variance(dist.mean, dist.std).mean(-1)
            if record_contexts:
                ctx = {"states": self.c_states[rows, -k_ctx:].cpu().numpy(),
                       "actions": self.c_actions[rows, -k_ctx:].cpu().numpy(),
                       "rtg": self.c_rtg[rows, -k_ctx:].cpu().numpy(),
                       "timesteps": self.c_ts[rows, -k_ctx:].cpu().numpy(),
                       "mask": self.c_mask[rows, -k_ctx:].cpu().numpy()}
            self.c_actions[rows, -1] = action
            act_np = action.cpu().numpy().astype(np.float64)
            stepped = self.env_set.step(rows_np, act_np, record_sim_states)  # every env at once
            logp_np, var_np, sample_np = logp.cpu().numpy(), var.cpu().numpy(), sample.cpu().numpy()
            svar_np = svar.cpu().numpy()
            for j, i in enumerate(rows_np):
                b = books[i]
                if record_sim_states:
                    b.sim.append(stepped.sims[j])
                obs, reward, terminated = stepped.obs[j], stepped.rewards[j], bool(stepped.terminals[j])
                b.obs.append(self.obs[i].copy())
                b.act.append(act_np[j])
                b.rew.append(float(reward))
                b.rtg.append(self.rtg[i])
                b.ts.append(int(self.t[i]))
                b.logp.append(logp_np[j])
                b.var.append(var_np[j])
                b.svar.append(svar_np[j])
                b.sampled.append(bool(sample_np[j]))
                b.goal.append(bool(stepped.goal[j]))
                if record_contexts:
                    b.ctx.append({k: v[j] for k, v in ctx.items()})
                self.t[i] += 1
                taken[i] += 1
                self.rtg[i] -= np.float32(reward)
                self.obs[i] = obs
                timeout = (not terminated) and self.t[i] >= self.task.max_episode_steps
                b.term.append(bool(terminated))
                b.tout.append(bool(timeout))
                if terminated or timeout or taken[i] >= limit[i]:
                    self.active[i] = False
            self._shift(rows_np[self.active[rows_np]])
        return [self._finish(books[i], starts[i], record_contexts) for i in range(n)]

    def _shift(self, rows_np: np.ndarray) -> None:
        if len(rows_np) == 0:
            return
        rows = torch.as_tensor(rows_np, device=self.device)
        for buf in (self.c_states, self.c_actions, self.c_rtg, self.c_ts, self.c_mask):
            buf[rows] = torch.roll(buf[rows], shifts=-1, dims=1)
        self.c_states[rows, -1] = torch.as_tensor(self.obs[rows_np], dtype=torch.float32, device=self.device)
        self.c_rtg[rows, -1] = torch.as_tensor(self.rtg[rows_np], dtype=torch.float32, device=self.device)
        self.c_ts[rows, -1] = torch.as_tensor(self.t[rows_np], device=self.device)
        self.c_actions[rows, -1] = 0.0
        self.c_mask[rows, -1] = True
        self.rtg_given[rows_np] = False

    def _finish(self, b: _EnvBook, start: Start, record_contexts: bool) -> RolloutTrajectory:
        T = len(b.rew)
        traj = RolloutTrajectory(
            observations=np.asarray(b.obs, dtype=np.float32).reshape(T, self.obs_dim),
            actions=np.asarray(b.act, dtype=np.float32).reshape(T, self.act_dim),
            rewards=np.asarray(b.rew, dtype=np.float32),
            terminals=np.asarray(b.term, dtype=bool),
            timeouts=np.asarray(b.tout, dtype=bool),
            sim_states=np.asarray(b.sim) if b.sim else None,
            policy_rtg=np.asarray(b.rtg, dtype=np.float32),
            timesteps=np.asarray(b.ts, dtype=np.int64),
            log_probs=np.asarray(b.logp, dtype=np.float32),
            action_var=np.asarray(b.var, dtype=np.float32),
            squashed_var=np.asarray(b.svar, dtype=np.float32),
            sampled=np.asarray(b.sampled, dtype=bool),
            goal=np.asarray(b.goal, dtype=bool),
        )
        if record_contexts:
            traj.contexts = {k: np.stack([c[k] for c in b.ctx]) for k in b.ctx[0]} if b.ctx else None
        if start.traj is not None:
            traj.start_context = context_at(start.traj, start.t, self.K)
        return traj


# Gauss-Hermite rule for E[f(u)], u ~ N(mu, sigma^2): sum_i w_i f(mu + sqrt(2) sigma x_i) / sqrt(pi).
# With 16 nodes the variance (which lies in [0, 1]) is off by < 3e-4 for sigma <= 1 and ~5e-3 at sigma 1.5
# (scipy.integrate.quad as reference): ample to rank states. It draws no random number, so recording it
# leaves every rollout's random stream unchanged.
_GH_X, _GH_W = np.polynomial.hermite.hermgauss(16)


def squashed_variance(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Var[tanh(u)] per action dimension, u ~ N(mean, std^2): how much the action the env receives varies.

    Near tanh saturation (|mean| large) the pre-squash variance can be large while this is ~0.
    """
    x = torch.as_tensor(_GH_X * np.sqrt(2.0), dtype=mean.dtype, device=mean.device)
    w = torch.as_tensor(_GH_W / np.sqrt(np.pi), dtype=mean.dtype, device=mean.device)
    a = torch.tanh(mean[..., None] + std[..., None] * x)
    m1 = (a * w).sum(-1)
    m2 = (a * a * w).sum(-1)
    return (m2 - m1 * m1).clamp_min(0.0)


def context_at(traj: RolloutTrajectory, t: int, K: int) -> dict[str, np.ndarray]:
    """The K-step context the policy saw at step ``t`` of ``traj`` (left-padded, last action zero)."""
    lo = max(0, t - K + 1)
    n = t - lo + 1
    S, A = traj.observations.shape[1], traj.actions.shape[1]
    out = {"states": np.zeros((K, S), np.float32), "actions": np.zeros((K, A), np.float32),
           "rtg": np.zeros(K, np.float32), "timesteps": np.zeros(K, np.int64), "mask": np.zeros(K, bool)}
    out["states"][K - n:] = traj.observations[lo:t + 1]
    out["actions"][K - n:K - 1] = traj.actions[lo:t]
    out["rtg"][K - n:] = traj.policy_rtg[lo:t + 1]
    out["timesteps"][K - n:] = traj.timesteps[lo:t + 1]
    out["mask"][K - n:] = True
    if traj.start_context is not None and n < K:
        # A restored rollout's early steps also saw the history from before its reset point.
        need = K - n
        sc = traj.start_context
        # start_context's last slot is step 0 of this trajectory itself (already written above); it has
        # the engine's context length, which may exceed K.
        L = len(sc["mask"])
        for key in ("states", "actions", "rtg", "timesteps", "mask"):
            out[key][:need] = sc[key][L - 1 - need:L - 1]
    return out


def collect_episodes(engine: RolloutEngine, model: DecisionTransformer, n_episodes: int, target_rtg: float,
                     seeds: Sequence[int] | None = None, sample: bool = True, record_sim_states: bool = False,
                     record_contexts: bool = False, context_len: int | None = None) -> list[RolloutTrajectory]:
    """Whole episodes from fresh resets, in batches of the engine's size."""
    out: list[RolloutTrajectory] = []
    for lo in range(0, n_episodes, engine.n):
        hi = min(n_episodes, lo + engine.n)
        starts = [Start(target_rtg=target_rtg, seed=None if seeds is None else int(seeds[k])) for k in range(lo, hi)]
        out += engine.run(model, starts, sample_steps=0, record_sim_states=record_sim_states,
                          record_contexts=record_contexts, context_len=context_len, sample_all=sample)
    return out
