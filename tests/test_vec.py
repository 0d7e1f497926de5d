import numpy as np

from dtrl.envs.make import set_sim_state
from dtrl.tasks import get_task, with_overrides
from dtrl.envs.vec import VecStepper, evaluate_policy


def test_vec_stepper_autoreset_and_flags():
    task = with_overrides(get_task("pendulum-medium"), max_episode_steps=5)
    vs = VecStepper(task, 3, seed=0, record_sim_states=True)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(12):
        b = vs.step(rng.uniform(-1, 1, (3, 1)))
        assert b.obs.shape == (3, 4) and b.sim_states.shape[0] == 3
        assert not (b.terminals & b.timeouts).any()
        ends += len(b.episode_returns)
        assert all(n <= 5 for n in b.episode_lengths)
    assert ends >= 3


def test_recorded_sim_state_restores_the_transition():
    task = get_task("hopper-medium")
    vs = VecStepper(task, 2, seed=0, record_sim_states=True)
    rng = np.random.default_rng(1)
    for _ in range(3):
        b = vs.step(rng.uniform(-1, 1, (2, 3)))
    env = vs.envs[0].__class__  # noqa: F841 - type only
    from dtrl.envs.make import make_env

    other = make_env(task)
    set_sim_state(other, b.sim_states[1])
    o, r, *_ = other.step(b.actions[1])
    assert np.array_equal(o, b.next_obs[1]) and r == b.rewards[1]


def test_evaluate_policy_independent_of_batch():
    task = get_task("pendulum-medium")

    def act(o):
        return np.clip(-o[:, 1:2] * 2.0, -1, 1)

    a = evaluate_policy(act, task, 4, seed=3)
    b = evaluate_policy(act, task, 4, seed=3, n_envs=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
