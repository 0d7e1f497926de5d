"""Env stepping across worker processes (dtrl.envs.workers) gives bit-identical results to in-process stepping."""

import numpy as np
import pytest

from dtrl.harness.rollout import RolloutEngine, Start, collect_episodes
from dtrl.tasks import get_task, with_overrides
from dtrl.envs.vec import VecStepper
from dtrl.envs.workers import EnvSet, EnvWorkerError

from helpers import tiny_dt

TRAJ_FIELDS = ("observations", "actions", "rewards", "terminals", "timeouts", "sim_states", "policy_rtg",
               "timesteps", "log_probs", "action_var", "sampled")


def assert_same_trajs(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for f in TRAJ_FIELDS:
            u, v = getattr(x, f), getattr(y, f)
            assert (u is None) == (v is None), f
            if u is not None:
                assert u.dtype == v.dtype and np.array_equal(u, v), f


@pytest.fixture(scope="module")
def engines():
    """The same engine in-process and with 2 workers (5 envs: slices of 2 and 3)."""
    task = get_task("hopper-medium")
    model = tiny_dt().eval()
    local = RolloutEngine(task, 5, model.cfg.context_len, seed=3, workers=0)
    multi = RolloutEngine(task, 5, model.cfg.context_len, seed=3, workers=2)
    assert local.envs is not None and multi.envs is None and multi.env_set.workers == 2
    yield model, local, multi
    multi.env_set.close()


def test_exploration_and_grpo_group_rollouts_match_in_process(engines):
    model, local, multi = engines
    # exploration: whole sampled episodes from fresh resets, some with seeds, some continuing the env's RNG
    seeds = [11, None, 12, None, 13]
    runs = []
    for eng in (local, multi):
        starts = [Start(target_rtg=3600.0, seed=s) for s in seeds]
        runs.append(eng.run(model, starts, sample_steps=0, sample_all=True, record_sim_states=True))
    assert_same_trajs(*runs)
    explore = runs[0]
    assert sum(len(t) for t in explore) > 5 * 5  # episodes long enough to restore from
    # GRPO-style groups: several continuations restored from reset points of the exploration episodes,
    # the first steps sampled, then the mean action; envs stepping from different workers at once
    points = [(0, 3), (0, 3), (2, 5), (2, 5), (4, 1)]
    groups = []
    for eng in (local, multi):
        starts = [Start(traj=explore[k], t=t) for k, t in points]
        groups.append(eng.run(model, starts, sample_steps=4, max_steps=15, record_sim_states=True))
    assert_same_trajs(*groups)
    # the restored continuations really start where their reset point was
    for (k, t), tr in zip(points, groups[0]):
        assert np.array_equal(tr.sim_states[0], explore[k].sim_states[t])
        assert np.array_equal(tr.observations[0], explore[k].observations[t])
    # and the engine's generator drew the same noise in both (same sampled actions above), so a
    # second round of episodes continues identically as well
    a = collect_episodes(local, model, 7, 3600.0, seeds=range(7), record_sim_states=True)
    b = collect_episodes(multi, model, 7, 3600.0, seeds=range(7), record_sim_states=True)
    assert_same_trajs(a, b)


def test_vec_stepper_with_workers_matches_in_process_and_resumes():
    task = with_overrides(get_task("hopper-medium"), max_episode_steps=7)  # auto-resets within the test
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (12, 3, 3))
    a = VecStepper(task, 3, seed=5, record_sim_states=True, workers=0)
    b = VecStepper(task, 3, seed=5, record_sim_states=True, workers=2)
    ends = 0
    try:
        for k, act in enumerate(acts):
            if k == 6:  # state_dict round trip through the workers: the next steps are unchanged
                state = b.state_dict()
                b.step(act)  # steps that the restore below undoes
                b.load_state_dict(state)
                for key in ("sim", "np_random"):
                    assert len(state[key]) == 3
                np.testing.assert_array_equal(np.stack(state["sim"]), np.stack(a.state_dict()["sim"]))
            x, y = a.step(act), b.step(act)
            for f in ("obs", "actions", "rewards", "next_obs", "terminals", "timeouts", "sim_states", "qpos",
                      "qvel"):
                assert np.array_equal(getattr(x, f), getattr(y, f)), (k, f)
            assert x.episode_returns == y.episode_returns and x.episode_lengths == y.episode_lengths
            ends += len(x.episode_returns)
        assert ends >= 3 and a._episodes == b._episodes
        # a subset of rows, as evaluation loops step them
        x, y = a.step(acts[0][:2], rows=np.array([2, 0])), b.step(acts[0][:2], rows=np.array([2, 0]))
        assert np.array_equal(x.next_obs, y.next_obs) and np.array_equal(x.rewards, y.rewards)
        for st in (a, b):  # no rows: an empty batch, as before
            assert st.step(np.zeros((0, 3)), rows=np.array([], dtype=int)).next_obs.shape == (0, 11)
    finally:
        b.env_set.close()


def test_worker_error_is_one_clear_error_and_close_stops_workers():
    task = get_task("pendulum-medium")
    envs = EnvSet(task, [0, 1, 2], workers=2)
    procs = list(envs._procs)
    with pytest.raises(EnvWorkerError, match=r"env worker 1 \(envs 1..2\) failed in 'set_sim': ValueError: simulator state has shape \(3,\)"):
        envs.set_sim([2], np.zeros((1, 3)))  # wrong snapshot size, raised inside worker 1
    obs = envs.reset([0, 1, 2], [4, 5, 6])  # the set still works after a worker's error
    assert obs.shape == (3, 4)
    procs[0].kill()
    procs[0].join()
    with pytest.raises(EnvWorkerError, match=r"env worker 0 \(envs 0..0\) died during 'get_sim'"):
        envs.get_sim([0, 2])
    envs.close()
    assert not any(p.is_alive() for p in procs)
    with pytest.raises(ValueError, match="workers is -1"):
        EnvSet(task, [0], workers=-1)


def test_grpo_run_with_rollout_workers_matches_in_process(tmp_path):
    """The config field reaches the run's engines, and a GRPO-DT run gives the same numbers with it."""
    from dtrl.config.experiment import load_config
    from dtrl.workflow.finetune import finetune
    from dtrl.envs.workers import default_workers, set_default_workers

    from helpers import write_pretrained

    def exp(workers):
        return load_config(None, {
            "results": str(tmp_path), "device": "cpu", "rollout_workers": workers,
            "grid": {"methods": ["m"], "tasks": ["hopper-medium"]}, "eval": {"episodes": 1, "final_episodes": 2},
            "online": {"env_steps": 60, "eval_every_env_steps": 10_000, "progress": False},
            "methods": {"m": {"algo": "grpo", "group_size": 4, "reset_points": 4, "traj_len": 5, "eval_len": 10,
                              "explore_episodes": 2, "minibatch_size": 4, "epochs": 2}}})

    write_pretrained(tmp_path / "pretrain/hopper-medium/seed0/model.pt", tiny_dt())
    try:
        multi = finetune(exp(2), "m", "hopper-medium", 0, out=tmp_path / "multi")
        assert default_workers() == 2
        local = finetune(exp(0), "m", "hopper-medium", 0, out=tmp_path / "local")
    finally:
        set_default_workers(0)
    assert local["grad_updates"] > 0 and len(local["final_returns"]) == 2
    for k in ("env_steps", "grad_updates", "iterations", "final_returns"):
        assert multi[k] == local[k], k
