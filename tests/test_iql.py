"""IQL (baselines/iql.py): its losses, terminal vs time-limit handling, a harness run, resume, a learning check."""

import csv
import io
import sys
import types
from collections import defaultdict

import numpy as np
import pytest
import torch

from baselines.iql import (IQL, IQLConfig, IQLLearner, ReplayBuffer, advantage_weights, cosine_lr,
                           dataset_transitions, expectile_loss, reward_scale, td_target)
from dtrl.data.trajectories import Trajectory, TrajectoryDataset
from dtrl.config.experiment import load_config
from dtrl.workflow.finetune import finetune
from dtrl.util.logger import CORE_COLUMNS, SUMMARY_KEYS
from dtrl.harness.online import build_context, run_online
from dtrl.config.online import EvalConfig, OnlineConfig
from dtrl.tasks import get_task, with_overrides
from dtrl.envs.vec import VecStepper

PD_GAINS = np.array([0.5, 5.0, 0.5, 1.0])  # balances InvertedPendulum (obs: x, angle, x', angle') for 1000 steps
DIAG_COLUMNS = ["phase", "value_loss", "critic_loss", "actor_loss", "v_mean", "q_mean", "adv_mean", "weight_mean",
                "weight_clip_frac", "updates_offline", "updates_online"]


def pd_dataset(task, episodes, noise, seed=0, n_envs=4, next_obs=True) -> TrajectoryDataset:
    """Episodes of a noisy PD controller on the pendulum (noise 0 balances; large noise drops the pole)."""
    st = VecStepper(task, n_envs, seed=seed)
    rng = np.random.default_rng(seed)
    rows = [defaultdict(list) for _ in range(n_envs)]
    trajs = []
    while len(trajs) < episodes:
        b = st.step(np.clip(st.obs @ PD_GAINS + noise * rng.standard_normal(n_envs), -1, 1)[:, None])
        for i in range(n_envs):
            for k, v in (("o", b.obs), ("a", b.actions), ("r", b.rewards), ("n", b.next_obs), ("d", b.terminals),
                         ("t", b.timeouts)):
                rows[i][k].append(v[i])
            if b.terminals[i] or b.timeouts[i]:
                d = rows[i]
                trajs.append(Trajectory(np.array(d["o"], np.float32), np.array(d["a"], np.float32),
                                        np.array(d["r"], np.float32), np.array(d["d"]), np.array(d["t"]),
                                        next_observations=np.array(d["n"], np.float32) if next_obs else None))
                rows[i] = defaultdict(list)
    return TrajectoryDataset(trajs[:episodes], source="test:pd-pendulum")


def small_cfg(**over) -> IQLConfig:
    params = dict(hidden_dims=[32, 32], batch_size=32, offline_updates=40, offline_updates_per_iteration=20,
                  env_steps_per_iteration=40, n_envs=2, offline_eval_episodes=1)
    params.update(over)
    return IQLConfig(**params)


def _batch(n=16, obs_dim=4, act_dim=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(n, obs_dim, generator=g), "act": torch.rand(n, act_dim, generator=g) * 2 - 1,
            "rew": torch.randn(n, generator=g), "next_obs": torch.randn(n, obs_dim, generator=g),
            "mask": torch.ones(n)}


# --- losses -----------------------------------------------------------------------------------------


def test_expectile_loss_exact_values():
    # weights 0.7 on positive residuals (target above prediction), 0.3 on negative ones
    assert expectile_loss(torch.tensor([2.0, -1.0]), 0.7).item() == pytest.approx((0.7 * 4 + 0.3 * 1) / 2)
    assert expectile_loss(torch.tensor([1.0, 3.0]), 0.7).item() == pytest.approx(0.7 * 10 / 2)
    assert expectile_loss(torch.tensor([-1.0, -3.0]), 0.7).item() == pytest.approx(0.3 * 10 / 2)
    assert expectile_loss(torch.tensor([0.5, -0.5]), 0.5).item() == pytest.approx(0.125)


def test_advantage_weights_are_clipped():
    adv = torch.tensor([0.0, 1.0, 2.0, 10.0, -5.0])
    w, clipped = advantage_weights(adv, beta=3.0, max_weight=100.0)
    assert torch.allclose(w, torch.tensor([1.0, np.exp(3.0), 100.0, 100.0, np.exp(-15.0)], dtype=torch.float32))
    assert clipped.tolist() == [False, False, True, True, False]

    # Through the actor loss: a target critic far above V makes every weight exp(beta * A) > 100.
    torch.manual_seed(0)
    learner = IQLLearner(4, 1, small_cfg(), torch.device("cpu"))
    with torch.no_grad():
        for q in (learner.target_critic.q1, learner.target_critic.q2):
            q[-1].bias.fill_(1e3)
    loss, info = learner.actor_loss(_batch())
    assert info["weight_mean"].item() == 100.0 and info["weight_clip_frac"].item() == 1.0
    assert torch.isfinite(loss)


def _grads(module):
    return [p.grad is not None and p.grad.abs().sum().item() > 0 for p in module.parameters()]


def test_each_loss_reaches_only_its_network():
    torch.manual_seed(0)
    learner = IQLLearner(4, 1, small_cfg(), torch.device("cpu"))
    nets = {"value": learner.value, "critic": learner.critic, "actor": learner.actor,
            "target": learner.target_critic}
    b = _batch()
    for name, loss_fn in (("value", learner.value_loss), ("critic", learner.critic_loss),
                          ("actor", learner.actor_loss)):
        learner.zero_grad(set_to_none=True)
        loss_fn(b)[0].backward()
        for other, net in nets.items():
            got = _grads(net)
            if other == name:
                assert any(got), f"{name} loss gives {name} no gradient"
            else:
                assert not any(got), f"{name} loss leaks a gradient into {other}"


def test_update_moves_target_by_polyak_and_schedules_actor_lr():
    torch.manual_seed(0)
    learner = IQLLearner(4, 1, small_cfg(polyak=0.5), torch.device("cpu"))
    before = [p.clone() for p in learner.target_critic.parameters()]
    learner.update(_batch(), actor_lr=1e-3)
    for t0, t1, c in zip(before, learner.target_critic.parameters(), learner.critic.parameters()):
        assert torch.allclose(t1, 0.5 * t0 + 0.5 * c)
    assert learner.actor_opt.param_groups[0]["lr"] == 1e-3
    assert cosine_lr(3e-4, 0, 100) == 3e-4 and cosine_lr(3e-4, 50, 100) == pytest.approx(1.5e-4)
    assert cosine_lr(3e-4, 100, 100) == pytest.approx(0.0) and cosine_lr(3e-4, 500, 100) == pytest.approx(0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_update_matches_eager_and_resumes():
    dev = torch.device("cuda")

    def learner(seed, device=dev, graph=True):
        torch.manual_seed(seed)
        return IQLLearner(4, 1, small_cfg(hidden_dims=[64, 64], cuda_graph=graph), device)

    def batch(i, device=dev):
        return {k: v.to(device) for k, v in _batch(64, seed=i).items()}

    def train(m, steps, device=dev):
        return [m.update(batch(i, device), cosine_lr(1e-3, i, 40)) for i in steps]

    graph, eager = learner(0), learner(0, graph=False)
    assert graph.use_graph and not eager.use_graph
    infos_g, infos_e = train(graph, range(20)), train(eager, range(20))
    for ig, ie in zip(infos_g, infos_e):
        for k in ig:
            assert torch.allclose(ig[k], ie[k], rtol=1e-4, atol=1e-5), k
    for pg, pe in zip(graph.parameters(), eager.parameters()):
        assert torch.allclose(pg, pe, rtol=1e-4, atol=1e-5)

    # A checkpoint (saved to CPU) resumes in a fresh graph learner and in a CPU learner.
    f = io.BytesIO()
    torch.save({"nets": graph.state_dict(), "optim": graph.optim_state()}, f)
    f.seek(0)
    state = torch.load(f, map_location="cpu")  # as dtrl.util.io.torch_load reads checkpoints
    resumed, cpu = learner(1), learner(1, torch.device("cpu"))
    for m in (resumed, cpu):
        m.load_state_dict(state["nets"])
        m.load_optim_state(state["optim"])
    train(graph, range(20, 40))
    train(resumed, range(20, 40))
    train(cpu, range(20, 40), torch.device("cpu"))
    for pg, pr, pc in zip(graph.parameters(), resumed.parameters(), cpu.parameters()):
        assert torch.allclose(pg, pr, rtol=1e-5, atol=1e-6)
        assert torch.allclose(pg.cpu(), pc, rtol=1e-3, atol=1e-4)


# --- terminals vs time limits ------------------------------------------------------------------------


def test_terminal_stops_bootstrap_timeout_does_not():
    assert td_target(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0]),
                     0.99).tolist() == pytest.approx([1.0, 10.9])

    # The critic regresses exactly that target, with V(s') from the value net.
    learner = IQLLearner(4, 1, small_cfg(), torch.device("cpu"))
    with torch.no_grad():
        learner.value[-1].weight.zero_()
        learner.value[-1].bias.fill_(10.0)  # V == 10 everywhere
    b = _batch(2)
    b["rew"], b["mask"] = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])
    q1, q2 = learner.critic(b["obs"], b["act"])
    target = torch.tensor([1.0, 1.0 + 0.99 * 10.0])
    expected = ((q1 - target) ** 2 + (q2 - target) ** 2).mean()
    assert learner.critic_loss(b)[0].item() == pytest.approx(expected.item(), rel=1e-5)

    # Dataset rows: a terminal row gets mask 0; a time-limit cut keeps mask 1, and without
    # next_observations its last row (no s' to bootstrap from) is dropped.
    obs = np.arange(12, dtype=np.float32).reshape(3, 4)
    act, rew = np.zeros((3, 1), np.float32), np.ones(3, np.float32)
    term = Trajectory(obs, act, rew, np.array([False, False, True]), np.zeros(3, bool))
    cut = Trajectory(obs + 100, act, rew, np.zeros(3, bool), np.array([False, False, True]))
    cut_next = Trajectory(obs + 100, act, rew, np.zeros(3, bool), np.array([False, False, True]),
                          next_observations=obs + 200)
    t = dataset_transitions(TrajectoryDataset([term, cut, cut_next]))
    assert t["mask"].tolist() == [1, 1, 0, 1, 1, 1, 1, 1]
    assert np.array_equal(t["next_obs"][:2], obs[1:]) and np.array_equal(t["next_obs"][3:5], obs[1:] + 100)
    assert np.array_equal(t["next_obs"][5:], obs + 200)


def test_online_transitions_mask_terminals_only(tmp_path):
    # Short episodes: random-ish actions drop the pole (terminal) and the 15-step limit cuts the rest.
    task = with_overrides(get_task("pendulum-random"), max_episode_steps=15)
    ds = pd_dataset(task, 6, noise=1.5)
    ctx = build_context(task, 0, torch.device("cpu"), ds, None, tmp_path, EvalConfig(episodes=1, final_episodes=1))
    m = IQL(small_cfg(offline_updates=0, env_steps_per_iteration=200, utd=0.25), ctx)
    n0 = m.buffer.size
    diag = m.train_iteration()
    assert ctx.counters.env_steps == 200 and m.buffer.size == n0 + 200 and ctx.counters.grad_updates == 50
    mask = m.buffer.data["mask"][n0:m.buffer.size].numpy()
    fell = np.abs(m.buffer.data["next_obs"][n0:m.buffer.size, 1].numpy()) > 0.2  # InvertedPendulum's terminal
    assert np.array_equal(mask == 0, fell)
    assert 0 < fell.sum() < diag["explore_episodes"]  # some episodes ended by the time limit: mask stays 1
    # InvertedPendulum-v5 pays 1 per step and 0 on the step that drops the pole; stored raw next to the
    # normalised dataset rewards, as the reference (train_finetune.py:123) ...
    assert m.reward_scale != 1.0 and m.cfg.online_reward_scale == "raw"
    assert np.array_equal(m.buffer.data["rew"][n0:m.buffer.size].numpy(), mask)
    # ... or scaled like the dataset (online_reward_scale: offline)
    m = IQL(small_cfg(offline_updates=0, env_steps_per_iteration=200, utd=0.25, online_reward_scale="offline"), ctx)
    m.train_iteration()
    mask = m.buffer.data["mask"][n0:m.buffer.size].numpy()
    assert np.allclose(m.buffer.data["rew"][n0:m.buffer.size].numpy(), m.reward_scale * mask)


def test_reward_scale_and_ring_buffer():
    task = get_task("pendulum-random")
    ds = pd_dataset(task, 4, noise=1.0, next_obs=False)
    r = ds.returns()
    assert reward_scale(ds, "minmax") == pytest.approx(1000.0 / (r.max() - r.min()))
    assert reward_scale(ds, "none") == 1.0
    buf = ReplayBuffer(2, 1, torch.device("cpu"), capacity=4)
    for i in range(3):
        buf.add(obs=np.full((2, 2), i), act=np.zeros((2, 1)), rew=np.full(2, i), next_obs=np.zeros((2, 2)),
                mask=np.ones(2))
    assert buf.size == 4 and buf.wrapped and sorted(buf.data["rew"].tolist()) == [1, 1, 2, 2]


# --- the harness: a run, its outputs, resume -----------------------------------------------------------


def test_finetune_smoke_run_writes_documented_outputs(tmp_path, monkeypatch):
    task = get_task("pendulum-medium")
    ds = pd_dataset(task, 8, noise=0.8)
    # Hand the in-memory dataset to finetune, whatever dtrl.data.sources holds.
    sources = types.ModuleType("dtrl.data.sources")
    sources.load_task_dataset = lambda exp, t, reference_keeps_tail=False: ds
    monkeypatch.setitem(sys.modules, "dtrl.data.sources", sources)
    exp = load_config(None, {
        "results": str(tmp_path), "device": "cpu", "grid": {"methods": ["iql_small"], "tasks": ["pendulum-medium"]},
        "eval": {"episodes": 2, "final_episodes": 2},
        "online": {"env_steps": 300, "eval_every_env_steps": 200, "progress": False},
        "methods": {"iql_small": {"algo": "iql", "hidden_dims": [32, 32], "batch_size": 32, "offline_updates": 200,
                                  "offline_updates_per_iteration": 100, "env_steps_per_iteration": 100, "n_envs": 2,
                                  "offline_eval_episodes": 2}}})
    s = finetune(exp, "iql_small", "pendulum-medium", 0)
    run = tmp_path / "runs/iql_small/pendulum-medium/seed0"
    assert (run / "summary.json").exists() and set(SUMMARY_KEYS) <= set(s)
    assert s["env_steps"] == 300 and s["iterations"] == 5
    assert s["grad_updates"] == 200 + 300  # offline, then utd 1 online
    assert s["step_counts"] == {"offline_updates": 200, "online_updates": 300}
    rows = list(csv.DictReader(open(run / "progress.csv")))
    assert list(rows[0])[:len(CORE_COLUMNS)] == CORE_COLUMNS
    assert set(DIAG_COLUMNS + ["explore_return", "offline_eval_return", "offline_eval_norm_return"]) <= set(rows[0])
    assert [r["phase"] for r in rows[:-1]] == ["0", "0", "1", "1", "1"]
    assert [int(r["env_steps"]) for r in rows[:-1]] == [0, 0, 100, 200, 300]
    assert rows[1]["offline_eval_return"] != "" and rows[1]["updates_offline"] == "200"
    assert rows[-2]["updates_online"] == "300" and rows[-1]["final"] == "1"
    assert all(np.isfinite(float(rows[-2][k])) for k in DIAG_COLUMNS)


class Killed(Exception):
    pass


def _run(tmp_path, ds, task, kill_at=None):
    ctx = build_context(task, 3, torch.device("cpu"), ds, None, tmp_path, EvalConfig(episodes=1, final_episodes=2))
    m = IQL(small_cfg(offline_updates=60, offline_updates_per_iteration=20, env_steps_per_iteration=30), ctx)
    if kill_at is not None:
        original = m.train_iteration

        def train_iteration():
            if ctx.counters.iterations + 1 == kill_at:
                raise Killed
            return original()

        m.train_iteration = train_iteration
    online = OnlineConfig(env_steps=90, eval_every_env_steps=30, progress=False)
    try:
        return run_online(m, ctx, online, {"method": "iql", "algo": "iql", "task": task.name, "seed": 3}), m
    except Killed:
        return None, m


def test_resume_after_kills_matches_uninterrupted_run(tmp_path):
    task = with_overrides(get_task("pendulum-medium"), max_episode_steps=50)
    ds = pd_dataset(task, 6, noise=0.8)
    ref, ref_m = _run(tmp_path / "ref", ds, task)
    assert ref["iterations"] == 6 and ref["grad_updates"] == 60 + 90
    # Killed in the offline phase (iteration 2), then in the online phase (iteration 5), each resumed.
    out = tmp_path / "resumed"
    assert _run(out, ds, task, kill_at=2)[0] is None
    assert _run(out, ds, task, kill_at=5)[0] is None
    got, got_m = _run(out, ds, task)
    for k in ("final_returns", "env_steps", "env_steps_eval", "grad_updates", "iterations", "step_counts"):
        assert got[k] == ref[k], k
    for a, b in zip(ref_m.learner.state_dict().values(), got_m.learner.state_dict().values()):
        assert torch.equal(a, b)
    cols = DIAG_COLUMNS + ["env_steps", "explore_return", "eval_return", "buffer_size"]
    ref_rows = list(csv.DictReader(open(tmp_path / "ref/progress.csv")))
    got_rows = list(csv.DictReader(open(out / "progress.csv")))
    assert [[r.get(c) for c in cols] for r in got_rows] == [[r.get(c) for c in cols] for r in ref_rows]


# --- learning ------------------------------------------------------------------------------------------


def test_offline_iql_learns_pendulum_from_noisy_pd_data(tmp_path):
    task = with_overrides(get_task("pendulum-medium"), max_episode_steps=200)
    ds = pd_dataset(task, 20, noise=0.6)
    assert ds.returns().mean() < 170  # the noisy controller often drops the pole
    ctx = build_context(task, 0, torch.device("cpu"), ds, None, tmp_path, EvalConfig(episodes=1, final_episodes=1))
    m = IQL(IQLConfig(hidden_dims=[64, 64], batch_size=128, offline_updates=2000,
                      offline_updates_per_iteration=1000, offline_eval_episodes=10), ctx)
    m.train_iteration()
    diag = m.train_iteration()
    print(f"offline IQL on noisy-PD pendulum data: eval return {diag['offline_eval_return']:.1f} "
          f"(data mean {ds.returns().mean():.1f}, random 5.6, max 200)")
    assert ctx.counters.env_steps == 0 and ctx.counters.grad_updates == 2000
    assert diag["offline_eval_return"] > 150
