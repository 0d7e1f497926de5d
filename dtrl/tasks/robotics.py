"""Adroit and AntMaze task definitions (gymnasium-robotics): env ids, D4RL reference scores and time limits,
evaluation maps, success rules. Data only: building their envs is dtrl.envs.robotics's job, so the task
registry (layer 1) never imports gymnasium.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

EXTRA = "robotics"  # pip install 'dtrl[robotics]'
ADROIT, ANTMAZE = "adroit", "antmaze"

# D4RL infos.py REF_MIN_SCORE lines 117-128 / REF_MAX_SCORE lines 207-218 ('<env>-human-v0', reused by v1).
_ADROIT = {  # name: (env id, D4RL time limit, ref min, ref max, raw eval RTG, raw online RTG, reward scale)
    "pen": ("AdroitHandPen-v1", 100, 96.262799, 3076.8331017826877, 12000.0, 12000.0, 1.0 / 100),
    "hammer": ("AdroitHandHammer-v1", 200, -274.856578, 12794.134825156867, 160000.0, 160000.0, 1.0 / 1000),
    "door": ("AdroitHandDoor-v1", 200, -56.512833, 2880.5693087298737, 4000.0, 4000.0, 0.001 / 100),
    "relocate": ("AdroitHandRelocate-v1", 200, -6.425911, 4233.877797728884, 5000.0, 5000.0, 1.0 / 100),
}
ADROIT_QUALITIES = ("human", "cloned", "expert")

_R, _G = "r", "g"
# d4rl/locomotion/maze_env.py lines 56-79 (evaluation maps: R = start cell, G = goal cell).
U_MAZE_TEST = [[1, 1, 1, 1, 1], [1, _R, 0, 0, 1], [1, 1, 1, 0, 1], [1, _G, 0, 0, 1], [1, 1, 1, 1, 1]]
BIG_MAZE_TEST = [[1, 1, 1, 1, 1, 1, 1, 1], [1, _R, 0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 0, 0, 0, 1],
                 [1, 1, 0, 0, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0, 0, 1], [1, 0, 1, 0, 0, 1, 0, 1],
                 [1, 0, 0, 0, 1, 0, _G, 1], [1, 1, 1, 1, 1, 1, 1, 1]]
HARDEST_MAZE_TEST = [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1, _R, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
                     [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
                     [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1], [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
                     [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0, 0, 1, 0, _G, 0, 1],
                     [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]
# maze: (gymnasium-robotics env id, D4RL time limit, evaluation map, dataset qualities)
_MAZES = {
    "umaze": ("AntMaze_UMaze-v4", 700, U_MAZE_TEST, ("umaze", "umaze-diverse")),
    "medium": ("AntMaze_Medium-v4", 1000, BIG_MAZE_TEST, ("medium-play", "medium-diverse")),
    "large": ("AntMaze_Large-v4", 1000, HARDEST_MAZE_TEST, ("large-play", "large-diverse")),
}
ANTMAZE_ENV_KWARGS = {"reward_type": "sparse", "continuing_task": False, "reset_target": False}
ANTMAZE_EVAL_RTG = ANTMAZE_ONLINE_RTG = 1.0
SUCCESS_RADIUS = 0.45  # gymnasium-robotics' goal radius (D4RL's was 0.5)


def register_all(register_family: Callable, register_task: Callable) -> None:
    """Register the 12 Adroit and 6 AntMaze tasks (called once by dtrl.tasks)."""
    from dtrl.tasks.registry import EnvFamily, Task

    for name, (env_id, steps, lo, hi, eval_rtg, online_rtg, scale) in _ADROIT.items():
        register_family(EnvFamily(
            name, env_id, steps, lo, hi, eval_rtg, online_rtg, reward_scale=scale, d4rl_prefix=name,
            minari_prefix=f"D4RL/{name}", qualities=ADROIT_QUALITIES, suite=ADROIT, d4rl_version="v1",
            minari_version="v2", generatable=False,
            note="D4RL v1 references; ODT+TD3 RTG targets in raw reward units (dtrl.envs.robotics)"
                 + ("; D4RL's reward restored (gymnasium-robotics 1.4.2 flips a sign; v1 data rescored on load)"
                    if name != "pen" else "")))
    for maze, (env_id, steps, maze_map, qualities) in _MAZES.items():
        fam = EnvFamily(f"antmaze-{maze}", env_id, steps, 0.0, 1.0, ANTMAZE_EVAL_RTG, ANTMAZE_ONLINE_RTG,
                        reward_scale=1.0, d4rl_prefix="antmaze", minari_prefix="D4RL/antmaze",
                        env_kwargs={"maze_map": maze_map, **ANTMAZE_ENV_KWARGS}, qualities=qualities,
                        suite=ANTMAZE, d4rl_version="v2", minari_version="v1", generatable=False,
                        note="sparse goal reward, ends at the goal; D4RL evaluation map; obs = D4RL's 29 + goal")
        for q in qualities:
            register_task(Task(name=f"antmaze-{q}", family=fam, quality=q))


def is_robotics(task: Any) -> bool:
    return task.family.suite in (ADROIT, ANTMAZE)


# D4RL's Adroit success rule (hand_manipulation_suite evaluate_success, Farama-Foundation/D4RL @89141a6:
# pen_v0.py:145, door_v0.py:127, hammer_v0.py:132, relocate_v0.py:123): an episode succeeds when the goal
# holds (goal_achieved; gymnasium-robotics reports it as info["success"]) on MORE than this many steps.
ADROIT_SUCCESS_STEPS = {"pen": 20, "door": 25, "hammer": 25, "relocate": 25}


def success_rate(task: Any, returns: np.ndarray, goal_steps: np.ndarray | None = None) -> float | None:
    """Fraction of successful episodes; None for tasks without a success rule.

    AntMaze: reward 1 only at the goal, where the episode ends, so a positive return is a success.
    Adroit: D4RL's rule, more than :data:`ADROIT_SUCCESS_STEPS` steps with ``info["success"]``
    (``goal_steps``, one count per episode); None when the evaluation did not count them.
    """
    if task.family.suite == ANTMAZE:
        return float(np.mean(np.asarray(returns, dtype=np.float64) > 0.0))
    if task.family.suite == ADROIT and goal_steps is not None:
        return float(np.mean(np.asarray(goal_steps) > ADROIT_SUCCESS_STEPS[task.family.name]))
    return None
