"""Adroit and AntMaze: the paper's other two benchmark families, on gymnasium-robotics.

Tasks (``dtrl tasks``): ``{pen,hammer,door,relocate}-{human,cloned,expert}`` (Adroit, D4RL v1 /
Minari ``D4RL/<env>/<quality>-v2``) and ``antmaze-{umaze,umaze-diverse,medium-play,medium-diverse,
large-play,large-diverse}`` (D4RL v2 / Minari ``D4RL/antmaze/<quality>-v1``). The envs come from
gymnasium-robotics (``pip install 'dtrl[robotics]'``), imported only when such an env is built.

Conventions, each from the code behind the published numbers:

- Reference scores: D4RL ``d4rl/infos.py`` -- Adroit REF_MIN_SCORE lines 117-128, REF_MAX_SCORE lines
  207-218 (the v1 datasets reuse the human-v0 values, lines 305-311); AntMaze 0 and 1 (lines 155-160,
  245-250): the normalised score is 100 x the fraction of episodes that reach the goal.
- Time limits: D4RL ``d4rl/hand_manipulation_suite/__init__.py`` (pen 100, line 174; door, hammer,
  relocate 200, lines 57, 112, 230) and ``d4rl/locomotion/__init__.py`` (umaze 700, line 327; medium and
  large 1000, lines 361-412). gymnasium-robotics registers pen at 200; dtrl enforces D4RL's 100.
- Adroit rewards: gymnasium-robotics 1.4.2's dense door/hammer/relocate rewards have the sign of the
  hand-to-object distance term flipped (+0.1 |palm - handle/object| instead of D4RL's -0.1, D4RL
  ``hand_manipulation_suite/door_v0.py:52``, ``hammer_v0.py:57``, ``relocate_v0.py:48``; it warns
  about this change since 1.2.1). dtrl subtracts 0.2 x that distance after each step, which gives
  D4RL's reward, so D4RL's reference scores and datasets apply. Pen's reward is unchanged. The
  distance is read from the observation after the step (:func:`hand_distance`), so a dataset
  recorded on the v1 env (Minari's) is rescored by the same function, exactly (:func:`check_dataset_env`).
- Adroit RTG targets: ODT+TD3's commands (``RL_as_Vitamin_for_Online_Decision_Transformers`` readme.md
  lines 84-87: pen 120, hammer 160, door 40, relocate 50), which are in units of ODT+TD3's divided
  rewards (``main.py`` line 35 and 249-251: hammer / 1000, pen, door, relocate / 100) with its DT
  reward scale (``main.py`` line 142: 1.0 for pen, relocate, hammer; 0.001 for door). dtrl keeps env
  rewards raw, so the targets are stored in raw units (x 100 or x 1000) and ``reward_scale`` is
  ODT+TD3's scale divided by the same factor: the DT sees exactly ODT+TD3's RTG tokens.
- AntMaze reward: sparse (1 within 0.45 of the goal, else 0), and the episode ends when the goal is
  reached (``continuing_task=False``), so a return is 1 (success) or 0 like D4RL's evaluation
  (ODT+TD3 counts a success as an episode shorter than the limit, ``main.py`` line 478-479). The -1
  per-step shift of IQL (``implicit_q_learning`` ``train_finetune.py`` lines 137-141, after CQL) and
  ODT+TD3 (``main.py`` lines 222 and 662-663, readme.md line 97) is a training convention of those
  methods, set in config/antmaze.yaml (IQL: ``reward_shift: -1``); ODT's own DT uses reward scale 1
  on AntMaze (``online-dt`` ``main.py`` line 89) with raw sparse rewards. AntMaze RTG targets: 1 at
  evaluation (reach the goal once) and 1 online; raw-reward units, so ODT+TD3's -100/-200/-500
  targets (readme.md lines 93-95, shifted rewards) do not apply unshifted. ODT+TD3's other AntMaze
  conventions (trajectory splitting and the dropped 1-step trajectories, K = 1 / 5, the TD3 term during
  pretraining) and which of them dtrl matches: docs/baselines.md, "ODT and ODT+TD3 on AntMaze".
- AntMaze mazes: D4RL's evaluation maps ``U_MAZE_TEST``, ``BIG_MAZE_TEST``, ``HARDEST_MAZE_TEST``
  (``d4rl/locomotion/maze_env.py`` lines 56-79; fixed start cell R and goal cell G), passed to
  gymnasium-robotics' AntMaze v4 (Ant-v4 body without contact forces, as D4RL's ant), which adds
  uniform noise of +-1 m (0.25 x maze scaling 4) to the goal and the start at every reset.

Observations: Adroit's are flat. AntMaze's dict (``observation`` 27, ``achieved_goal`` 2 = torso x, y,
``desired_goal`` 2) becomes ``[achieved_goal, observation, desired_goal]`` (31-d): the first 29 are
exactly D4RL's AntMaze observation (``d4rl/locomotion/ant.py`` lines 93-96: qpos[:15], qvel[:14]), the
last 2 the goal, which D4RL files hold in ``infos/goal`` and which this env re-samples each reset (the
baselines fed only the 29-d state; the goal is added so the policy is told where the noisy goal is).

Exact resets: ``mj_getState`` holds neither the model fields Adroit randomises at reset (door,
hammer board, relocate object/target positions in ``model.body_pos`` / ``model.site_pos``, the pen
target orientation in ``model.body_quat``) nor AntMaze's goal (a Python attribute), so each env here
gets an extra-state hook (``_dtrl_extra_state``) that :func:`dtrl.envs.make.get_sim_state` appends to the
snapshot and :func:`dtrl.envs.make.set_sim_state` restores first. Every task here is resettable.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dtrl.tasks.robotics import (  # noqa: F401  (the definitions, re-used here and by callers)
    ADROIT, ANTMAZE, ANTMAZE_ENV_KWARGS, EXTRA, SUCCESS_RADIUS, is_robotics, success_rate,
)


def _import_robotics():
    try:
        with warnings.catch_warnings():
            # The v1.2.1 dense-reward change it warns about is undone in _restore_d4rl_reward.
            warnings.simplefilter("ignore")
            import gymnasium_robotics
    except ImportError:
        raise ImportError("Adroit and AntMaze tasks need gymnasium-robotics: pip install 'dtrl[robotics]'") from None
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym.register_envs(gymnasium_robotics)


def make_robotics_env(task: Any) -> Any:
    """The unwrapped env of an Adroit or AntMaze task, with flat observations and an extra-state hook."""
    import gymnasium as gym

    _import_robotics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AntMaze v4 / Ant-v4 deprecation notices
        env = gym.make(task.env_id, disable_env_checker=True, **task.family.env_kwargs).unwrapped
    if task.family.suite == ANTMAZE:
        _remove_maze_xml(env)
        return FlatGoalEnv(env)
    _restore_d4rl_reward(env, task.family.name)
    env._dtrl_extra_state = _model_field_hook(env, attrs=("pen_length", "tar_length"))
    return env


# -- Adroit -----------------------------------------------------------------------------------------

HAND_TERM_TASKS = ("door", "hammer", "relocate")  # whose dense reward gymnasium-robotics flips a term of


def hand_distance(name: str, obs: np.ndarray) -> np.ndarray:
    """|palm - handle| (door) or |palm - object| (hammer, relocate) from observations after a step, (...,).

    Where gymnasium-robotics 1.4.2's ``_get_obs`` puts them: door palm - handle at [35:38]
    (adroit_door.py:332-341), relocate palm - object at [30:33] (adroit_relocate.py:328-330), hammer
    palm at [33:36] and hammer at [36:39] (adroit_hammer.py:344-354) -- the same site and body
    positions its reward's distance is taken between. The norm is written out, not np.linalg.norm,
    so one step and a (T, d) batch give bit-identical distances (the env's and a dataset's).
    """
    o = np.asarray(obs, dtype=np.float64)
    if name == "door":
        v = o[..., 35:38]
    elif name == "relocate":
        v = o[..., 30:33]
    elif name == "hammer":
        v = o[..., 33:36] - o[..., 36:39]
    else:
        raise ValueError(f"{name} has no hand-distance reward term; one of {', '.join(HAND_TERM_TASKS)}")
    return np.sqrt(v[..., 0] * v[..., 0] + v[..., 1] * v[..., 1] + v[..., 2] * v[..., 2])


def d4rl_reward(name: str, reward: Any, next_obs: np.ndarray) -> np.ndarray:
    """gymnasium-robotics' door/hammer/relocate reward (one step or a batch) in D4RL's convention.

    +0.1 x distance becomes D4RL's -0.1 x distance: subtract 0.2 x the distance after the step.
    """
    return np.asarray(reward, dtype=np.float64) - 0.2 * hand_distance(name, next_obs)


def _restore_d4rl_reward(env: Any, name: str) -> None:
    """Undo gymnasium-robotics' sign flip of the 0.1 x hand-distance term (door, hammer, relocate)."""
    if name not in HAND_TERM_TASKS:
        return
    step = env.step

    def d4rl_step(a):
        obs, reward, terminated, truncated, info = step(a)
        return obs, float(d4rl_reward(name, reward, obs)), terminated, truncated, info

    env.step = d4rl_step


_MODEL_FIELDS = ("body_pos", "body_quat", "site_pos")  # every model field an Adroit reset_model writes


def _model_field_hook(env: Any, attrs: tuple[str, ...] = ()):
    """(get, set) of the model fields resets randomise plus Python float attributes of ``env``."""
    attrs = tuple(a for a in attrs if hasattr(env, a))

    def get() -> np.ndarray:
        m = env.model
        return np.concatenate([getattr(m, f).ravel() for f in _MODEL_FIELDS]
                              + [np.array([float(getattr(env, a)) for a in attrs])])

    def put(x: np.ndarray) -> None:
        m, i = env.model, 0
        for f in _MODEL_FIELDS:
            arr = getattr(m, f)
            arr[...] = x[i:i + arr.size].reshape(arr.shape)
            i += arr.size
        for a in attrs:
            setattr(env, a, float(x[i]))
            i += 1

    return get, put


# -- AntMaze ----------------------------------------------------------------------------------------

def _remove_maze_xml(env: Any) -> None:
    """Delete the maze model gymnasium-robotics wrote for this env, which it never deletes.

    Each AntMaze env writes ``<system temp dir>/ant_maze<time>.xml`` (gymnasium-robotics 1.4.2
    ``envs/maze/maze_v4.py:238-244``: the file is placed next to a TemporaryDirectory, not in it) and
    loads its MuJoCo model from it while it is built; nothing reads the file afterwards, so it goes
    now rather than one per env (thousands per grid) staying behind.
    """
    path = getattr(env, "tmp_xml_file_path", None)
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def flatten_goal_obs(obs: dict[str, np.ndarray]) -> np.ndarray:
    """AntMaze's dict observation (one step or a (T, .) batch) as [achieved_goal, observation, desired_goal]."""
    missing = [k for k in ("achieved_goal", "observation", "desired_goal") if k not in obs]
    if missing:
        raise ValueError(f"a goal observation needs keys achieved_goal, observation, desired_goal; missing "
                         f"{', '.join(missing)} (found {', '.join(obs)})")
    return np.concatenate([np.asarray(obs["achieved_goal"]), np.asarray(obs["observation"]),
                           np.asarray(obs["desired_goal"])], axis=-1)


class FlatGoalEnv:
    """An AntMaze env with flat observations (:func:`flatten_goal_obs`), stepped like a MuJoCo env.

    The physics lives in its inner Ant env (``sim_env``), which is what dtrl.envs.make hooks for exact
    sub-step replay; the goal is the extra state.
    """

    def __init__(self, env: Any):
        import gymnasium as gym

        self.goal_env, self.sim_env = env, env.ant_env
        dims = sum(int(env.observation_space[k].shape[0]) for k in ("achieved_goal", "observation", "desired_goal"))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(dims,), dtype=np.float64)
        self.action_space = env.action_space
        self._dtrl_extra_state = (self._get_goal, self._set_goal)

    @property
    def model(self):
        return self.sim_env.model

    @property
    def data(self):
        return self.sim_env.data

    @property
    def goal(self) -> np.ndarray:
        return self.goal_env.goal

    # dtrl.envs.make keeps its sub-step snapshot on the env it hooked (the inner Ant env).
    @property
    def _dtrl_pre_state(self):
        return getattr(self.sim_env, "_dtrl_pre_state", None)

    @_dtrl_pre_state.setter
    def _dtrl_pre_state(self, value) -> None:
        self.sim_env._dtrl_pre_state = value

    def _get_goal(self) -> np.ndarray:
        goal = getattr(self.goal_env, "goal", None)  # none before the first reset; the size stays 2
        return np.zeros(2) if goal is None else np.asarray(goal, dtype=np.float64).copy()

    def _set_goal(self, x: np.ndarray) -> None:
        self.goal_env.goal = np.array(x, dtype=np.float64)
        self.goal_env.update_target_site_pos()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.goal_env.reset(seed=seed, options=options)
        return flatten_goal_obs(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.goal_env.step(action)
        return flatten_goal_obs(obs), float(reward), bool(terminated), bool(truncated), info

    def _get_obs(self) -> np.ndarray:
        return flatten_goal_obs(self.goal_env._get_obs(self.sim_env._get_obs()))

    def close(self) -> None:
        self.goal_env.close()


# -- datasets ---------------------------------------------------------------------------------------

def dataset_hint(task: Any) -> str:
    """Where to get a dataset the generator cannot make."""
    return (f"{task.name}: D4RL's {task.family.suite} datasets (human demonstrations, cloned and expert policies, "
            f"a goal-reaching controller) cannot be regenerated by dtrl's SAC generator. Give a copy: "
            f"data.sources.{task.name}.minari: {task.minari_id} (fetch it with `minari download {task.minari_id}` "
            f"on a machine with internet and copy it under MINARI_DATASETS_PATH, or set minari_download: true "
            f"where there is internet), or data.sources.{task.name}.d4rl: /path/to/{task.d4rl_name}.hdf5")


def _base(env_id: str) -> tuple[str, str]:
    name, _, version = env_id.rpartition("-")
    return name, version


@dataclass(frozen=True)
class DataConversion:
    """A change that makes a dataset recorded on another env version fit the task's env.

    ``observations`` maps a reader's raw observations of one episode (T+1 rows, a dict for AntMaze) to
    the same form; ``rewards`` maps (rewards (T,), flat next observations (T, d)) to rewards. ``note``
    is the line the dataset summary records.
    """

    note: str
    observations: Callable[[Any], Any] | None = None
    rewards: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None


ANT_STATE_DIM = 27  # D4RL's ant state without x, y (qpos[2:15], qvel[:14]): AntMaze v4's "observation"
ANT_CONTACT_DIMS = 78  # Ant-v5's cfrc_ext of its 13 bodies x 6, appended to it in AntMaze v5's


def _drop_contact_forces(obs: Any) -> Any:
    if not isinstance(obs, dict) or "observation" not in obs:
        return obs  # flatten_goal_obs names what is missing
    o = np.asarray(obs["observation"])
    if o.shape[-1] == ANT_STATE_DIM:  # recorded without contact forces (include_cfrc_ext_in_observation=False)
        return obs
    if o.shape[-1] != ANT_STATE_DIM + ANT_CONTACT_DIMS:
        raise ValueError(f"an AntMaze v5 'observation' is the {ANT_STATE_DIM}-d ant state, then "
                         f"{ANT_CONTACT_DIMS} contact forces; this one has {o.shape[-1]} dims and cannot be "
                         f"converted")
    return {**obs, "observation": o[..., :ANT_STATE_DIM]}


def check_dataset_env(task: Any, env_id: str | None, src: str) -> tuple[list[str], list[DataConversion]]:
    """Check a dataset's recorded env id against the task's: (warnings, conversions), or raise DataError.

    Rules (docs/baselines.md, "Datasets and environments"):
    - Adroit: the env name must match (``AdroitHandPenSparse`` has other rewards: error); another
      version is a warning. Door, hammer and relocate also need to know the sign of the reward's
      hand-distance term: v1 (gymnasium-robotics >= 1.2.1, what Minari's datasets were recorded on)
      has it flipped, and its rewards are rescored into D4RL's convention, the env's
      (:func:`d4rl_reward`); v0 (D4RL's own env) has D4RL's; no env id or another version: error.
    - AntMaze: the maze must match (UMaze / Medium / Large; error otherwise). The ``_Diverse_G`` /
      ``_Diverse_GR`` variants Minari's datasets were collected on sample goals and starts over the
      whole maze; that is how the data was made, not a different task, so it is accepted. v5's ant
      observation is v4's 27 dims followed by 78 contact forces (Ant-v5's cfrc_ext): they are dropped
      (a conversion); any other size is an error. Another version than the task's is a warning.
    """
    from dtrl.data.trajectories import DataError

    conversions: list[DataConversion] = []
    hand_term = task.family.suite == ADROIT and task.family.name in HAND_TERM_TASKS
    if env_id is None:
        if hand_term:
            raise DataError(f"{src}: the dataset records no env id, so the sign of its 0.1 x hand-distance reward "
                            f"term cannot be told (D4RL's -, or + as gymnasium-robotics >= 1.2.1's "
                            f"{task.env_id}); dtrl will not mix the two. Use a dataset that records its env")
        return [f"{src}: the dataset records no env id; it is assumed to be for {task.env_id}"], conversions
    name, version = _base(env_id)
    want, want_v = _base(task.env_id)
    if task.family.suite == ANTMAZE:
        maze = name.replace("_Diverse_GR", "").replace("_Diverse_G", "")
        if maze != want:
            raise DataError(f"{src}: collected on {env_id}, another maze than task {task.name} ({task.env_id})")
        if version == "v5":
            conversions.append(DataConversion(
                f"observations: the {ANT_CONTACT_DIMS} contact forces of {env_id}'s ant observation (dims "
                f"{ANT_STATE_DIM}-{ANT_STATE_DIM + ANT_CONTACT_DIMS - 1}) dropped; the {ANT_STATE_DIM} before them "
                f"are {task.env_id}'s", observations=_drop_contact_forces))
    elif name != want:
        raise DataError(f"{src}: collected on {env_id}, but task {task.name} runs {task.env_id} (other reward "
                        "or task); use the matching dataset")
    elif hand_term and version == "v1":
        conversions.append(DataConversion(
            f"rewards: rescored into D4RL's convention, the env's: {env_id} (gymnasium-robotics >= 1.2.1) adds "
            f"+0.1 x the hand distance where D4RL subtracts it; 0.2 x the distance in each next observation "
            f"subtracted", rewards=lambda r, next_obs: d4rl_reward(task.family.name, r, next_obs)))
    elif hand_term and version != "v0":
        # gymnasium-robotics' notice (farama-notifications 0.0.6) announces a v2 with v1.2.0's reward for
        # gymnasium-robotics >= 1.4.3, which is not released (1.4.2 is the newest): nothing to check it against.
        raise DataError(f"{src}: collected on {env_id}, whose reward convention dtrl does not know (v0: D4RL's, "
                        f"kept; v1: gymnasium-robotics' flipped hand-distance term, rescored); dtrl will not mix "
                        f"the two. Use a dataset recorded on {want}-v1")
    notes = []
    if version != want_v:
        notes.append(f"{src}: collected on {env_id}, task {task.name} runs {task.env_id} (same task, other version)")
    return notes, conversions
