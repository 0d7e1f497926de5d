"""Environment construction and exact simulator save/restore.

dtrl steps the *unwrapped* MuJoCo env and keeps the time limit itself (the rollout engine knows
each env's timestep anyway, for the DT's timestep embedding). That keeps terminals (the env ended
the episode) apart from timeouts (we cut it), and makes a restored env carry no hidden wrapper
state such as TimeLimit's step counter.

Exact resets use ``mujoco.mj_getState/mj_setState`` with ``mjSTATE_INTEGRATION`` (qpos, qvel, act,
warm-start accelerations, controls, time, ...) plus the sub-step trick described at
``_install_state_hooks``: replaying the same actions after a restore gives bit-identical
observations and rewards, which ``env.set_state(qpos, qvel)`` does not.

Envs whose resets also change what ``mj_getState`` does not hold (model fields, a goal) carry an
extra-state hook ``env._dtrl_extra_state = (get, set)`` (dtrl.envs.robotics): the snapshot appends
``get()`` and a restore calls ``set`` before the physics is recomputed.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import gymnasium as gym
import numpy as np

from dtrl.tasks import Task


def _quiet_mujoco_log() -> None:
    # MuJoCo writes MUJOCO_LOG.TXT into the working directory on warnings; keep the user's cwd clean.
    if "MUJOCO_LOG_DIR" not in os.environ:  # pragma: no branch
        os.environ.setdefault("MUJOCO_LOG_DIR", tempfile.gettempdir())


def make_env(task: Task, seed: int | None = None) -> Any:
    """The unwrapped Gymnasium env of ``task``; the caller enforces ``task.max_episode_steps``."""
    _quiet_mujoco_log()
    from dtrl.envs.robotics import is_robotics, make_robotics_env

    if is_robotics(task):
        env = make_robotics_env(task)
    else:
        env = gym.make(task.env_id, disable_env_checker=True, **task.family.env_kwargs).unwrapped
    sim = getattr(env, "sim_env", env)  # a goal env steps an inner MuJoCo env (dtrl.envs.robotics.FlatGoalEnv)
    if hasattr(sim, "_step_mujoco_simulation"):
        _install_state_hooks(sim)
    _normalize_actions(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def _normalize_actions(env: Any) -> None:
    """Make every env take actions in [-1, 1] (the DT's tanh range); D4RL's locomotion envs already do.

    InvertedPendulum's force range is [-3, 3], for example: its actions are rescaled here, so
    datasets and policies always live in [-1, 1].
    """
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    if np.all(low == -1.0) and np.all(high == 1.0):
        return
    step = env.step
    env.step = lambda a: step(low + (np.clip(np.asarray(a, dtype=np.float64), -1.0, 1.0) + 1.0) * 0.5 * (high - low))
    env.action_space = gym.spaces.Box(-1.0, 1.0, shape=low.shape, dtype=env.action_space.dtype)


def env_dims(task: Task) -> tuple[int, int]:
    """(obs_dim, act_dim) of the task's environment."""
    env = make_env(task)
    try:
        return int(env.observation_space.shape[0]), int(env.action_space.shape[0])
    finally:
        env.close()


def _mujoco_handles(env: Any):
    import mujoco

    model = getattr(env, "model", None)
    data = getattr(env, "data", None)
    if model is None or data is None:
        raise TypeError(f"{type(env).__name__} is not a MuJoCo env; it cannot be saved and restored exactly")
    return mujoco, model, data


# A saved state is [mode, mjSTATE_INTEGRATION...]. Rewards such as Ant's forward velocity read body
# positions that MuJoCo computed at the start of the *last physics sub-step*, i.e. derived data one
# sub-step stale, which the integration state cannot reproduce. So after every env step we keep the
# state from before the last sub-step (mode 1) and restore by re-running that one sub-step, which
# recreates every derived quantity exactly. Right after a reset there is no sub-step; the reset ran
# mj_forward, and restoring does the same (mode 0).
_MODE_FORWARD, _MODE_SUBSTEP = 0.0, 1.0


def _install_state_hooks(env: Any) -> None:
    mujoco, model, data = _mujoco_handles(env)
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    env._dtrl_pre_state = None

    def step_sim(ctrl, n_frames):
        data.ctrl[:] = ctrl
        if n_frames > 1:
            mujoco.mj_step(model, data, nstep=n_frames - 1)
        pre = np.empty(mujoco.mj_stateSize(model, spec), dtype=np.float64)
        mujoco.mj_getState(model, data, pre, spec)
        env._dtrl_pre_state = pre
        mujoco.mj_step(model, data)
        mujoco.mj_rnePostConstraint(model, data)

    original_reset = env.reset

    def reset(*args, **kwargs):
        out = original_reset(*args, **kwargs)
        env._dtrl_pre_state = None
        return out

    env._step_mujoco_simulation = step_sim
    env.reset = reset


def get_sim_state(env: Any) -> np.ndarray:
    """A float64 snapshot of a MuJoCo env made by :func:`make_env`, restorable bit-exactly."""
    mujoco, model, data = _mujoco_handles(env)
    extra = _extra_state(env)
    pre = getattr(env, "_dtrl_pre_state", None)
    if pre is not None:
        return np.concatenate([[_MODE_SUBSTEP], pre, extra])
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(1 + mujoco.mj_stateSize(model, spec), dtype=np.float64)
    state[0] = _MODE_FORWARD
    mujoco.mj_getState(model, data, state[1:], spec)
    return np.concatenate([state, extra])


def _extra_state(env: Any) -> np.ndarray:
    hook = getattr(env, "_dtrl_extra_state", None)
    return np.zeros(0) if hook is None else np.asarray(hook[0](), dtype=np.float64).ravel()


def set_sim_state(env: Any, state: np.ndarray) -> None:
    """Restore a snapshot from :func:`get_sim_state`; later steps replay bit-identically."""
    mujoco, model, data = _mujoco_handles(env)
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    size = sim_state_size(env)
    state = np.ascontiguousarray(state, dtype=np.float64)
    if state.shape != (size,) or state[0] not in (_MODE_FORWARD, _MODE_SUBSTEP):
        raise ValueError(f"simulator state has shape {state.shape}, expected ({size},) as saved by get_sim_state "
                         "for this environment")
    n_mj = 1 + int(mujoco.mj_stateSize(model, spec))
    hook = getattr(env, "_dtrl_extra_state", None)
    if hook is not None:
        hook[1](state[n_mj:])
    state = state[:n_mj]
    mujoco.mj_setState(model, data, state[1:], spec)
    if state[0] == _MODE_SUBSTEP:
        mujoco.mj_step(model, data)
        mujoco.mj_rnePostConstraint(model, data)
        if hasattr(env, "_dtrl_pre_state"):
            env._dtrl_pre_state = state[1:].copy()
    else:
        mujoco.mj_forward(model, data)
        if hasattr(env, "_dtrl_pre_state"):
            env._dtrl_pre_state = None


def sim_state_size(env: Any) -> int:
    mujoco, model, _ = _mujoco_handles(env)
    return 1 + int(mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_INTEGRATION)) + _extra_state(env).size


def observe(env: Any) -> np.ndarray:
    """The observation of the env's current state (after :func:`set_sim_state`)."""
    return env._get_obs()
