import numpy as np
import pytest
import torch

from dtrl.harness.evaluate import evaluate_dt
from dtrl.harness.rollout import RolloutEngine, Start, collect_episodes, context_at
from dtrl.tasks import get_task

from helpers import tiny_dt


@pytest.fixture(scope="module")
def hopper():
    return get_task("hopper-medium")


def test_recorded_contexts_and_log_probs_are_exact(hopper):
    model = tiny_dt().eval()
    eng = RolloutEngine(hopper, 4, model.cfg.context_len, seed=0)
    trajs = collect_episodes(eng, model, 4, 3600.0, seeds=range(4), sample=True, record_sim_states=True,
                             record_contexts=True)
    for tr in trajs:
        assert len(tr) >= 2 and tr.sampled.all()
        assert tr.terminals[-1] or tr.timeouts[-1]
        np.testing.assert_allclose(tr.policy_rtg[1:], 3600.0 - np.cumsum(tr.rewards)[:-1], rtol=1e-5)
        for t in range(len(tr)):
            ctx = context_at(tr, t, model.cfg.context_len)
            for k in ctx:
                assert np.array_equal(ctx[k], tr.contexts[k][t]), (k, t)
        c = {k: torch.as_tensor(v) for k, v in tr.contexts.items()}
        with torch.no_grad():
            dist = model(c["states"], c["actions"], c["rtg"], c["timesteps"], c["mask"])
            a = torch.as_tensor(tr.actions)[:, None].expand(-1, model.cfg.context_len, -1)
            logp = dist.log_prob(a)[:, -1].numpy()
        np.testing.assert_allclose(logp, tr.log_probs, atol=1e-5)


def test_restore_replays_the_trajectory_exactly(hopper):
    model = tiny_dt().eval()
    eng = RolloutEngine(hopper, 1, model.cfg.context_len, seed=0)
    (tr,) = eng.run(model, [Start(target_rtg=3600.0, seed=5)], sample_steps=0, max_steps=30,
                    record_sim_states=True, record_contexts=True)
    t0 = 6
    (again,) = eng.run(model, [Start(traj=tr, t=t0)], sample_steps=0, max_steps=10, record_contexts=True)
    n = len(again)
    assert n == min(10, len(tr) - t0)
    assert np.array_equal(again.observations, tr.observations[t0:t0 + n])
    assert np.array_equal(again.actions, tr.actions[t0:t0 + n])
    assert np.array_equal(again.rewards, tr.rewards[t0:t0 + n])
    assert np.array_equal(again.policy_rtg, tr.policy_rtg[t0:t0 + n])
    for t in range(n):  # contexts of a restored rollout include the history before its reset point
        ctx = context_at(again, t, model.cfg.context_len)
        for k in ctx:
            assert np.array_equal(ctx[k], again.contexts[k][t]), (k, t)
            assert np.array_equal(ctx[k], tr.contexts[k][t0 + t]), (k, t)


def test_sample_steps_then_mean_actions(hopper):
    model = tiny_dt().eval()
    eng = RolloutEngine(hopper, 3, model.cfg.context_len, seed=0)
    (tr,) = eng.run(model, [Start(target_rtg=3600.0, seed=1)], sample_steps=0, max_steps=8,
                    record_sim_states=True)
    starts = [Start(traj=tr, t=2)] * 3
    outs = eng.run(model, starts, sample_steps=3, max_steps=6)
    for o in outs:
        assert o.sampled.tolist()[:3] == [True] * min(3, len(o)) and not o.sampled[3:].any()
    # members start from the same state but sampled different actions
    assert not np.array_equal(outs[0].actions[0], outs[1].actions[0])


def test_time_limit_is_a_timeout_not_a_terminal():
    from dtrl.tasks import with_overrides

    task = with_overrides(get_task("pendulum-medium"), max_episode_steps=3)
    model = tiny_dt("pendulum-medium").eval()
    eng = RolloutEngine(task, 2, model.cfg.context_len, seed=0)
    for tr in collect_episodes(eng, model, 2, 10.0, seeds=[0, 1], sample=False):
        if len(tr) == 3 and not tr.terminals[-1]:
            assert tr.timeouts[-1]
        assert not (tr.terminals & tr.timeouts).any()


def test_evaluation_is_deterministic_given_seed(hopper):
    model = tiny_dt().eval()
    a = evaluate_dt(model, hopper, 3, seed=4)
    b = evaluate_dt(model, hopper, 3, seed=4, n_envs=1)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert a.shape == (3,)
