"""One end-to-end run per method on a tiny Adroit and a tiny AntMaze task, under the harness.

Each family gets a dataset in a real on-disk format (Adroit: a D4RL HDF5 file; AntMaze: a Minari
dataset with dict observations), a pretraining run of a tiny DT on it, then every method with tiny
budgets. The tasks are the paper's, with a 10-step episode limit so the runs take seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")
pytest.importorskip("minari")

from dtrl.data.d4rl_hdf5 import write_d4rl  # noqa: E402
from dtrl.data.trajectories import Trajectory, TrajectoryDataset  # noqa: E402
from dtrl.envs.make import make_env  # noqa: E402
from dtrl.config.experiment import load_config  # noqa: E402
from dtrl.workflow.finetune import finetune  # noqa: E402
from dtrl.util.logger import SUMMARY_KEYS  # noqa: E402
from dtrl.tasks import get_task, register_task, with_overrides  # noqa: E402

LIMIT = 10
TASKS = {"adroit": "pen-human", "antmaze": "antmaze-umaze"}
METHODS = {
    "none": {},
    "grpo": dict(group_size=4, reset_points=4, traj_len=5, eval_len=LIMIT, explore_episodes=2, minibatch_size=4,
                 epochs=1),
    "qgrpo": dict(explore_episodes=2, critic_warmup_updates=5, states_per_iteration=4, group_size=4,
                  critic_batch_size=16, critic_hidden=[16, 16], minibatch_size=8),
    "ppo_dt": dict(explore_episodes=2, minibatch_size=8, value_hidden=[16, 16]),
    "odt": dict(updates_per_iteration=2, batch_size=8, warmup_updates=5),
    "odt_td3": dict(updates_per_iteration=2, batch_size=8, warmup_updates=5, critic_warmup_updates=3),
    "iql": dict(hidden_dims=[16, 16], batch_size=16, offline_updates=20, offline_updates_per_iteration=10,
                env_steps_per_iteration=20, n_envs=2, offline_eval_episodes=1),
}
# AntMaze's IQL: raw sparse rewards shifted by -1 (config/antmaze.yaml, after implicit_q_learning).
FAMILY_PARAMS = {"antmaze": {"iql": dict(reward_normalization="none", reward_shift=-1.0)}}


def _short(name: str):
    task = get_task(name)
    short = dataclasses.replace(with_overrides(task, max_episode_steps=LIMIT), name=f"{name}-smoke")
    register_task(short)
    return short


def _adroit_data(task, path):
    env, rng = make_env(task), np.random.default_rng(0)
    trajs = []
    for ep in range(4):
        obs, _ = env.reset(seed=ep)
        o, a, r = [], [], []
        for _ in range(LIMIT):
            act = rng.uniform(-1, 1, env.action_space.shape)
            o.append(obs), a.append(act)
            obs, rew, *_ = env.step(act)
            r.append(rew)
        tout = np.zeros(LIMIT, bool)
        tout[-1] = True
        trajs.append(Trajectory(np.asarray(o, np.float32), np.asarray(a, np.float32), np.asarray(r, np.float32),
                                np.zeros(LIMIT, bool), tout))
    write_d4rl(path, TrajectoryDataset(trajs))
    return {"d4rl": str(path)}


def _antmaze_data(task, dataset_id):
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from dtrl.envs.robotics import _import_robotics

    _import_robotics()
    env = gym.make(task.env_id, disable_env_checker=True, **task.family.env_kwargs).unwrapped
    rng, buffers = np.random.default_rng(0), []
    for ep in range(4):
        obs = [env.reset(seed=ep)[0]]
        acts, rews = [], []
        for _ in range(LIMIT):
            a = rng.uniform(-1, 1, 8).astype(np.float32)
            o, r, *_ = env.step(a)
            obs.append(o), acts.append(a), rews.append(r)
        # A success now and then, so the returns differ (D4RL's data reaches the goal too).
        rews[-1] = float(ep % 2)
        trunc = np.zeros(LIMIT, bool)
        trunc[-1] = True
        buffers.append(EpisodeBuffer(id=ep, observations={k: np.stack([x[k] for x in obs]) for k in obs[0]},
                                     actions=np.stack(acts), rewards=np.asarray(rews), terminations=np.zeros(LIMIT, bool),
                                     truncations=trunc, infos={}))
    spec = dataclasses.replace(gym.spec(task.env_id), kwargs={**gym.spec(task.env_id).kwargs, **task.family.env_kwargs})
    minari.create_dataset_from_buffers(dataset_id, buffers, env=spec, eval_env=spec, algorithm_name="random",
                                       author="dtrl tests", author_email="tests@dtrl.invalid",
                                       description="smoke data", code_permalink="tests/test_robotics_smoke.py")
    return {"minari": dataset_id}


@pytest.fixture(scope="module")
def family_setup(tmp_path_factory):
    """Per family: the short task, an experiment config base with its dataset, a pretrained tiny DT."""
    from dtrl.data.sources import load_task_dataset
    from dtrl.harness.pretrain import pretrain

    root = tmp_path_factory.mktemp("robotics_smoke")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root / "minari")
    out = {}
    for fam, name in TASKS.items():
        task = _short(name)
        src = _adroit_data(task, root / f"{task.name}.hdf5") if fam == "adroit" else \
            _antmaze_data(task, "D4RL/antmaze/smoke-v1")
        base = {"device": "cpu", "grid": {"tasks": [task.name]}, "data": {"sources": {task.name: src}},
                "model": {"embed_dim": 16, "n_layers": 1, "n_heads": 2, "context_len": 4, "eval_context_len": 2},
                "pretrain": {"updates": 4, "batch_size": 8, "warmup_updates": 2, "eval_episodes": 1,
                             "log_every": 2, "checkpoint_every": 4},
                "eval": {"episodes": 2, "final_episodes": 2}}
        for head in ("gaussian", "deterministic"):  # ODT+TD3 finetunes the deterministic one (pretrain_det/)
            exp = load_config(None, {**base, "results": str(root / fam),
                                     "model": {**base["model"], "action_head": head}})
            pretrain(exp, task, 0, load_task_dataset(exp, task))
        out[fam] = (task, base, root / fam)
    yield out
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


@pytest.mark.parametrize("family", sorted(TASKS))
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_end_to_end(family_setup, family, method):
    task, base, results = family_setup[family]
    params = {"algo": method, **METHODS[method], **FAMILY_PARAMS.get(family, {}).get(method, {})}
    exp = load_config(None, {**base, "results": str(results), "grid": {"methods": [method], "tasks": [task.name]},
                             "online": {"env_steps": 40, "eval_every_env_steps": 20, "progress": False},
                             "methods": {method: params}})
    s = finetune(exp, method, task.name, 0)
    run = results / "runs" / method / task.name / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary) and summary["eval_episodes"] == 2
    rows = list(csv.DictReader(open(run / "progress.csv")))
    if method == "none":
        assert s["env_steps"] == 0
    elif method == "grpo" and family == "antmaze" and s["grad_updates"] == 0:
        # A policy that never reaches the goal scores 0 in every group member: no spread, no update.
        assert s["env_steps"] >= 40 and all(float(r["zero_spread_frac"]) == 1.0 for r in rows if r["zero_spread_frac"])
    else:
        assert s["env_steps"] >= 40 and s["grad_updates"] > 0
    assert np.isfinite(s["final_norm_return"])
    assert s["final_norm_return"] == pytest.approx(float(np.mean(task.normalize(np.array(s["final_returns"])))))
    header = list(rows[0])
    if family == "antmaze":  # goal-conditioned evaluation: success next to the normalised score
        assert s["final_success_rate"] == float(np.mean(np.array(s["final_returns"]) > 0))
    else:  # Adroit: D4RL's rule on the steps with info["success"]; 10-step episodes cannot pass pen's 20
        assert s["final_success_rate"] == 0.0
    assert "eval_success" in header
