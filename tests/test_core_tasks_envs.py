import numpy as np
import pytest

from dtrl.envs.make import get_sim_state, make_env, set_sim_state
from dtrl.tasks import UnknownTaskError, get_task, known_tasks


def test_registry_names_and_scores():
    t = get_task("hopper-medium-replay")
    assert t.env_id == "Hopper-v5" and t.quality == "medium-replay"
    assert t.d4rl_name == "hopper-medium-replay-v2" and t.minari_id == "mujoco/hopper/medium-replay-v0"
    assert t.normalize(t.ref_max_score) == pytest.approx(100.0)
    assert t.normalize(t.ref_min_score) == pytest.approx(0.0)
    assert {f"{e}-{q}" for e in ("hopper", "halfcheetah", "walker2d", "ant")
            for q in ("random", "medium", "medium-replay", "medium-expert", "expert")} <= set(known_tasks())


@pytest.mark.parametrize("quality", ["medium", "medium-replay", "random"])
def test_ant_normalisation_is_d4rls(quality):
    """Scores next to published columns use D4RL's ant pair (d4rl/infos.py: -325.6, 3879.7)."""
    t = get_task(f"ant-{quality}")
    returns = np.array([-325.6, 0.0, 1000.0, 3879.7, 5000.0])
    assert np.array_equal(t.normalize(returns), 100.0 * (returns - -325.6) / (3879.7 - -325.6))
    assert t.normalize(3879.7) == pytest.approx(100.0) and t.normalize(-325.6) == pytest.approx(0.0)
    # The v5 re-measured random return is a separate number, not the main normalisation.
    assert t.family.v5_random_score == -47.457
    assert t.normalize_v5(-47.457) == pytest.approx(0.0) and t.normalize_v5(3879.7) == pytest.approx(100.0)
    assert get_task("hopper-medium").normalize_v5(100.0) is None
    # The reference code's ant targets (RL_as_Vitamin readme.md:111-114).
    assert (t.eval_rtg, t.online_rtg) == (5000, 10000)


def test_unknown_task_lists_known():
    with pytest.raises(UnknownTaskError, match="hopper-medium"):
        get_task("hopper-mediun")


@pytest.mark.parametrize("name", ["hopper-medium", "ant-medium", "pendulum-medium"])
@pytest.mark.parametrize("after", [0, 7])
def test_exact_reset_replays_bit_identically(name, after):
    task = get_task(name)
    env = make_env(task, seed=0)
    rng = np.random.default_rng(1)
    acts = rng.uniform(-1, 1, (after + 15, env.action_space.shape[0]))
    obs, _ = env.reset(seed=3)
    for a in acts[:after]:
        obs, *_ = env.step(a)
    snap = get_sim_state(env)
    ref = [env.step(a)[:2] for a in acts[after:]]
    other = make_env(task, seed=9)
    other.step(acts[0])  # put it somewhere else first
    set_sim_state(other, snap)
    assert np.array_equal(other._get_obs(), obs)
    got = [other.step(a)[:2] for a in acts[after:]]
    for (o1, r1), (o2, r2) in zip(ref, got):
        assert np.array_equal(o1, o2) and r1 == r2


def test_set_state_rejects_wrong_size():
    env = make_env(get_task("hopper-medium"))
    with pytest.raises(ValueError, match="expected"):
        set_sim_state(env, np.zeros(3))


def test_walker2d_v5_feet_friction_is_what_the_task_note_says():
    """Walker2d-v5: both feet 1.9; the v2-v4 model of D4RL's data gave the right foot 0.9 (the task note)."""
    import mujoco

    task = get_task("walker2d-medium")
    m = make_env(task).model
    friction = {g: m.geom_friction[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, g), 0]
                for g in ("foot_geom", "foot_left_geom")}
    assert friction == {"foot_geom": pytest.approx(1.9), "foot_left_geom": pytest.approx(1.9)}
    assert "friction 1.9" in task.family.note and "right foot has 0.9" in task.family.note
