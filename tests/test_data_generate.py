"""The D4RL-recipe generator on a tiny budget: valid files, exact sim states, determinism, reuse."""

from __future__ import annotations

import numpy as np
import pytest

from dtrl.data.cli import cmd_behaviour, cmd_data
from dtrl.data.d4rl_hdf5 import read_d4rl
from dtrl.data.generate import behaviour_dir, generated_path, load_behaviour_metadata
from dtrl.data.trajectories import DataError
from dtrl.envs.make import make_env, observe, set_sim_state
from dtrl.config.experiment import load_config
from dtrl.util.io import read_json
from dtrl.tasks import get_task

# Pendulum, a few thousand SAC steps; 'medium' at 2% of the reference max (20 return) so that even
# this budget reaches it. Everything on the CPU, one thread (conftest), no progress bars.
TINY = {"transitions": 1500, "sac_steps": 3200, "sac_envs": 4, "sac_batch_size": 64, "sac_hidden": 32,
        "sac_utd": 0.5, "sac_start_steps": 400, "eval_every": 800, "eval_episodes": 2, "medium_fraction": 0.02,
        "rollout_envs": 3, "rollout_workers": 1, "sac_init_alpha": 0.1, "seed": 0, "device": "cpu",
        "progress": False}


def make_exp(root, **over):
    return load_config(overrides={"results": str(root), "data": {"generator": {**TINY, **over}}})


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """pendulum-medium (trains SAC up to 'medium' and pauses), then pendulum-medium-replay from it."""
    root = tmp_path_factory.mktemp("gen")
    exp = make_exp(root)
    assert cmd_data(exp, "pendulum-medium", None) == 0
    paused = load_behaviour_metadata(exp, "pendulum")
    assert cmd_data(exp, "pendulum-medium-replay", None) == 0
    return exp, paused


def assert_sim_states_replay(task, ds, max_checks=60):
    """set_sim_state(s_t) shows observation[t]; replaying action[t] gives next_observation[t], reward[t]."""
    env = make_env(task, seed=123)
    checked = 0
    for traj in ds:
        for t in np.linspace(0, len(traj) - 1, num=min(len(traj), 3)).astype(int):
            set_sim_state(env, traj.sim_states[t])
            np.testing.assert_array_equal(observe(env).astype(np.float32), traj.observations[t])
            np.testing.assert_array_equal(env.data.qpos, traj.qpos[t])
            np.testing.assert_array_equal(env.data.qvel, traj.qvel[t])
            obs, reward, terminated, _, _ = env.step(traj.actions[t])
            np.testing.assert_array_equal(obs.astype(np.float32), traj.next_observations[t])
            assert np.float32(reward) == traj.rewards[t]
            assert bool(terminated) == bool(traj.terminals[t])
            checked += 1
            if checked >= max_checks:
                return


def test_medium_dataset_is_valid_d4rl_with_exact_sim_states(generated):
    exp, paused = generated
    task = get_task("pendulum-medium")
    path = generated_path(exp, task)
    ds = read_d4rl(path, task)
    assert ds.num_transitions == TINY["transitions"] and ds.summary()["has_sim_states"]
    # Each of the 3 rollout envs ran its 500-step share episode after episode.
    assert sum(t.terminals.sum() for t in ds) >= 3
    for t in ds:  # an episode ends exactly once, at its last step; terminals and timeouts never both
        ends = t.terminals | t.timeouts
        assert ends[-1] and ends.sum() == 1 and not (t.terminals & t.timeouts).any()
        assert len(t) <= task.max_episode_steps
        assert np.all(np.abs(t.actions) <= 1.0)
    assert_sim_states_replay(task, ds)
    meta = ds.metadata
    assert meta["seed"] == 0 and meta["policies"][0]["policy"] == "medium"
    assert meta["policies"][0]["sac_steps"] == paused["medium"]["sac_steps"] > 0
    summary = read_json(exp.results + "/data/pendulum-medium.json")
    assert summary["transitions"] == TINY["transitions"] and "normalized_mean" in summary
    # 'dtrl data' for a medium task stops SAC at 'medium' and leaves it resumable.
    assert paused["status"] == "medium" and paused["medium"]["reached"]
    bdir = behaviour_dir(exp, "pendulum")
    assert {"random.pt", "medium.pt", "medium_replay.hdf5", "metadata.json", "sac_state.pt"} <= {
        p.name for p in bdir.iterdir()}


def test_medium_replay_is_the_buffer_up_to_medium(generated):
    exp, paused = generated
    task = get_task("pendulum-medium-replay")
    ds = read_d4rl(generated_path(exp, task), task)
    med = paused["medium"]
    assert ds.num_transitions == med["replay_transitions"] == med["sac_steps"]
    assert len(ds) == med["replay_episodes"]
    assert_sim_states_replay(task, ds)
    # Episodes are whole env streams: inside an episode, next_observation[t] == observation[t + 1].
    for t in ds:
        np.testing.assert_array_equal(t.next_observations[:-1], t.observations[1:])


def test_medium_is_the_first_eval_at_the_threshold_with_exact_step_accounting(generated):
    """'medium' = the first evaluation (every eval_every env steps) whose return reaches medium_fraction x
    ref max; SAC pauses right there and its replay up to that step is medium-replay, step for step."""
    exp, paused = generated
    task = get_task("pendulum-medium")
    threshold = TINY["medium_fraction"] * task.ref_max_score
    assert paused["medium_threshold"] == pytest.approx(threshold)
    curve = paused["eval_curve"]
    steps = [int(s) for s, _ in curve]
    # step 0 is the random policy; then one evaluation per eval_every steps (a multiple of sac_envs here)
    assert steps == [TINY["eval_every"] * k for k in range(len(curve))]
    first = next(s for s, r in curve[1:] if r >= threshold)
    assert paused["medium"]["sac_steps"] == first == steps[-1] == paused["sac_steps_done"]
    assert all(r < threshold for s, r in curve[1:-1])
    assert paused["medium"]["eval_return"] == curve[-1][1]
    # the buffer cut: every transition SAC collected up to 'medium' and none after
    assert paused["medium"]["replay_transitions"] == first
    # the time to 'medium' is kept in wall and process-CPU seconds, within the run's totals
    med = paused["medium"]
    assert 0 < med["cpu_time_s"] <= paused["cpu_time_s"] and 0 < med["wall_time_s"] <= paused["wall_time_s"]


def test_expert_resumes_the_paused_run_and_behaviour_reports(generated, capsys):
    exp, paused = generated
    assert cmd_data(exp, "pendulum-expert", None) == 0
    meta = load_behaviour_metadata(exp, "pendulum")
    assert meta["status"] == "complete" and meta["sac_steps_done"] >= TINY["sac_steps"]
    assert meta["resumed_at"] == [paused["sac_steps_done"]]
    assert meta["medium"] == paused["medium"]  # resuming does not touch 'medium'
    assert not (behaviour_dir(exp, "pendulum") / "sac_state.pt").exists()
    # The 'random' policy the behaviour run saved is the initial actor that random datasets roll out.
    import torch

    from dtrl.data.generate import initial_actor

    saved = torch.load(behaviour_dir(exp, "pendulum") / "random.pt", weights_only=False)["state_dict"]
    for k, v in initial_actor(4, 1, exp.data.generator).state_dict().items():
        assert torch.equal(saved[k], v), k
    ds = read_d4rl(generated_path(exp, get_task("pendulum-expert")))
    assert ds.metadata["policies"][0]["sac_steps"] == meta["expert"]["sac_steps"]
    capsys.readouterr()
    assert cmd_behaviour(exp, "pendulum") == 0  # already complete: reports, trains nothing
    out = capsys.readouterr().out
    assert "medium: step" in out and "expert: step" in out
    assert load_behaviour_metadata(exp, "pendulum")["sac_updates"] == meta["sac_updates"]


def test_same_seed_same_dataset(generated, tmp_path):
    exp, _ = generated
    exp2 = make_exp(tmp_path)
    assert cmd_data(exp2, "pendulum-medium", None) == 0
    task = get_task("pendulum-medium")
    a, b = read_d4rl(generated_path(exp, task)), read_d4rl(generated_path(exp2, task))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("observations", "actions", "rewards", "terminals", "timeouts", "sim_states"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))


def test_rollout_data_does_not_depend_on_worker_processes():
    from dtrl.config.data import GeneratorConfig
    from dtrl.data.generate import initial_actor, rollout_policy

    task = get_task("pendulum-random")
    actor = initial_actor(4, 1, GeneratorConfig(sac_hidden=16))
    one, stats1 = rollout_policy(task, actor, 240, n_envs=4, seed=7, workers=1)
    two, stats2 = rollout_policy(task, actor, 240, n_envs=4, seed=7, workers=2)
    assert stats1 == stats2 and len(one) == len(two)
    for a, b in zip(one, two):
        for name in ("observations", "actions", "rewards", "terminals", "timeouts", "sim_states"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert sum(len(t) for t in one) == 240 and stats1["cut_pieces"] <= 4


def test_changed_settings_are_refused(generated):
    exp, _ = generated
    other = make_exp(exp.results, transitions=999)
    with pytest.raises(DataError, match="transitions: 1500 there, 999 now"):
        cmd_data(other, "pendulum-medium", None)
    other = make_exp(exp.results, sac_hidden=16)
    with pytest.raises(DataError, match="sac_hidden: 32 there, 16 now"):
        cmd_behaviour(other, "pendulum")


def test_random_needs_no_training_and_medium_falls_back_to_best(tmp_path, capsys):
    exp = make_exp(tmp_path, medium_fraction=1.0, sac_steps=800, sac_start_steps=200, eval_every=400,
                   transitions=300)
    assert cmd_data(exp, "pendulum-random", None) == 0
    assert not behaviour_dir(exp, "pendulum").exists()  # the random policy is SAC's initial actor
    assert read_d4rl(generated_path(exp, get_task("pendulum-random"))).num_transitions == 300
    capsys.readouterr()
    assert cmd_data(exp, "pendulum-medium", None) == 0
    assert "never reached the medium return" in capsys.readouterr().err
    meta = load_behaviour_metadata(exp, "pendulum")
    assert meta["status"] == "complete" and not meta["medium"]["reached"]
    assert meta["medium"]["sac_steps"] == max((s for s, r in meta["eval_curve"][1:]),
                                              key=lambda s: dict(meta["eval_curve"][1:])[s])
    assert read_d4rl(generated_path(exp, get_task("pendulum-medium"))).metadata["warnings"]


def test_unknown_family_and_cuda_missing(tmp_path):
    from dtrl.tasks import UnknownTaskError

    with pytest.raises(UnknownTaskError):
        cmd_behaviour(make_exp(tmp_path), "hoper")
    import torch

    if not torch.cuda.is_available():
        from dtrl.config import ConfigError

        with pytest.raises(ConfigError, match="data.generator.device is 'cuda' but CUDA is not available"):
            cmd_data(make_exp(tmp_path, device="cuda"), "pendulum-medium", None)
