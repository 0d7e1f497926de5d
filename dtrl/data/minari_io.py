"""Read Minari datasets (e.g. ``mujoco/hopper/medium-v0``) into a :class:`TrajectoryDataset`.

Minari keeps each dataset under ``$MINARI_DATASETS_PATH/<id>/data`` (default ``~/.minari/datasets``)
in its own format, read here through the ``minari`` package (``pip install 'dtrl[minari]'``), which
knows both of its storage back ends (HDF5 and Arrow). A Minari episode of T steps stores T+1
observations (the last one is the observation after the final step), so step t becomes
(observation[t], action[t], reward[t], next_observation = observation[t+1]). ``terminations`` and
``truncations`` map to dtrl's ``terminals`` and ``timeouts``. Info arrays ``qpos``/``qvel`` of length
T+1, when a dataset records them, are the states before each step and keep their first T rows.

Dict observations (AntMaze: ``observation``, ``achieved_goal``, ``desired_goal``) are flattened by
:func:`dtrl.envs.robotics.flatten_goal_obs`, the same function the env uses, so data and env agree. For
Adroit and AntMaze tasks the env id the dataset records is checked by
:func:`dtrl.envs.robotics.check_dataset_env` (an error for another task or for what cannot be converted, a
warning for another version); what it converts (AntMaze v5's contact forces dropped, Adroit v1's
rewards rescored into D4RL's convention) is applied to every episode before anything is cast to
float32 and listed in ``metadata["conversions"]``, which `dtrl data` copies into the summary. For
other tasks a different env id is a warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dtrl.data.trajectories import DataError, Trajectory, TrajectoryDataset


def minari_root() -> Path:
    """The folder Minari reads datasets from: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def read_minari(dataset_id: str, download: bool = False, task: Any = None) -> TrajectoryDataset:
    """Read Minari dataset ``dataset_id``; fetch it first only when ``download`` is true.

    With ``task``, the observation/action sizes are checked against the task's environment.
    """
    root = minari_root()
    data_path = root / dataset_id / "data"
    src = f"minari:{dataset_id} ({root / dataset_id})"
    if not data_path.is_dir() and not download:
        raise DataError(f"{src}: the Minari dataset is not present under {root} (MINARI_DATASETS_PATH). Put it "
                        f"there, or set data.sources.<task>.minari_download: true to download it (needs internet)")
    try:
        import minari
    except ImportError:
        raise DataError(f"{src}: reading Minari datasets needs the minari package: pip install 'dtrl[minari]'") from None

    try:
        ds = minari.load_dataset(dataset_id, download=download)
    except ImportError as e:  # Minari imports its download back end (huggingface_hub, ...) only when it downloads
        raise DataError(f"{src}: Minari cannot download here: {e} (or put the dataset under {root} and set "
                        "minari_download: false)") from None
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        raise DataError(f"{src}: Minari could not load the dataset ({e})") from None

    env_id = None
    spec = getattr(ds, "spec", None)
    env_spec = getattr(spec, "env_spec", None)
    if env_spec is not None:
        env_id = env_spec.id
    from dtrl.envs.robotics import check_dataset_env, is_robotics

    conversions = []
    if task is not None and is_robotics(task):
        notes, conversions = check_dataset_env(task, env_id, src)
        for w in notes:
            warnings.warn(w, stacklevel=2)
    elif task is not None and env_id is not None and env_id != task.env_id:
        # The size check below catches other envs; a version mismatch (Hopper-v4 vs v5) has equal sizes
        # but different dynamics, which is worth knowing about, not necessarily an error.
        warnings.warn(f"{src}: collected on {env_id}, but task {task.name} runs {task.env_id}", stacklevel=2)
    trajs = [_episode_to_trajectory(ep, src, conversions) for ep in ds.iterate_episodes()]
    metadata = {"format": "minari", "dataset_id": dataset_id, "env_id": env_id,
                "minari_total_steps": int(ds.total_steps), "minari_total_episodes": int(ds.total_episodes)}
    if conversions:
        metadata["conversions"] = [c.note for c in conversions]
    dataset = TrajectoryDataset(trajs, metadata=metadata, source=src)
    obs_dim = act_dim = None
    if task is not None:
        from dtrl.envs.make import env_dims

        obs_dim, act_dim = env_dims(task)
    return dataset.validate(obs_dim, act_dim)


def _episode_to_trajectory(ep: Any, src: str, conversions: list = ()) -> Trajectory:
    where = f"{src}: episode {ep.id}"
    obs, act = ep.observations, ep.actions
    try:
        for c in conversions:
            if c.observations is not None:
                obs = c.observations(obs)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    if isinstance(obs, dict):
        from dtrl.envs.robotics import flatten_goal_obs

        try:
            obs = flatten_goal_obs(obs)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
    if not isinstance(obs, np.ndarray) or not isinstance(act, np.ndarray):
        raise DataError(f"{where}: observations and actions must be arrays (Box spaces) or AntMaze's goal dict; "
                        "other dict or tuple spaces are not supported")
    n = len(ep.rewards)
    if obs.shape[0] != n + 1:
        raise DataError(f"{where}: has {n} steps but {obs.shape[0]} observations; Minari stores steps + 1")
    if act.shape[0] != n:
        raise DataError(f"{where}: has {n} rewards but {act.shape[0]} actions")
    obs = obs.reshape(n + 1, -1)
    rewards = np.asarray(ep.rewards, dtype=np.float64).reshape(n)
    for c in conversions:  # on the recorded float64 values, so a rescored reward equals the env's exactly
        if c.rewards is not None:
            rewards = c.rewards(rewards, obs[1:])
    infos = ep.infos or {}

    def state(key: str) -> np.ndarray | None:
        arr = infos.get(key)
        if isinstance(arr, np.ndarray) and arr.shape[0] == n + 1:
            return arr[:n].reshape(n, -1).astype(np.float64)
        return None

    return Trajectory(
        observations=obs[:n].astype(np.float32),
        actions=act.reshape(n, -1).astype(np.float32),
        rewards=rewards.astype(np.float32),
        terminals=np.asarray(ep.terminations, dtype=bool).reshape(n),
        timeouts=np.asarray(ep.truncations, dtype=bool).reshape(n),
        qpos=state("qpos"),
        qvel=state("qvel"),
        next_observations=obs[1:].astype(np.float32),
    )
