"""Many envs stepped together for memoryless (MLP) policies: SAC data generation, IQL, evaluation.

One ``step`` takes a batch of actions, steps every env, and returns the batch of transitions with
terminals and time-limit timeouts kept apart; finished envs are reset in place (auto-reset), so the
caller's loop is one policy forward + one ``step`` per batch of env steps. On a few cores stepping
in-process is fastest (MuJoCo steps take microseconds); with ``workers`` (config ``rollout_workers``)
the envs are stepped across worker processes with bit-identical results (dtrl.envs.workers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dtrl.envs.make import make_env
from dtrl.tasks import Task
from dtrl.envs.workers import EnvSet


@dataclass
class StepBatch:
    obs: np.ndarray  # (N, S) observation the action was taken in
    actions: np.ndarray  # (N, A)
    rewards: np.ndarray  # (N,)
    next_obs: np.ndarray  # (N, S) observation after the step (before any auto-reset)
    terminals: np.ndarray  # (N,) bool: the env ended the episode (no bootstrap)
    timeouts: np.ndarray  # (N,) bool: the time limit cut the episode (bootstrap)
    sim_states: np.ndarray | None  # (N, state) snapshots before the step, when recorded
    qpos: np.ndarray | None
    qvel: np.ndarray | None
    episode_returns: list[float]  # returns of the episodes that ended on this step
    episode_lengths: list[int]


class VecStepper:
    """``n_envs`` envs of one task under dtrl's time limit, stepped together (all, or a subset of rows).

    Episode seeds: by default episode k of the batch (counting every reset, the first ones
    included) is reset with ``seed + k``, so the run is reproducible from that counter alone (IQL
    saves it to resume exactly). With ``seeds`` the first resets use those seeds instead, and with
    ``reseed=False`` later episodes continue each env's own RNG (the dataset generator's streams).
    """

    def __init__(self, task: Task, n_envs: int, seed: int = 0, record_sim_states: bool = False,
                 seeds: list[int] | None = None, reseed: bool = True, workers: int = 0):
        self.task = task
        self.n = int(n_envs)
        # workers: env worker processes (dtrl.envs.workers), 0 = in-process
        self.env_set = EnvSet(task, [None] * self.n, workers)
        self.envs = self.env_set.envs  # the env objects when stepped in-process, else None
        self.record = record_sim_states
        self.reseed = reseed
        info = self.env_set.info
        self.obs_dim, self.act_dim = info["obs_dim"], info["act_dim"]
        self.nq, self.nv = info["nq"], info["nv"]
        self.state_dim = info["state_dim"]
        self.obs = np.zeros((self.n, self.obs_dim), dtype=np.float64)
        self.t = np.zeros(self.n, dtype=np.int64)
        self.ret = np.zeros(self.n, dtype=np.float64)
        self._seed = seed
        self._episodes = 0
        if seeds is None:
            for i in range(self.n):
                self._reset(i)
        else:
            if len(seeds) != self.n:
                raise ValueError(f"{len(seeds)} seeds for {self.n} envs")
            self.reset(seeds)
            self._episodes = self.n

    def _reset(self, i: int, seed: int | None = None) -> None:
        if seed is None and self.reseed:
            seed = self._seed + self._episodes
        self.obs[i] = self.env_set.reset([i], [None if seed is None else int(seed)])[0]
        self._episodes += 1
        self.t[i] = 0
        self.ret[i] = 0.0

    def reset(self, seeds: list[int]) -> None:
        """Start a new episode in every env, with the given seeds."""
        for i, s in enumerate(seeds):
            self._reset(i, s)

    def step(self, actions: np.ndarray, rows: np.ndarray | None = None, record: bool | None = None) -> StepBatch:
        """Step envs ``rows`` (default all) with ``actions`` (len(rows), act_dim); finished envs reset.

        ``record`` (default: ``record_sim_states``) adds the simulator snapshot, qpos and qvel from
        before the step.
        """
        rows = np.arange(self.n) if rows is None else np.asarray(rows)
        record = self.record if record is None else record
        m = len(rows)
        actions = np.asarray(actions, dtype=np.float64).reshape(m, self.act_dim)
        obs = self.obs[rows].copy()
        res = self.env_set.step(rows, actions, record)
        touts = np.zeros(m, dtype=bool)
        ep_returns, ep_lengths = [], []
        for j, i in enumerate(rows):
            self.t[i] += 1
            self.ret[i] += res.rewards[j]
            term = bool(res.terminals[j])
            touts[j] = (not term) and self.t[i] >= self.task.max_episode_steps
            if term or touts[j]:
                ep_returns.append(float(self.ret[i]))
                ep_lengths.append(int(self.t[i]))
                self._reset(i)
            else:
                self.obs[i] = res.obs[j]
        return StepBatch(obs, actions, res.rewards, res.obs, res.terminals, touts, res.sims, res.qpos, res.qvel,
                         ep_returns, ep_lengths)

    def state_dict(self) -> dict[str, Any]:
        """Everything the next steps depend on (simulator states, episode counters, each env's RNG), so a
        stepper restored with :meth:`load_state_dict` continues bit-identically."""
        rows = np.arange(self.n)
        return {"sim": list(self.env_set.get_sim(rows)), "obs": self.obs.copy(), "t": self.t.copy(),
                "ret": self.ret.copy(), "episodes": self._episodes, "np_random": self.env_set.get_rng(rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rows = np.arange(self.n)
        self.env_set.set_sim(rows, np.stack(state["sim"]))
        self.env_set.set_rng(rows, state["np_random"])
        self.obs[:], self.t[:], self.ret[:] = state["obs"], state["t"], state["ret"]
        self._episodes = int(state["episodes"])


def evaluate_policy(act: Callable[[np.ndarray], np.ndarray], task: Task, episodes: int, seed: int = 0,
                    n_envs: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(returns, lengths, goal steps) of ``episodes`` episodes of a memoryless deterministic policy; goal
    steps: per episode, the steps whose ``info["success"]`` was true (Adroit's success rate counts them).

    Envs are seeded seed, seed+1, ... per episode, so the result does not depend on ``n_envs``.
    """
    n = min(episodes, n_envs or episodes)
    envs = [make_env(task) for _ in range(n)]
    returns, lengths, goal = np.zeros(episodes), np.zeros(episodes, dtype=np.int64), np.zeros(episodes, dtype=np.int64)
    next_ep = 0
    slot_ep = np.full(n, -1)
    obs = np.zeros((n, envs[0].observation_space.shape[0]))
    for i in range(n):
        obs[i] = envs[i].reset(seed=seed + next_ep)[0]
        slot_ep[i] = next_ep
        next_ep += 1
    while (slot_ep >= 0).any():
        live = np.flatnonzero(slot_ep >= 0)
        acts = np.asarray(act(obs[live]), dtype=np.float64)
        for j, i in enumerate(live):
            o, r, term, _, info = envs[i].step(acts[j])
            e = slot_ep[i]
            returns[e] += r
            goal[e] += bool(info.get("success", False))
            lengths[e] += 1
            obs[i] = o
            if term or lengths[e] >= task.max_episode_steps:
                if next_ep < episodes:
                    obs[i] = envs[i].reset(seed=seed + next_ep)[0]
                    slot_ep[i] = next_ep
                    next_ep += 1
                else:
                    slot_ep[i] = -1
    return returns, lengths, goal
