"""GRPO-DT, QGRPO and PPO-DT: ratios, advantages, active sampling, dropout, budgets, and smoke runs."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from dtrl.config import from_dict
from dtrl.harness.critic import TrajectoryBuffer, final_rtg
from dtrl.config.experiment import load_config
from dtrl.workflow.finetune import finetune
from dtrl.methods.grpo import (GRPO, approx_kl, group_advantages, last_slot_dist, minibatch_log_ratios, relabel_contexts,
                       selection_probs)
from dtrl.util.logger import CORE_COLUMNS, SUMMARY_KEYS
from dtrl.harness.online import build_context
from dtrl.config.online import EvalConfig
from dtrl.methods.ppo_dt import PPODT, gae
from dtrl.methods.qgrpo import QGRPO
from dtrl.harness.rollout import RolloutEngine, Start, collect_episodes, context_at
from dtrl.tasks import get_task, with_overrides

from helpers import tiny_dt, write_pretrained

SMALL_GRPO = dict(group_size=4, reset_points=4, traj_len=5, eval_len=10, explore_episodes=2, minibatch_size=4,
                  epochs=2)


def make_method(cls, tmp_path, task_name="hopper-medium", task=None, model=None, seed=0, **params):
    task = task or get_task(task_name)
    model = model or tiny_dt(task_name)
    path = write_pretrained(tmp_path / "model.pt", model, task_name)
    ctx = build_context(task, seed, torch.device("cpu"), None, path, tmp_path / "run", EvalConfig())
    return cls(from_dict(cls.Config, params), ctx)


# -- ratios -----------------------------------------------------------------------------------------

def test_first_minibatch_ratios_are_one_without_relabel_and_not_with(tmp_path):
    g = make_method(GRPO, tmp_path, **SMALL_GRPO)
    d = g.train_iteration()
    assert g.first_minibatch_ratios is not None and len(g.first_minibatch_ratios) == 4
    np.testing.assert_allclose(g.first_minibatch_ratios, 1.0, atol=1e-5)
    assert d["ratio_first_absdev"] < 1e-5

    # Relabeled RTGs in the learner's contexts against log-probs recorded under the rollout RTG.
    r = make_method(GRPO, tmp_path, relabel=True, **SMALL_GRPO)
    d = r.train_iteration()
    assert d["ratio_first_absdev"] > 1e-3
    assert np.abs(r.first_minibatch_ratios - 1.0).max() > 1e-3


def test_every_method_starts_at_ratio_one(tmp_path):
    # float32 rounding of log-probs: a fresh DT (ODT's init, log-stds anywhere in [-5, 2]) gives some
    # |log p| ~ 1e2, so exp of a rounding-level difference is ~1e-5 from 1; relabeling moves it > 1e-3.
    q = make_method(QGRPO, tmp_path, explore_episodes=2, critic_warmup_updates=0, states_per_iteration=6,
                    group_size=3, critic_batch_size=16, critic_hidden=[16], minibatch_size=6)
    assert q.train_iteration()["ratio_first_absdev"] < 1e-4
    p = make_method(PPODT, tmp_path, explore_episodes=2, minibatch_size=16, value_hidden=[16])
    assert p.train_iteration()["ratio_first_absdev"] < 1e-4
    p = make_method(PPODT, tmp_path, explore_episodes=2, minibatch_size=16, value_hidden=[16], relabel=True)
    assert p.train_iteration()["ratio_first_absdev"] > 1e-3


def test_sequence_log_ratio_is_the_sum_of_per_step_log_ratios(tmp_path):
    g = make_method(GRPO, tmp_path, **SMALL_GRPO)
    batch, _ = g.collect()
    with torch.no_grad():  # move the policy away from pi_old so the log-ratios are not all zero
        for p in g.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    units = torch.arange(batch.n_units)
    with torch.no_grad():
        seq, adv_seq, tok_lr, _ = minibatch_log_ratios(g.model, batch, units, "sequence")
        tok, adv_tok, _, _ = minibatch_log_ratios(g.model, batch, units, "token")
    assert seq.shape == (batch.n_units,) and tok.shape == (batch.n_tokens,)
    sums = torch.zeros(batch.n_units, dtype=torch.float64).index_add(0, batch.unit, tok.double())
    np.testing.assert_allclose(seq.numpy(), sums.numpy(), rtol=1e-5, atol=1e-5)
    assert seq.abs().max() > 1e-3
    np.testing.assert_array_equal(adv_tok.numpy(), adv_seq[batch.unit].numpy())
    # Per-step log-ratios, recomputed one context at a time, independently of the batching code.
    ctx = batch.contexts
    for n in range(batch.n_tokens):
        with torch.no_grad():
            d = last_slot_dist(g.model, {k: v[n:n + 1] for k, v in ctx.items()})
            lp = d.log_prob(batch.actions[n:n + 1])[0]
        # float32 rounding, relative to |log p|: a fresh DT (ODT's init) has dims with std ~e^-5 whose
        # log-density turns a rounding-level change of the mean into ~1e-6 |log p| (|log p| up to ~1e2)
        assert abs((lp - batch.logp_old[n]).item() - tok[n].item()) < 1e-4 + 1e-5 * abs(lp.item())


def test_group_advantages_are_standardised_within_each_group():
    rng = np.random.default_rng(0)
    r = rng.normal(100, 30, size=(5, 8))
    r[3] = 42.0  # zero spread: teaches nothing
    adv, flat = group_advantages(r)
    assert flat.tolist() == [False, False, False, True, False]
    live = adv[~flat]
    np.testing.assert_allclose(live.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(live.std(axis=1), 1.0, atol=1e-6)
    assert (adv[3] == 0.0).all()
    # order within a group is kept: the best member has the largest advantage
    assert (np.argsort(adv[0]) == np.argsort(r[0])).all()


def test_approx_kl_estimator():
    lr = torch.tensor([0.0, 0.0])
    assert approx_kl(lr).item() == 0.0
    lr = torch.tensor([0.1, -0.2])
    assert approx_kl(lr).item() == pytest.approx(np.mean((np.exp([0.1, -0.2]) - 1) - np.array([0.1, -0.2])), rel=1e-5)


# -- active sampling --------------------------------------------------------------------------------

def test_active_sampling_prefers_high_variance_states(tmp_path):
    var = np.full(100, 0.01)
    var[::10] = 1.0  # 10 uncertain states among 100
    high = var > 0.5
    p = selection_probs(var, "variance", 1.0)
    assert p.sum() == pytest.approx(1.0) and p[high].sum() > 0.9
    np.testing.assert_allclose(selection_probs(var, "uniform", 1.0), 0.01)
    assert selection_probs(var, "variance", 100.0)[high].sum() < 0.2  # hot temperature: near uniform

    g = make_method(GRPO, tmp_path, **SMALL_GRPO)
    picks = {}
    for mode in ("variance", "uniform"):
        idx = np.concatenate([g.draw_states(var, 5, mode, 1.0) for _ in range(200)])
        picks[mode] = high[idx].mean()
    assert picks["variance"] > 0.6 and picks["uniform"] < 0.3


def test_reset_points_follow_the_policy_variance(tmp_path):
    g = make_method(GRPO, tmp_path, **SMALL_GRPO | {"reset_points": 8, "explore_episodes": 4})
    means = [g.collect()[1] for _ in range(3)]
    assert np.mean([d["reset_var_mean"] for d in means]) > np.mean([d["candidate_var_mean"] for d in means])


def test_mean_action_exploration_follows_the_evaluated_policy(tmp_path):
    # explore_actions: mean draws reset points along the mean-action path evaluation plays: no sampled
    # step, the same episode for the same env seed; sampled exploration differs between two plays.
    def play(g):
        g.ctx.np_rng = np.random.default_rng(5)
        return g.explore(record_contexts=False, sample=g.cfg.explore_actions == "sample")[0]

    m = make_method(GRPO, tmp_path, explore_actions="mean", **SMALL_GRPO)
    a, b = play(m), play(m)
    assert all(not t.sampled.any() for t in a) and len(a) == SMALL_GRPO["explore_episodes"]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.actions, y.actions)
    assert m.train_iteration()["ratio_first_absdev"] < 1e-5  # the groups still sample: ratio 1 on-policy

    s = make_method(GRPO, tmp_path, **SMALL_GRPO)
    a, b = play(s), play(s)
    assert all(t.sampled.all() for t in a)
    assert any(len(x) != len(y) or not np.array_equal(x.actions, y.actions) for x, y in zip(a, b))


# -- dropout and context length: behaviour policy == learner ----------------------------------------

def test_dropout_off_makes_learner_and_behaviour_policy_identical(tmp_path):
    pretrained = tiny_dt(dropout=0.3)  # pretrained with dropout, as ODT does
    g = make_method(GRPO, tmp_path, model=pretrained, **SMALL_GRPO)  # default dropout: 0.0
    assert all(m.p == 0.0 for m in g.model.modules() if isinstance(m, torch.nn.Dropout))
    g.train_iteration()
    np.testing.assert_allclose(g.first_minibatch_ratios, 1.0, atol=1e-5)

    # Keeping the pretrained rate (dropout: null) makes the learner (train mode) a different policy.
    k = make_method(GRPO, tmp_path, model=tiny_dt(dropout=0.3), dropout=None, **SMALL_GRPO)
    assert k.train_iteration()["ratio_first_absdev"] > 1e-3


def test_learner_uses_the_rollout_context_length(tmp_path):
    g = make_method(GRPO, tmp_path, model=tiny_dt(context_len=6, eval_context_len=2), rollout_context_len=3,
                    **SMALL_GRPO)
    batch, _ = g.collect()
    assert batch.contexts["states"].shape[1] == 3 and g.k == 3
    with torch.no_grad():
        d = last_slot_dist(g.model, batch.contexts)
        np.testing.assert_allclose(d.log_prob(batch.actions).numpy(), batch.logp_old.numpy(), atol=1e-5)
    g.policy_update(batch, "sequence")
    np.testing.assert_allclose(g.first_minibatch_ratios, 1.0, atol=1e-5)


def test_relabeled_rtg_is_the_return_achieved_from_each_step(tmp_path):
    g = make_method(GRPO, tmp_path, relabel=True, **SMALL_GRPO)
    explore, _ = g.explore(record_contexts=False)
    (m,) = g.engine.run(g.model, [Start(traj=explore[0], t=2)], sample_steps=3, max_steps=8, record_contexts=True,
                        context_len=g.k)
    rel = relabel_contexts({k: m.contexts[k] for k in m.contexts}, final_rtg(m))
    for t in range(len(m)):
        assert rel["rtg"][t, -1] == pytest.approx(m.rewards[t:].sum(), abs=1e-3)
        assert (rel["rtg"][t][~m.contexts["mask"][t]] == 0).all()
    # the context's pre-reset history is relabeled with the same hindsight (prefix rewards + member return)
    full = np.concatenate([explore[0].rewards[:2], m.rewards])
    assert rel["rtg"][0, -2] == pytest.approx(full[1:].sum(), abs=1e-3)


# -- budget accounting ------------------------------------------------------------------------------

def test_step_and_update_accounting_adds_up(tmp_path):
    g = make_method(GRPO, tmp_path, **SMALL_GRPO)
    c = g.ctx.counters
    calls = []
    run = g.engine.run

    def spy(model, starts, sample_steps, **kw):
        out = run(model, starts, sample_steps, **kw)
        calls.append((sample_steps, kw.get("sample_all", False), out))
        return out

    g.engine.run = spy
    g.train_iteration()
    explore = [t for s, all_, out in calls if all_ for t in out]
    members = [t for s, all_, out in calls if not all_ for t in out]
    assert len(explore) == 2 and len(members) == 16
    assert c.extra["explore"] == sum(len(t) for t in explore)
    assert c.extra["sampled"] == sum(min(len(m), 5) for m in members) == sum(int(m.sampled.sum()) for m in members)
    assert c.extra["scoring"] == sum(len(m) for m in members) - c.extra["sampled"]
    assert c.env_steps == c.extra["explore"] + c.extra["sampled"] + c.extra["scoring"]
    assert all(len(m) <= 15 for m in members)
    assert c.grad_updates == 2 * math.ceil(16 / 4)  # epochs x minibatches
    assert c.env_steps_eval == 0  # evaluation is the harness's


def test_qgrpo_counts_critic_and_policy_updates(tmp_path):
    q = make_method(QGRPO, tmp_path, explore_episodes=2, critic_warmup_updates=10_000, critic_updates_per_step=0.5,
                    critic_batch_size=16, critic_hidden=[16], states_per_iteration=6, group_size=3, minibatch_size=6)
    d = q.train_iteration()  # still warming up: critic only
    c = q.ctx.counters
    assert d["iter_policy_updates"] == c.policy_updates == c.grad_updates == 0
    assert c.critic_updates == d["iter_critic_updates"] == c.env_steps // 2
    assert c.env_steps == c.extra["explore"]


# -- smoke runs through `dtrl finetune` --------------------------------------------------------------

DIAG_COLUMNS = ["ratio_mean", "ratio_max", "ratio_min", "clip_frac", "approx_kl", "entropy", "policy_loss",
                "adv_mean", "adv_std", "grad_norm", "explore_return", "steps_explore"]
GRPO_COLUMNS = ["group_return_mean", "group_return_std", "zero_spread_frac", "reset_var_mean", "candidate_var_mean",
                "steps_sampled", "steps_scoring"]


@pytest.mark.parametrize("method", ["grpo", "qgrpo", "ppo_dt"])
def test_smoke_run_writes_csv_and_summary(tmp_path, method):
    params = {"grpo": dict(SMALL_GRPO),
              "qgrpo": dict(explore_episodes=2, critic_warmup_updates=30, states_per_iteration=8, group_size=4,
                            critic_batch_size=32, critic_hidden=[32, 32], minibatch_size=16),
              "ppo_dt": dict(explore_episodes=2, minibatch_size=16, value_hidden=[32, 32])}[method]
    exp = load_config(None, {
        "results": str(tmp_path), "device": "cpu", "grid": {"methods": ["m"], "tasks": ["hopper-medium"]},
        "eval": {"episodes": 2, "final_episodes": 2},
        "online": {"env_steps": 300, "eval_every_env_steps": 150, "progress": False},
        "methods": {"m": {"algo": method, **params}}})
    write_pretrained(tmp_path / "pretrain/hopper-medium/seed0/model.pt", tiny_dt())
    s = finetune(exp, "m", "hopper-medium", 0)
    run = tmp_path / "runs/m/hopper-medium/seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert s["env_steps"] >= 300 and s["grad_updates"] > 0
    assert sum(s["step_counts"].values()) == s["env_steps"]
    rows = list(csv.DictReader(open(run / "progress.csv")))
    cols = list(rows[0])
    assert cols[:len(CORE_COLUMNS)] == CORE_COLUMNS
    want = DIAG_COLUMNS + (GRPO_COLUMNS if method == "grpo" else [])
    assert set(want) <= set(cols), set(want) - set(cols)
    trained = [r for r in rows if not r["final"] and r["iter_policy_updates"] not in ("", "0")]
    assert trained and all(math.isfinite(float(r["ratio_mean"])) for r in trained)


def test_grpo_refuses_tasks_that_cannot_be_reset_and_qgrpo_runs_there(tmp_path):
    task = with_overrides(get_task("hopper-medium"), resettable=False)
    with pytest.raises(ValueError, match="qgrpo"):
        make_method(GRPO, tmp_path, task=task, **SMALL_GRPO)
    q = make_method(QGRPO, tmp_path, task=task, explore_episodes=2, critic_warmup_updates=0, states_per_iteration=4,
                    group_size=3, critic_batch_size=16, critic_hidden=[16], minibatch_size=4)
    q.engine.restore = None  # QGRPO never restores a simulator state
    assert q.train_iteration()["iter_policy_updates"] > 0


def test_grpo_resumes_exactly(tmp_path):
    def exp(budget):
        return load_config(None, {
            "results": str(tmp_path), "device": "cpu", "grid": {"methods": ["m"], "tasks": ["hopper-medium"]},
            "eval": {"episodes": 1, "final_episodes": 2},
            "online": {"env_steps": budget, "eval_every_env_steps": 10_000, "progress": False},
            "methods": {"m": {"algo": "grpo", **SMALL_GRPO}}})

    write_pretrained(tmp_path / "pretrain/hopper-medium/seed0/model.pt", tiny_dt())
    whole = finetune(exp(400), "m", "hopper-medium", 0, out=tmp_path / "whole")
    finetune(exp(150), "m", "hopper-medium", 0, out=tmp_path / "cut")
    (tmp_path / "cut/summary.json").unlink()  # as if killed after its last checkpoint
    resumed = finetune(exp(400), "m", "hopper-medium", 0, out=tmp_path / "cut",
                       allow_config_change=True)  # the longer budget is a config change
    for k in ("env_steps", "grad_updates", "iterations", "final_returns"):
        assert whole[k] == resumed[k], k


# -- pieces of the critics --------------------------------------------------------------------------

def test_buffer_rebuilds_the_recorded_contexts():
    task = get_task("hopper-medium")
    model = tiny_dt().eval()
    eng = RolloutEngine(task, 3, model.cfg.context_len, seed=0)
    trajs = collect_episodes(eng, model, 3, 3600.0, seeds=[0, 1, 2], record_contexts=True, context_len=3)
    buf = TrajectoryBuffer(10_000, 3)
    for tr in trajs:
        buf.add(tr, eng.obs[0])
    start = 0
    for tr in trajs:
        ctx = buf.contexts(start + np.arange(len(tr)))
        for k in tr.contexts:
            np.testing.assert_array_equal(ctx[k], tr.contexts[k], err_msg=k)
        start += len(tr) + 1
    b = buf.sample(64, np.random.default_rng(0))
    assert b["next_ctx"]["states"].shape == (64, 3, task_obs_dim(trajs))
    np.testing.assert_array_equal(b["next_ctx"]["states"][:, -1], b["next_obs"])


def task_obs_dim(trajs):
    return trajs[0].observations.shape[1]


def test_gae_terminal_versus_timeout():
    r, v = np.array([1.0, 1.0, 1.0]), np.array([0.5, 0.5, 0.5])
    adv, ret = gae(r, v, next_value=10.0, terminal=True, gamma=0.9, lam=1.0)
    np.testing.assert_allclose(ret, [1 + 0.9 + 0.81, 1 + 0.9, 1.0])
    adv, ret = gae(r, v, next_value=10.0, terminal=False, gamma=0.9, lam=1.0)  # timeout: bootstrap
    np.testing.assert_allclose(ret, [1 + 0.9 + 0.81 + 0.729 * 10, 1 + 0.9 + 0.81 * 10, 1 + 9.0])
    adv, ret = gae(r, v, next_value=10.0, terminal=False, gamma=0.9, lam=0.0)  # one-step TD
    np.testing.assert_allclose(ret, [1 + 0.45, 1 + 0.45, 1 + 9.0])


def test_context_at_with_a_shorter_context_than_the_engine():
    # Regression: context_at indexed a restored trajectory's start_context by the requested K instead of
    # its own (the engine's) length, so contexts shorter than the engine's were wrong before the reset point.
    model = tiny_dt(context_len=6).eval()
    eng = RolloutEngine(get_task("hopper-medium"), 1, 6, seed=0)
    (tr,) = eng.run(model, [Start(target_rtg=3600.0, seed=5)], sample_steps=0, max_steps=30, record_sim_states=True)
    (again,) = eng.run(model, [Start(traj=tr, t=8)], sample_steps=0, max_steps=5, record_contexts=True,
                       context_len=3)
    for t in range(len(again)):
        ctx = context_at(again, t, 3)
        for k in ctx:
            np.testing.assert_array_equal(ctx[k], again.contexts[k][t], err_msg=f"{k} {t}")


def test_zero_spread_groups_are_left_out_of_the_update(tmp_path, monkeypatch):
    import dtrl.methods.grpo as grpo_mod

    g = make_method(GRPO, tmp_path, **SMALL_GRPO)
    real = grpo_mod.group_advantages

    def one_flat_group(returns, *a):  # pretend the first group's members all scored the same
        adv, flat = real(returns, *a)
        adv[0], flat[0] = 0.0, True
        return adv, flat

    monkeypatch.setattr(grpo_mod, "group_advantages", one_flat_group)
    batch, diag = g.collect()
    G, M = g.cfg.group_size, g.cfg.reset_points
    assert batch.n_units == (M - 1) * G and diag["zero_spread_frac"] == pytest.approx(1 / M)

    monkeypatch.setattr(grpo_mod, "group_advantages", lambda r, *a: (np.zeros_like(r), np.ones(len(r), bool)))
    steps, updates = g.ctx.counters.env_steps, g.ctx.counters.grad_updates
    d = g.train_iteration()
    assert d["iter_policy_updates"] == 0 and g.ctx.counters.grad_updates == updates
    assert g.ctx.counters.env_steps > steps


def test_all_zero_spread_warns_once_on_the_terminal(tmp_path, monkeypatch, capsys):
    import dtrl.methods.grpo as grpo_mod

    g = make_method(GRPO, tmp_path, **SMALL_GRPO)
    g.collect()
    assert "zero return spread" not in capsys.readouterr().err  # spread somewhere: nothing to say
    monkeypatch.setattr(grpo_mod, "group_advantages", lambda r, *a: (np.zeros_like(r), np.ones(len(r), bool)))
    g.train_iteration()
    err = capsys.readouterr().err
    assert err.count("dtrl: warning:") == 1 and f"all {g.cfg.reset_points} groups had zero return spread" in err
    g.train_iteration()
    assert "zero return spread" not in capsys.readouterr().err  # once per run
