"""Task registry: every benchmark task dtrl knows, named like D4RL (``hopper-medium``).

A task is an environment family (env id, episode limit, reference returns, ODT's RTG targets and
reward scale) crossed with a dataset quality (``random``, ``medium``, ...). New families (Adroit,
AntMaze) slot in with :func:`register_family`; one-off tasks with :func:`register_task`.

Reference returns define the normalised score ``100 * (R - ref_min) / (ref_max - ref_min)``.
``ref_min_score``/``ref_max_score`` are D4RL's pairs (Farama-Foundation/D4RL @89141a6,
``d4rl/infos.py`` REF_MIN_SCORE/REF_MAX_SCORE), so scores printed next to published columns use
the published normalisation. For hopper, halfcheetah and walker2d the v5 reward has the v2 reward's
terms, with one change: Hopper-v5 and Walker2d-v5 pay the healthy reward only while healthy, so the
step that ends an episode earns 1 less than in v2-v4 (Gymnasium 1.4.0 ``hopper_v5.py:143``,
``walker2d_v5.py:152``). Walker2d-v5 also changed the model: both feet have friction 1.9, where the
v2-v4 model behind D4RL's walker2d data and references gave the right foot 0.9
(``walker2d_v5.py:151``; it slides less and needs more force to move), so a D4RL-trained walker
acts in slightly different dynamics here. Ant-v5 differs from the v2 ant D4RL used (contact cost
and contact forces in the observation), so its random return is also re-measured on v5
(``v5_random_score``, see ``REF_MEASUREMENTS``): that gives a second, separately labelled
normalisation (:meth:`Task.normalize_v5`), never the main one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUALITIES = ("random", "medium", "medium-replay", "medium-expert", "expert")


class UnknownTaskError(KeyError):
    def __init__(self, name: str, known: list[str]):
        import difflib

        self.name = name
        close = difflib.get_close_matches(str(name), known, n=1)
        self.closest = close[0] if close else None
        hint = f" Did you mean '{close[0]}'?" if close else ""
        super().__init__(f"unknown task '{name}'.{hint} Known tasks: {', '.join(sorted(known))}")

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return self.args[0]


@dataclass(frozen=True)
class EnvFamily:
    """One simulated environment and the constants every method needs for it."""

    name: str  # short name, the task prefix: 'hopper'
    env_id: str  # Gymnasium id: 'Hopper-v5'
    max_episode_steps: int
    ref_min_score: float  # return of the random reference policy (D4RL's, where D4RL has the task)
    ref_max_score: float  # return of the expert reference policy (D4RL's, where D4RL has the task)
    eval_rtg: float  # ODT's evaluation return-to-go target
    online_rtg: float  # ODT's online exploration return-to-go target
    reward_scale: float = 1e-3  # RTG tokens are fed to the DT as rtg * reward_scale (ODT)
    resettable: bool = True  # simulator state can be saved and restored (GRPO); False -> QGRPO
    d4rl_prefix: str | None = None  # 'hopper' -> D4RL file name 'hopper-medium-v2'
    minari_prefix: str | None = None  # 'mujoco/hopper' -> Minari id 'mujoco/hopper/medium-v0'
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    qualities: tuple[str, ...] = QUALITIES
    note: str = ""
    v5_random_score: float | None = None  # random return re-measured on the v5 env, where it differs (REF_MEASUREMENTS)
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
        return _normalize(returns, self.ref_min_score, self.ref_max_score)

    def normalize_v5(self, returns: Any) -> Any:
        """The score with the v5-measured random return in place of D4RL's (None where none was measured).

        A separate, labelled number: comparisons with published scores use :meth:`normalize`.
        """
        lo = self.family.v5_random_score
        return None if lo is None else _normalize(returns, lo, self.ref_max_score)


def _normalize(returns: Any, lo: float, hi: float) -> Any:
    r = np.asarray(returns, dtype=np.float64)
    out = 100.0 * (r - lo) / (hi - lo)
    return float(out) if out.ndim == 0 else out


# How the v5 references that differ from D4RL were measured (reproduce with
# `python scripts/measure_random_return.py ENV --episodes 100`): uniform random actions,
# 100 episodes, seeds 0..99, mean undiscounted return.
REF_MEASUREMENTS = {
    "ant": "Ant-v5, uniform random actions, 100 episodes (seeds 0-99): mean -47.457, std 81.33 "
           "(mujoco 4.0.0, gymnasium 1.4.0): EnvFamily.v5_random_score. D4RL's -325.6, the main "
           "normalisation, was measured on ant-v2 with contact forces.",
    "pendulum": "InvertedPendulum-v5, uniform random actions, 100 episodes (seeds 0-99): mean 5.63, std 4.17.",
}

_FAMILIES: dict[str, EnvFamily] = {}
_EXTRA_TASKS: dict[str, Task] = {}


def register_family(family: EnvFamily) -> None:
    _FAMILIES[family.name] = family


def register_task(task: Task) -> None:
    _EXTRA_TASKS[task.name] = task


# D4RL MuJoCo locomotion on Gymnasium v5. RTG targets (eval, online) of the code behind the published
# ODT and ODT+TD3 numbers (KaiYan289/RL_as_Vitamin_for_Online_Decision_Transformers @de8be0a):
# hopper get_args.py:22,44 defaults 3600/7200; readme.md:105-114 halfcheetah 6000/12000,
# walker2d 5000/10000, ant 5000/10000 (ODT's paper has no ant target).
register_family(EnvFamily("hopper", "Hopper-v5", 1000, -20.272305, 3234.3, 3600, 7200,
                          d4rl_prefix="hopper", minari_prefix="mujoco/hopper",
                          note="v5 pays no healthy reward on the step that ends an episode (v2-v4: 1; Gymnasium "
                               "hopper_v5.py:143)."))
register_family(EnvFamily("halfcheetah", "HalfCheetah-v5", 1000, -280.178953, 12135.0, 6000, 12000,
                          d4rl_prefix="halfcheetah", minari_prefix="mujoco/halfcheetah"))
register_family(EnvFamily("walker2d", "Walker2d-v5", 1000, 1.629008, 4592.3, 5000, 10000,
                          d4rl_prefix="walker2d", minari_prefix="mujoco/walker2d",
                          note="Walker2d-v5 gives both feet friction 1.9; D4RL's walker2d-v2 data and references "
                               "come from the model whose right foot has 0.9 (Gymnasium walker2d_v5.py:151). v5 "
                               "also pays no healthy reward on the step that ends an episode (walker2d_v5.py:152)."))
register_family(EnvFamily("ant", "Ant-v5", 1000, -325.6, 3879.7, 5000, 10000,
                          d4rl_prefix="ant", minari_prefix="mujoco/ant", v5_random_score=-47.457,
                          note="ref min/max are D4RL's ant-v2 pair (d4rl/infos.py:144-148,234-238); the random "
                               "return re-measured on Ant-v5 is v5_random_score (REF_MEASUREMENTS)."))
# A tiny, fast environment for tests and the quick grid: 4-d observation, 1-d action, episodes end
# when the pole falls, so a weak policy scores little and learning is visible within CPU-minutes.
register_family(EnvFamily("pendulum", "InvertedPendulum-v5", 1000, 5.63, 1000.0, 1000, 2000,
                          reward_scale=1e-2, qualities=("random", "medium", "medium-replay", "expert"),
                          note="test/quick-grid family, not in the paper; ref_min measured (REF_MEASUREMENTS)."))



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


def known_families() -> list[str]:
    return sorted(_FAMILIES)


def get_family(name: str) -> EnvFamily:
    if name not in _FAMILIES:
        raise UnknownTaskError(name, list(_FAMILIES))
    return _FAMILIES[name]


def with_overrides(task: Task, **overrides: Any) -> Task:
    """A copy of ``task`` whose family fields are overridden (e.g. a shorter episode limit for tests)."""
    return dataclasses.replace(task, family=dataclasses.replace(task.family, **overrides))
