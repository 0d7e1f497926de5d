"""The one in-memory dataset form every source (D4RL HDF5, Minari, generator) produces.

A :class:`TrajectoryDataset` is a list of :class:`Trajectory` (whole episodes, or episode pieces
where a file cuts them) plus metadata. Validation lives here so every reader fails the same way:
one :class:`DataError` naming the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np


class DataError(ValueError):
    """A dataset is malformed; the message names the source and what is wrong."""


@dataclass
class Trajectory:
    observations: np.ndarray  # (T, obs_dim) float32
    actions: np.ndarray  # (T, act_dim) float32, in [-1, 1] for the MuJoCo tasks
    rewards: np.ndarray  # (T,) float32
    terminals: np.ndarray  # (T,) bool: the env terminated after this step (no bootstrap)
    timeouts: np.ndarray  # (T,) bool: the episode was cut by the time limit after this step
    qpos: np.ndarray | None = None  # (T, nq) float64, simulator position before each step
    qvel: np.ndarray | None = None  # (T, nv) float64
    sim_states: np.ndarray | None = None  # (T, S) float64 full mjSTATE_INTEGRATION state, for exact resets
    next_observations: np.ndarray | None = None  # (T, obs_dim), when the source has them

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def total_return(self) -> float:
        return float(self.rewards.sum(dtype=np.float64))

    def returns_to_go(self, gamma: float = 1.0) -> np.ndarray:
        """Undiscounted (gamma=1) or discounted returns-to-go, (T,) float32, computed once in numpy."""
        r = self.rewards.astype(np.float64)
        if gamma == 1.0:
            return np.cumsum(r[::-1])[::-1].astype(np.float32)
        out = np.empty_like(r)
        acc = 0.0
        for t in range(len(r) - 1, -1, -1):
            acc = r[t] + gamma * acc
            out[t] = acc
        return out.astype(np.float32)

    def slice(self, start: int, stop: int) -> "Trajectory":
        def s(x):
            return None if x is None else x[start:stop]

        return Trajectory(s(self.observations), s(self.actions), s(self.rewards), s(self.terminals),
                          s(self.timeouts), s(self.qpos), s(self.qvel), s(self.sim_states),
                          s(self.next_observations))


@dataclass
class TrajectoryDataset:
    trajectories: list[Trajectory]
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.trajectories)

    def __iter__(self):
        return iter(self.trajectories)

    def __getitem__(self, i: int) -> Trajectory:
        return self.trajectories[i]

    @property
    def num_transitions(self) -> int:
        return int(sum(len(t) for t in self.trajectories))

    @property
    def obs_dim(self) -> int:
        return int(self.trajectories[0].observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.trajectories[0].actions.shape[1])

    def returns(self) -> np.ndarray:
        return np.array([t.total_return for t in self.trajectories], dtype=np.float64)

    def state_stats(self, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of observations over all transitions (the DT's input normalisation)."""
        obs = np.concatenate([t.observations for t in self.trajectories], axis=0).astype(np.float64)
        return obs.mean(0).astype(np.float32), (obs.std(0) + eps).astype(np.float32)

    def top_k(self, k: int) -> list[Trajectory]:
        """The k trajectories with the highest return (ODT seeds its replay buffer with these)."""
        order = np.argsort(-self.returns(), kind="stable")[:k]
        return [self.trajectories[i] for i in order]

    def summary(self, task=None) -> dict[str, Any]:
        r = self.returns()
        out = {
            "source": self.source,
            "episodes": len(self.trajectories),
            "transitions": self.num_transitions,
            "return_mean": float(r.mean()),
            "return_std": float(r.std()),
            "return_min": float(r.min()),
            "return_max": float(r.max()),
            "has_sim_states": all(t.sim_states is not None for t in self.trajectories),
        }
        if task is not None:
            out["normalized_mean"] = float(task.normalize(r.mean()))
            out["normalized_std"] = float(task.normalize(r.mean() + r.std()) - task.normalize(r.mean()))
            out["normalized_min"] = float(task.normalize(r.min()))
            out["normalized_max"] = float(task.normalize(r.max()))
        return out

    def validate(self, obs_dim: int | None = None, act_dim: int | None = None) -> "TrajectoryDataset":
        """Check shapes, lengths and finiteness; raise one DataError naming the source and problem."""
        if not self.trajectories:
            raise DataError(f"{self.source}: the dataset holds no trajectories")
        for i, t in enumerate(self.trajectories):
            where = f"{self.source}: trajectory {i}"
            n = len(t)
            if n == 0:
                raise DataError(f"{where} is empty")
            for name in ("observations", "actions", "terminals", "timeouts", "qpos", "qvel", "sim_states",
                         "next_observations"):
                arr = getattr(t, name)
                if arr is not None and arr.shape[0] != n:
                    raise DataError(f"{where}: '{name}' has {arr.shape[0]} rows but 'rewards' has {n}")
            if t.observations.ndim != 2 or t.actions.ndim != 2:
                raise DataError(f"{where}: observations and actions must be 2-D (T, dim)")
            for name in ("observations", "actions", "rewards"):
                arr = getattr(t, name)
                if not np.all(np.isfinite(arr)):
                    raise DataError(f"{where}: '{name}' contains NaN or inf")
            if obs_dim is not None and t.observations.shape[1] != obs_dim:
                raise DataError(f"{where}: observations have {t.observations.shape[1]} dims but the env "
                                f"expects {obs_dim}; is this dataset for another environment or version?")
            if act_dim is not None and t.actions.shape[1] != act_dim:
                raise DataError(f"{where}: actions have {t.actions.shape[1]} dims but the env expects {act_dim}")
        return self


def split_episodes(
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray,
    source: str,
    extra: dict[str, np.ndarray] | None = None,
    keep_tail: bool = True,
) -> list[Trajectory]:
    """Cut flat D4RL-style arrays into trajectories at terminals | timeouts.

    A trailing piece that ends with neither flag (a file cut mid-episode) is kept as a trajectory
    with neither flag set, which downstream code treats like a timeout (no terminal bootstrap), or
    left out with ``keep_tail=False`` (what D4RL's ``sequence_dataset`` does; see d4rl_hdf5).
    """
    n = rewards.shape[0]
    for name, arr in (("observations", observations), ("actions", actions), ("terminals", terminals),
                      ("timeouts", timeouts), *((extra or {}).items())):
        if arr.shape[0] != n:
            raise DataError(f"{source}: '{name}' has {arr.shape[0]} rows but 'rewards' has {n}")
    ends = np.flatnonzero(np.logical_or(terminals, timeouts)) + 1
    bounds = list(ends)
    if keep_tail and (not bounds or bounds[-1] != n):
        bounds.append(n)
    trajs, start = [], 0
    extra = extra or {}
    for stop in bounds:
        if stop <= start:
            continue
        sl = slice(start, stop)
        trajs.append(Trajectory(
            observations=np.asarray(observations[sl], dtype=np.float32),
            actions=np.asarray(actions[sl], dtype=np.float32),
            rewards=np.asarray(rewards[sl], dtype=np.float32).reshape(-1),
            terminals=np.asarray(terminals[sl], dtype=bool).reshape(-1),
            timeouts=np.asarray(timeouts[sl], dtype=bool).reshape(-1),
            qpos=None if "qpos" not in extra else np.asarray(extra["qpos"][sl], dtype=np.float64),
            qvel=None if "qvel" not in extra else np.asarray(extra["qvel"][sl], dtype=np.float64),
            sim_states=None if "sim_states" not in extra else np.asarray(extra["sim_states"][sl], dtype=np.float64),
            next_observations=None if "next_observations" not in extra
            else np.asarray(extra["next_observations"][sl], dtype=np.float32),
        ))
        start = stop
    return trajs


def concat(datasets: Iterable[TrajectoryDataset], source: str) -> TrajectoryDataset:
    datasets = list(datasets)
    meta = {"parts": [d.metadata for d in datasets]}
    return TrajectoryDataset([t for d in datasets for t in d.trajectories], meta, source)
