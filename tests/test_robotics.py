"""Adroit and AntMaze: registry, D4RL scores and rewards, exact resets, and the dataset readers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")

from dtrl.data.d4rl_hdf5 import read_d4rl  # noqa: E402
from dtrl.data.trajectories import DataError  # noqa: E402
from dtrl.envs.make import get_sim_state, make_env, observe, set_sim_state  # noqa: E402
from dtrl.envs.robotics import flatten_goal_obs, success_rate  # noqa: E402
from dtrl.tasks import get_task, known_tasks  # noqa: E402

ADROIT_TASKS = [f"{e}-{q}" for e in ("pen", "hammer", "door", "relocate") for q in ("human", "cloned", "expert")]
ANTMAZE_TASKS = ["antmaze-umaze", "antmaze-umaze-diverse", "antmaze-medium-play", "antmaze-medium-diverse",
                 "antmaze-large-play", "antmaze-large-diverse"]


def test_registry_has_every_paper_task_with_d4rl_names_and_limits():
    assert set(ADROIT_TASKS + ANTMAZE_TASKS) <= set(known_tasks())
    pen, door = get_task("pen-human"), get_task("door-cloned")
    assert (pen.env_id, pen.max_episode_steps, door.max_episode_steps) == ("AdroitHandPen-v1", 100, 200)
    assert pen.d4rl_name == "pen-human-v1" and pen.minari_id == "D4RL/pen/human-v2"
    um, large = get_task("antmaze-umaze-diverse"), get_task("antmaze-large-play")
    assert (um.env_id, um.max_episode_steps, large.env_id, large.max_episode_steps) == \
        ("AntMaze_UMaze-v4", 700, "AntMaze_Large-v4", 1000)
    assert um.d4rl_name == "antmaze-umaze-diverse-v2" and um.minari_id == "D4RL/antmaze/umaze-diverse-v1"
    assert all(get_task(t).resettable for t in ADROIT_TASKS + ANTMAZE_TASKS)
    assert {get_task(t).family.suite for t in ADROIT_TASKS} == {"adroit"}
    assert {get_task(t).family.suite for t in ANTMAZE_TASKS} == {"antmaze"}


def test_normalised_scores_are_d4rls_formula_with_d4rls_constants():
    # d4rl/infos.py: pen-human-v0 min 96.262799, max 3076.8331017826877; antmaze 0 and 1.
    pen = get_task("pen-human")
    for r in (0.0, 1500.0, 3076.8331017826877):
        assert pen.normalize(r) == 100 * (r - 96.262799) / (3076.8331017826877 - 96.262799)
    maze = get_task("antmaze-medium-diverse")
    np.testing.assert_array_equal(maze.normalize(np.array([0.0, 1.0, 1.0, 0.0])), [0.0, 100.0, 100.0, 0.0])
    assert success_rate(maze, np.array([0.0, 1.0, 1.0, 0.0])) == 0.5
    assert success_rate(pen, np.array([1.0])) is None  # Adroit: no goal steps counted, no rate


def test_adroit_success_is_d4rls_rule_on_goal_steps():
    """D4RL evaluate_success: goal achieved on more than 20 (pen) / 25 (door, hammer, relocate) steps."""
    pen, door = get_task("pen-expert"), get_task("door-human")
    assert success_rate(pen, np.zeros(4), np.array([0, 20, 21, 100])) == 0.5
    assert success_rate(door, np.zeros(3), np.array([25, 26, 200])) == pytest.approx(2 / 3)
    assert success_rate(get_task("relocate-cloned"), np.zeros(1), np.array([26])) == 1.0
    assert success_rate(get_task("hopper-medium"), np.zeros(1), np.array([99])) is None


def test_adroit_goal_steps_come_from_info_success_through_envset_and_evaluate_policy():
    """The per-step info["success"] reaches EnvSet.step (DT rollouts) and evaluate_policy (IQL)."""
    from dtrl.envs.vec import evaluate_policy
    from dtrl.envs.workers import EnvSet

    task = get_task("door-human")
    es = EnvSet(task, [None], workers=0)
    es.reset([0], [3])
    env = es.envs[0]
    act = np.zeros((1, env.action_space.shape[0]))
    assert not es.step([0], act).goal[0]  # door shut at reset
    env.data.qpos[env.door_hinge_addrs] = 1.5  # past door_v0's 1.35: goal achieved
    assert es.step([0], act).goal[0]

    ref = make_env(task, seed=0)  # evaluate_policy's count equals the info flags of the same episode
    ref.reset(seed=5)
    want = sum(bool(ref.step(np.zeros(act.shape[1]))[4]["success"]) for _ in range(task.max_episode_steps))
    _, lengths, goal = evaluate_policy(lambda o: np.zeros((len(o), act.shape[1])), task, 1, seed=5)
    assert lengths[0] == task.max_episode_steps and goal[0] == want


def test_door_reward_is_d4rls():
    """D4RL door_v0.py:52-65, recomputed from the simulator after each step."""
    env = make_env(get_task("door-human"), seed=0)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        _, r, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        d = env.data
        handle, palm = d.site_xpos[env.handle_site_id], d.site_xpos[env.grasp_site_id]
        door = d.qpos[env.door_hinge_addrs]
        want = -0.1 * np.linalg.norm(palm - handle) - 0.1 * (door - 1.57) ** 2 - 1e-5 * np.sum(d.qvel ** 2)
        want += 2 * (door > 0.2) + 8 * (door > 1.0) + 10 * (door > 1.35)
        assert r == pytest.approx(float(want), abs=1e-12)


@pytest.mark.parametrize("name", ["pen-human", "relocate-expert", "antmaze-umaze"])
@pytest.mark.parametrize("after", [0, 6])
def test_exact_reset_replays_bit_identically(name, after):
    """The restored env was reset with another seed (other target, object, goal): the snapshot carries them."""
    task = get_task(name)
    env = make_env(task, seed=0)
    acts = np.random.default_rng(1).uniform(-1, 1, (after + 12, env.action_space.shape[0]))
    obs, _ = env.reset(seed=3)
    for a in acts[:after]:
        obs, *_ = env.step(a)
    snap = get_sim_state(env)
    ref = [env.step(a)[:3] for a in acts[after:]]
    other = make_env(task, seed=9)
    assert not np.array_equal(observe(other), observe(env))
    other.step(acts[0])
    set_sim_state(other, snap)
    assert np.array_equal(observe(other), obs)
    for (o1, r1, t1), (o2, r2, t2) in zip(ref, [other.step(a)[:3] for a in acts[after:]]):
        assert np.array_equal(o1, o2) and r1 == r2 and t1 == t2


def test_antmaze_observation_is_d4rl_state_plus_goal_and_success_ends_the_episode():
    task = get_task("antmaze-umaze")
    env = make_env(task, seed=0)
    obs, _ = env.reset(seed=4)
    d = env.data
    assert obs.shape == (31,)
    np.testing.assert_array_equal(obs[:29], np.concatenate([d.qpos[:15], d.qvel[:14]]))  # D4RL's ant.py obs
    np.testing.assert_array_equal(obs[29:], env.goal)
    # Put the torso on the goal: reward 1 and the episode ends (D4RL evaluation: return 1 = success).
    qpos, qvel = d.qpos.copy(), d.qvel.copy()
    qpos[:2] = env.goal
    env.sim_env.set_state(qpos, qvel)
    _, r, term, *_ = env.step(np.zeros(8))
    assert r == 1.0 and term


def test_antmaze_envs_leave_no_maze_xml_in_the_temp_dir(tmp_path, monkeypatch):
    """gymnasium-robotics writes <temp dir>/ant_maze<time>.xml per env; dtrl removes it once the model is loaded."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # a private temp dir: other processes' files stay out
    for name in ("antmaze-umaze", "antmaze-large-play"):
        env = make_env(get_task(name), seed=0)
        assert Path(env.goal_env.tmp_xml_file_path).parent == tmp_path  # where it was written...
        env.step(np.zeros(8))
        env.close()
    assert list(tmp_path.iterdir()) == []  # ...and nothing stays


# -- readers -------------------------------------------------------------------------------------------------

def _rollout_raw(env_id: str, kwargs: dict, T: int, seed: int):
    """(T+1 observations, T actions, rewards) of a raw gymnasium-robotics env under random actions."""
    import gymnasium as gym

    from dtrl.envs.robotics import _import_robotics

    _import_robotics()
    env = gym.make(env_id, disable_env_checker=True, **kwargs).unwrapped
    o, _ = env.reset(seed=seed)
    obs, acts, rews = [o], [], []
    rng = np.random.default_rng(seed)
    for _ in range(T):
        a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        o, r, *_ = env.step(a)
        obs.append(o), acts.append(a), rews.append(r)
    if isinstance(obs[0], dict):
        obs = {k: np.stack([x[k] for x in obs]) for k in obs[0]}
    else:
        obs = np.stack(obs)
    return obs, np.stack(acts), np.asarray(rews, dtype=np.float64)


def _write_minari(dataset_id: str, env_id: str, kwargs: dict, lengths=(5, 7)):
    minari = pytest.importorskip("minari")
    import gymnasium as gym
    from minari.data_collector.episode_buffer import EpisodeBuffer

    buffers, eps = [], []
    for i, T in enumerate(lengths):
        obs, act, rew = _rollout_raw(env_id, kwargs, T, seed=i)
        term, trunc = np.zeros(T, bool), np.zeros(T, bool)
        trunc[-1] = True
        buffers.append(EpisodeBuffer(id=i, observations=obs, actions=act, rewards=rew, terminations=term,
                                     truncations=trunc, infos={}))
        eps.append((obs, act, rew))
    spec = dataclasses.replace(gym.spec(env_id), kwargs={**gym.spec(env_id).kwargs, **kwargs})  # not the registry's
    minari.create_dataset_from_buffers(dataset_id, buffers, env=spec, algorithm_name="test", author="dtrl tests",
                                       author_email="tests@dtrl.invalid", description="reader test data",
                                       code_permalink="tests/test_robotics.py")
    return eps


def test_minari_adroit_dataset_reads_flat(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    from dtrl.data.minari_io import read_minari

    eps = _write_minari("D4RL/pen/test-v2", "AdroitHandPen-v1", {})
    assert (tmp_path / "D4RL" / "pen" / "test-v2" / "data").is_dir()
    ds = read_minari("D4RL/pen/test-v2", task=get_task("pen-human"))
    assert [len(t) for t in ds] == [5, 7] and ds.obs_dim == 45 and ds.act_dim == 24
    for (obs, act, rew), t in zip(eps, ds):
        np.testing.assert_array_equal(t.observations, obs[:-1].astype(np.float32))
        np.testing.assert_array_equal(t.next_observations, obs[1:].astype(np.float32))
        np.testing.assert_array_equal(t.rewards, rew.astype(np.float32))
        assert t.timeouts[-1] and not t.terminals.any()
    _write_minari("D4RL/pen/sparse-v2", "AdroitHandPenSparse-v1", {}, lengths=(3,))
    with pytest.raises(DataError, match="AdroitHandPenSparse-v1.*other reward"):
        read_minari("D4RL/pen/sparse-v2", task=get_task("pen-human"))


def test_minari_antmaze_dict_observations_flatten_to_the_envs_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    from dtrl.data.minari_io import read_minari

    task = get_task("antmaze-umaze")
    eps = _write_minari("D4RL/antmaze/test-v1", "AntMaze_UMaze-v4", task.family.env_kwargs)
    ds = read_minari("D4RL/antmaze/test-v1", task=task)
    assert ds.obs_dim == 31 and [len(t) for t in ds] == [5, 7]
    for (obs, _, _), t in zip(eps, ds):
        flat = flatten_goal_obs(obs).astype(np.float32)
        np.testing.assert_array_equal(t.observations, flat[:-1])
        np.testing.assert_array_equal(t.observations[:, :2], obs["achieved_goal"][:-1].astype(np.float32))
        np.testing.assert_array_equal(t.observations[:, 29:], obs["desired_goal"][:-1].astype(np.float32))
    # The env's own observation (same maze, same seed) is the flattened data's first row.
    env = make_env(task)
    o, _ = env.reset(seed=0)
    np.testing.assert_array_equal(o.astype(np.float32), flatten_goal_obs(eps[0][0])[0].astype(np.float32))
    # Minari's diverse-goal collection env of the same maze is accepted; another maze is not.
    _write_minari("D4RL/antmaze/medium-v1", "AntMaze_Medium_Diverse_GR-v4", {}, lengths=(3,))
    assert len(read_minari("D4RL/antmaze/medium-v1", task=get_task("antmaze-medium-diverse"))) == 1
    with pytest.raises(DataError, match="another maze"):
        read_minari("D4RL/antmaze/medium-v1", task=task)


def test_minari_antmaze_v5_data_drops_the_contact_forces_and_equals_v4s(tmp_path, monkeypatch):
    """AntMaze v5's ant observation is v4's 27 dims, then Ant-v5's 78 contact forces (same seed, same actions)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    from dtrl.data.minari_io import read_minari

    task = get_task("antmaze-umaze")
    v4 = _write_minari("D4RL/antmaze/v4-v1", "AntMaze_UMaze-v4", task.family.env_kwargs)
    v5 = _write_minari("D4RL/antmaze/v5-v1", "AntMaze_UMaze-v5", task.family.env_kwargs)
    assert v5[0][0]["observation"].shape[1] == 105 and v4[0][0]["observation"].shape[1] == 27
    with pytest.warns(UserWarning, match="AntMaze_UMaze-v5.*other version"):
        ds = read_minari("D4RL/antmaze/v5-v1", task=task)
    assert ds.obs_dim == 31 and [len(t) for t in ds] == [5, 7]
    for (obs4, _, rew4), t in zip(v4, ds):
        flat = flatten_goal_obs(obs4).astype(np.float32)
        np.testing.assert_array_equal(t.observations, flat[:-1])
        np.testing.assert_array_equal(t.next_observations, flat[1:])
        np.testing.assert_array_equal(t.rewards, rew4.astype(np.float32))
    [note] = ds.metadata["conversions"]
    assert "78 contact forces" in note and "AntMaze_UMaze-v5" in note
    assert "conversions" not in read_minari("D4RL/antmaze/v4-v1", task=task).metadata


def test_antmaze_v5_observation_of_another_size_is_refused():
    from dtrl.data.minari_io import _episode_to_trajectory
    from dtrl.envs.robotics import check_dataset_env

    task = get_task("antmaze-umaze")
    _, conversions = check_dataset_env(task, "AntMaze_UMaze-v5", "src")
    ep = type("Ep", (), {"id": 3, "observations": {"observation": np.zeros((3, 50)), "achieved_goal": np.zeros((3, 2)),
                                                   "desired_goal": np.zeros((3, 2))},
                         "actions": np.zeros((2, 8)), "rewards": np.zeros(2), "terminations": np.zeros(2, bool),
                         "truncations": np.zeros(2, bool), "infos": {}})()
    with pytest.raises(DataError, match="src: episode 3: .*50 dims and cannot be converted"):
        _episode_to_trajectory(ep, "src", conversions)
    with pytest.raises(DataError, match="another maze"):
        check_dataset_env(task, "AntMaze_Medium-v5", "src")


@pytest.mark.parametrize("name", ["door", "hammer", "relocate"])
def test_minari_adroit_data_in_gymnasium_robotics_convention_is_rescored_exactly(tmp_path, monkeypatch, name):
    """Data recorded on AdroitHand*-v1 (+0.1 x hand distance) read as the env's rewards (D4RL's -0.1), bit for bit."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    from dtrl.data.minari_io import read_minari

    task = get_task(f"{name}-human")
    eps = _write_minari(f"D4RL/{name}/test-v2", task.env_id, {})
    ds = read_minari(f"D4RL/{name}/test-v2", task=task)
    env = make_env(task)
    for i, ((obs, act, raw), t) in enumerate(zip(eps, ds)):
        o, _ = env.reset(seed=i)
        np.testing.assert_array_equal(o, obs[0])  # the same episode, stepped in dtrl's env
        want = np.array([env.step(a)[1] for a in act])
        assert np.all(want < raw)  # the conventions differ at every step (the distance is never 0)
        np.testing.assert_array_equal(t.rewards, want.astype(np.float32))
    [note] = ds.metadata["conversions"]
    assert note.startswith("rewards: rescored into D4RL's convention") and task.env_id in note
    if name == "door":  # `dtrl data` says so in the summary, and its returns are the rescored ones
        import json

        from dtrl.cli import main

        assert main(["data", task.name, "--set", f"results={tmp_path / 'res'}",
                     "--set", "data.sources={%s: {minari: D4RL/door/test-v2}}" % task.name]) == 0
        summary = json.loads((tmp_path / "res" / "data" / f"{task.name}.json").read_text())
        assert summary["conversions"] == [note] and summary["return_mean"] == pytest.approx(ds.returns().mean())


def test_adroit_data_of_unknown_reward_convention_is_refused():
    from dtrl.envs.robotics import check_dataset_env

    door = get_task("door-expert")
    with pytest.raises(DataError, match="records no env id.*hand-distance"):
        check_dataset_env(door, None, "src")
    with pytest.raises(DataError, match="AdroitHandDoor-v2, whose reward convention dtrl does not know"):
        check_dataset_env(door, "AdroitHandDoor-v2", "src")
    notes, conv = check_dataset_env(door, "AdroitHandDoor-v0", "src")  # D4RL's own env: D4RL's sign, kept
    assert not conv and "other version" in notes[0]
    notes, conv = check_dataset_env(get_task("pen-human"), None, "src")  # pen's reward has no such term
    assert not conv and "assumed" in notes[0]


def test_d4rl_antmaze_file_appends_the_goal_and_splits_episodes(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    obs, goal = rng.normal(size=(n, 29)), rng.normal(size=(n, 2))
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    terminals[3], timeouts[8] = True, True
    path = tmp_path / "antmaze-umaze-v2.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"], f["actions"] = obs.astype(np.float32), rng.uniform(-1, 1, (n, 8)).astype(np.float32)
        f["rewards"], f["terminals"], f["timeouts"] = terminals.astype(np.float32), terminals, timeouts
        f["infos/goal"], f["infos/qpos"], f["infos/qvel"] = goal, rng.normal(size=(n, 15)), rng.normal(size=(n, 14))
    ds = read_d4rl(path, get_task("antmaze-umaze"), keep_unflagged_tail=True)
    assert [len(t) for t in ds] == [4, 5, 3] and ds.obs_dim == 31
    flat = np.concatenate([obs, goal], axis=1).astype(np.float32)
    np.testing.assert_array_equal(np.concatenate([t.observations for t in ds]), flat)
    assert ds[0].terminals[-1] and ds[1].timeouts[-1] and ds.returns().tolist() == [1.0, 0.0, 0.0]
    assert [len(t) for t in read_d4rl(path, get_task("antmaze-umaze"))] == [4, 5]  # D4RL's sequence_dataset
    assert read_d4rl(path).obs_dim == 29  # without a task: the file as it is
    with h5py.File(path, "a") as f:
        del f["infos/goal"]
    with pytest.raises(DataError, match="infos/goal"):
        read_d4rl(path, get_task("antmaze-umaze"))


def test_human_data_cannot_be_generated_and_the_error_says_where_to_get_it(tmp_path):
    from dtrl.data.generate import generate_task_dataset
    from dtrl.data.sources import load_task_dataset
    from dtrl.config.experiment import load_config

    exp = load_config(None, {"results": str(tmp_path)})
    for fn in (generate_task_dataset, load_task_dataset):
        with pytest.raises(DataError, match=r"D4RL/pen/human-v2.*minari download.*pen-human-v1\.hdf5"):
            fn(exp, get_task("pen-human"))


# -- report ---------------------------------------------------------------------------------------------------

def test_report_groups_tasks_by_family_with_family_averages_and_success(tmp_path):
    import json

    import pandas as pd

    from dtrl.config.experiment import ExperimentConfig, GridConfig
    from dtrl.report.build import report
    from dtrl.report.tables import BUDGET_ROWS
    from test_report import write_run

    scores = {"hopper-medium": [50.0, 70.0], "pen-human": [10.0, 30.0], "door-human": [0.0, 4.0],
              "antmaze-umaze": [50.0, 100.0]}
    for task, per_seed in scores.items():
        for seed, sc in enumerate(per_seed):
            write_run(tmp_path, "odt", task, seed, sc, 1000, 10)
            rate = {"antmaze-umaze": sc / 100, "pen-human": 0.5}.get(task)  # door-human: a run without one
            if rate is not None:
                p = tmp_path / "runs/odt" / task / f"seed{seed}/summary.json"
                p.write_text(json.dumps({**json.loads(p.read_text()), "final_success_rate": rate}))
    grid = ["pen-human", "hopper-medium", "antmaze-umaze", "door-human"]  # families interleaved in the grid
    exp = ExperimentConfig(results=str(tmp_path), grid=GridConfig(methods=["odt"], tasks=grid, seeds=[0, 1]))
    report(exp, tmp_path, tmp_path / "runs", reps=50, figures=False)
    table = pd.read_csv(tmp_path / "tables" / "main.csv").set_index("task")
    assert list(table.index) == ["pen-human", "door-human", "average (adroit)", "hopper-medium",
                                 "average (locomotion)", "antmaze-umaze", "average (antmaze)", "average",
                                 *BUDGET_ROWS]
    assert table.loc["average (adroit)", "odt_mean"] == pytest.approx((20.0 + 2.0) / 2)
    assert table.loc["average (adroit)", "odt_std"] == pytest.approx(np.std([5.0, 17.0], ddof=1))
    assert table.loc["average (antmaze)", "odt_mean"] == pytest.approx(75.0)
    assert table.loc["average", "odt_mean"] == pytest.approx((20 + 2 + 60 + 75) / 4)
    assert table.loc["antmaze-umaze", "odt_success"] == pytest.approx(0.75)
    assert table.loc["pen-human", "odt_success"] == pytest.approx(0.5)  # Adroit: D4RL's success rule
    assert np.isnan(table.loc["door-human", "odt_success"]) and np.isnan(table.loc["hopper-medium", "odt_success"])
    # Yan et al. 2024's Adroit and AntMaze tables sit beside ours like the MuJoCo one (dtrl/reference)
    assert table.loc["pen-human", "odt_published"] == 27.55 and table.loc["hopper-medium", "odt_published"] == 97.84
    assert table.loc["average (adroit)", "odt_published"] == pytest.approx((27.55 + 10.61) / 2)
    assert table.loc["antmaze-umaze", "odt_published"] == 15.92
    md = (tmp_path / "tables" / "main.md").read_text()
    assert "| **average (adroit)** |" in md and "75.0 ± 35.4 (success 75%)" in md
    assert "| pen-human | 20.0 ± 14.1 (success 50%) |" in md
    assert "no published Adroit or AntMaze numbers" not in md
    assert ("the paper states: Table 2 (Adroit): D4RL v1 datasets, 1M env steps; Table 1 (MuJoCo): D4RL v2 datasets, "
            "500k env steps; Table 3 (AntMaze): D4RL v2 datasets, 1M env steps;") in md
    assert "ODT 1k vs its published column 1M (adroit), 500k (locomotion), 1M (antmaze)" in md
    assert "AntMaze and Adroit cells add the success rate" in md


def test_core_imports_without_the_extra_and_the_env_names_it():
    import subprocess
    import sys

    code = ("import sys; sys.modules['gymnasium_robotics'] = None\n"
            "from dtrl.tasks import get_task; from dtrl.envs.make import make_env\n"
            "make_env(get_task('hopper-medium'))\n"
            "try:\n    make_env(get_task('pen-human'))\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'dtrl[robotics]'" in out
