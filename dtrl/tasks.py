"""Task registry: every benchmark task dtrl knows, named like D4RL (``hopper-medium``).

A task is an environment family (env id, episode limit, reference returns, ODT's RTG targets and
reward scale) crossed with a dataset quality (``random``, ``medium``, ...). New families (Adroit,
AntMaze) slot in with :func:`register_family`; one-off tasks with :func:`register_task`.

Reference returns define the normalised score ``100 * (R - ref_min) / (ref_max - ref_min)``.
For hopper, halfcheetah and walker2d the v5 reward is the v2 reward, so D4RL's values carry over.
Ant-v5 differs from the v2 ant D4RL used (contact cost and contact forces in the observation), so
its random reference is re-measured on v5 (see ``REF_MEASUREMENTS``); the expert value is kept from
D4RL until an expert policy is trained on v5, and that choice is recorded in the family note.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUALITIES = ("random", "medium", "medium-replay", "medium-expert", "expert")


class UnknownTaskError(KeyError):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        super().__init__(f"unknown task '{name}'. Known tasks: {', '.join(sorted(known))}")

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return self.args[0]


@dataclass(frozen=True)
class EnvFamily:
    """One simulated environment and the constants every method needs for it."""

    name: str  # short name, the task prefix: 'hopper'
    env_id: str  # Gymnasium id: 'Hopper-v5'
    max_episode_steps: int
    ref_min_score: float  # return of the random reference policy
    ref_max_score: float  # return of the expert reference policy
    eval_rtg: float  # ODT's evaluation return-to-go target
    online_rtg: float  # ODT's online exploration return-to-go target
    reward_scale: float = 1e-3  # RTG tokens are fed to the DT as rtg * reward_scale (ODT)
    resettable: bool = True  # simulator state can be saved and restored (GRPO); False -> QGRPO
    d4rl_prefix: str | None = None  # 'hopper' -> D4RL file name 'hopper-medium-v2'
    minari_prefix: str | None = None  # 'mujoco/hopper' -> Minari id 'mujoco/hopper/medium-v0'
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    qualities: tuple[str, ...] = QUALITIES
    note: str = ""
    suite: str = "locomotion"  # benchmark family the report groups by: locomotion, adroit, antmaze
    d4rl_version: str = "v2"  # D4RL dataset version: 'hopper-medium-v2', Adroit 'pen-human-v1'
    minari_version: str = "v0"  # Minari dataset version: 'mujoco/hopper/medium-v0', 'D4RL/pen/human-v2'
    generatable: bool = True  # dtrl's generator can make its datasets (D4RL's SAC recipe)


@dataclass(frozen=True)
class Task:
    """A benchmark task: an environment family and a dataset quality."""

    name: str
    family: EnvFamily
    quality: str

    # Conveniences so callers do not reach through .family for the common fields.
    @property
    def env_id(self) -> str:
        return self.family.env_id

    @property
    def max_episode_steps(self) -> int:
        return self.family.max_episode_steps

    @property
    def ref_min_score(self) -> float:
        return self.family.ref_min_score

    @property
    def ref_max_score(self) -> float:
        return self.family.ref_max_score

    @property
    def eval_rtg(self) -> float:
        return self.family.eval_rtg

    @property
    def online_rtg(self) -> float:
        return self.family.online_rtg

    @property
    def reward_scale(self) -> float:
        return self.family.reward_scale

    @property
    def resettable(self) -> bool:
        return self.family.resettable

    @property
    def d4rl_name(self) -> str | None:
        p = self.family.d4rl_prefix
        return f"{p}-{self.quality}-{self.family.d4rl_version}" if p else None

    @property
    def minari_id(self) -> str | None:
        p = self.family.minari_prefix
        return f"{p}/{self.quality}-{self.family.minari_version}" if p else None

    def normalize(self, returns: Any) -> Any:
        """D4RL normalised score, 100 * (R - min) / (max - min); works on scalars and arrays."""
        r = np.asarray(returns, dtype=np.float64)
        out = 100.0 * (r - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)
        return float(out) if out.ndim == 0 else out


# How the v5 references that differ from D4RL were measured (reproduce with
# `python scripts/measure_random_return.py ENV --episodes 100`): uniform random actions,
# 100 episodes, seeds 0..99, mean undiscounted return.
REF_MEASUREMENTS = {
    "ant": "Ant-v5, uniform random actions, 100 episodes (seeds 0-99): mean -47.457, std 81.33 "
           "(mujoco 4.0.0, gymnasium 1.4.0). D4RL's -325.6 was measured on ant-v2 with contact forces.",
    "pendulum": "InvertedPendulum-v5, uniform random actions, 100 episodes (seeds 0-99): mean 5.63, std 4.17.",
}

_FAMILIES: dict[str, EnvFamily] = {}
_EXTRA_TASKS: dict[str, Task] = {}


def register_family(family: EnvFamily) -> None:
    _FAMILIES[family.name] = family


def register_task(task: Task) -> None:
    _EXTRA_TASKS[task.name] = task


# D4RL MuJoCo locomotion on Gymnasium v5. RTG targets from the ODT paper (ant's unverified there).
register_family(EnvFamily("hopper", "Hopper-v5", 1000, -20.272305, 3234.3, 3600, 7200,
                          d4rl_prefix="hopper", minari_prefix="mujoco/hopper"))
register_family(EnvFamily("halfcheetah", "HalfCheetah-v5", 1000, -280.178953, 12135.0, 6000, 12000,
                          d4rl_prefix="halfcheetah", minari_prefix="mujoco/halfcheetah"))
register_family(EnvFamily("walker2d", "Walker2d-v5", 1000, 1.629008, 4592.3, 5000, 10000,
                          d4rl_prefix="walker2d", minari_prefix="mujoco/walker2d"))
register_family(EnvFamily("ant", "Ant-v5", 1000, -47.457, 3879.7, 6000, 12000,
                          d4rl_prefix="ant", minari_prefix="mujoco/ant",
                          note="ref_min re-measured on Ant-v5 (REF_MEASUREMENTS); ref_max is D4RL's v2 expert."))
# A tiny, fast environment for tests and the quick grid: 4-d observation, 1-d action, episodes end
# when the pole falls, so a weak policy scores little and learning is visible within CPU-minutes.
register_family(EnvFamily("pendulum", "InvertedPendulum-v5", 1000, 5.63, 1000.0, 1000, 2000,
                          reward_scale=1e-2, qualities=("random", "medium", "medium-replay", "expert"),
                          note="test/quick-grid family, not in the paper; ref_min measured (REF_MEASUREMENTS)."))

# Adroit and AntMaze (gymnasium-robotics, the `robotics` extra): their definitions and citations.
from dtrl import robotics as _robotics  # noqa: E402  (needs the names above)

_robotics.register_all(register_family, register_task)


def known_tasks() -> list[str]:
    names = [f"{fam.name}-{q}" for fam in _FAMILIES.values() for q in fam.qualities]
    return names + list(_EXTRA_TASKS)


def get_task(name: str) -> Task:
    """The task called ``name``; unknown names raise :class:`UnknownTaskError` listing known ones."""
    if name in _EXTRA_TASKS:
        return _EXTRA_TASKS[name]
    for fam in _FAMILIES.values():
        prefix = fam.name + "-"
        if name.startswith(prefix) and name[len(prefix):] in fam.qualities:
            return Task(name=name, family=fam, quality=name[len(prefix):])
    raise UnknownTaskError(name, known_tasks())


def get_family(name: str) -> EnvFamily:
    if name not in _FAMILIES:
        raise UnknownTaskError(name, list(_FAMILIES))
    return _FAMILIES[name]


def with_overrides(task: Task, **overrides: Any) -> Task:
    """A copy of ``task`` whose family fields are overridden (e.g. a shorter episode limit for tests)."""
    return dataclasses.replace(task, family=dataclasses.replace(task.family, **overrides))
