"""GRPO-DT's protocol (issue 9): the evaluation RTG, the length-normalised ratio, both relabel readings,
the clip and gradient fractions per epoch, and active sampling on the squashed action."""

import csv
import json

import numpy as np
import pytest
import torch

from dtrl.config import ConfigError, from_dict
from dtrl.config.experiment import load_config
from dtrl.workflow.finetune import finetune
from dtrl.methods.grpo import GRPO, carries_gradient, minibatch_log_ratios, selection_probs
from dtrl.report.runs import Run
from dtrl.report.tables import eval_rtg_note
from dtrl.harness.rollout import squashed_variance

from helpers import tiny_dt, write_pretrained
from test_grpo import SMALL_GRPO, make_method


def _run(tmp_path, params, eval_cfg=None):
    exp = load_config(None, {
        "results": str(tmp_path), "device": "cpu", "grid": {"methods": ["m"], "tasks": ["hopper-medium"]},
        "eval": {"episodes": 2, "final_episodes": 2, **(eval_cfg or {})},
        "online": {"env_steps": 200, "eval_every_env_steps": 100, "progress": False},
        "methods": {"m": {"algo": "grpo", **SMALL_GRPO, **params}}})
    write_pretrained(tmp_path / "pretrain/hopper-medium/seed0/model.pt", tiny_dt())
    finetune(exp, "m", "hopper-medium", 0)
    run = tmp_path / "runs/m/hopper-medium/seed0"
    rows = [r for r in csv.DictReader(open(run / "progress.csv")) if r["eval_return"] != ""]
    return rows, json.loads((run / "summary.json").read_text())


# -- 1. the evaluation RTG --------------------------------------------------------------------------

def test_evaluation_rows_record_the_rtg_and_grpo_is_evaluated_where_it_explores(tmp_path):
    g = make_method(GRPO, tmp_path, **SMALL_GRPO)
    explore, _ = g.explore(record_contexts=False)
    assert all(t.policy_rtg[0] == np.float32(g.train_rtg()) for t in explore)
    assert g.eval_rtg() == g.train_rtg() == g.ctx.task.eval_rtg  # the default: rtg eval, eval_at train

    rows, summary = _run(tmp_path / "a", {})
    assert len(rows) >= 2 and rows[-1]["final"] == "1"
    assert {float(r["eval_rtg"]) for r in rows} == {g.train_rtg()}
    assert summary["eval_rtg"] == g.train_rtg() and summary["eval_rtg_rule"] == "train:eval_rtg"

    # explored at the online target: evaluated there too, unless asked for the task's rule
    task = g.ctx.task
    rows, summary = _run(tmp_path / "b", {"rtg": "online"})
    assert {float(r["eval_rtg"]) for r in rows} == {task.online_rtg} and summary["eval_rtg"] == task.online_rtg
    rows, summary = _run(tmp_path / "c", {"rtg": "online", "eval_at": "task"})
    assert {float(r["eval_rtg"]) for r in rows} == {task.eval_rtg}
    assert summary["eval_rtg_rule"] == "task:eval_rtg"
    rows, summary = _run(tmp_path / "d", {}, {"rtg": 1234.0})  # an explicit eval.rtg wins
    assert summary["eval_rtg"] == 1234.0 and summary["eval_rtg_rule"] == "eval.rtg"


# -- 2. the length-normalised ratio and its trust region ----------------------------------------------

def test_geometric_ratio_is_the_mean_per_step_log_ratio_and_one_on_policy(tmp_path):
    g = make_method(GRPO, tmp_path, **SMALL_GRPO, ratio="geometric")
    batch, _ = g.collect()
    units = torch.arange(batch.n_units)
    with torch.no_grad():
        on_policy, _, _, _ = minibatch_log_ratios(g.model, batch, units, "geometric")
    # same function, same contexts: 1 up to float32 rounding of differently sized batches (a fresh DT with
    # ODT's init has |log p| up to ~1e2, so that rounding reaches a few 1e-6)
    np.testing.assert_allclose(on_policy.exp().numpy(), 1.0, rtol=0, atol=1e-5)
    with torch.no_grad():
        for p in g.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        geo, _, tok, _ = minibatch_log_ratios(g.model, batch, units, "geometric")
        seq, _, _, _ = minibatch_log_ratios(g.model, batch, units, "sequence")
    for u in range(batch.n_units):
        mine = tok[batch.unit == u].double()
        assert 1 <= len(mine) <= SMALL_GRPO["traj_len"]  # fewer where a terminal cut the member
        assert geo[u].exp().item() == pytest.approx(mine.mean().exp().item(), rel=1e-5)
        assert seq[u].item() == pytest.approx(geo[u].item() * len(mine), rel=1e-4, abs=1e-5)
    assert geo.abs().max() > 1e-4


def test_clip_range_per_ratio_kind_and_the_units_that_carry_gradient(tmp_path):
    cfg = from_dict(GRPO.Config, {"clip_eps": 0.3, "clip_eps_per_ratio": {"geometric": 0.02}})
    assert cfg.clip_for("sequence") == cfg.clip_for("token") == 0.3 and cfg.clip_for("geometric") == 0.02
    with pytest.raises(ConfigError, match="clip_eps_per_ratio"):
        from_dict(GRPO.Config, {"clip_eps_per_ratio": {"seq": 0.1}})
    rho = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.0, 1.1])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0, 1.0])
    # clipped on the side the advantage pushes: no gradient; A = 0: none either
    assert carries_gradient(rho, adv, 0.2).tolist() == [False, True, True, False, False, True]

    n_units = SMALL_GRPO["group_size"] * SMALL_GRPO["reset_points"]
    # one minibatch per epoch, so all of epoch 1 is on-policy (ratio exactly 1: nothing clipped)
    g = make_method(GRPO, tmp_path, **SMALL_GRPO | {"epochs": 3, "minibatch_size": n_units})
    d = g.train_iteration()
    assert d["clip_frac_epoch1"] == 0.0 and d["grad_frac_epoch1"] == 1.0  # on-policy, no zero advantage
    assert {f"clip_frac_epoch{e}" for e in (1, 2, 3)} <= set(d) and "clip_frac_epoch4" not in d
    n_units = SMALL_GRPO["group_size"] * SMALL_GRPO["reset_points"]
    assert 0 < d["grad_units"] <= 3 * n_units
    assert d["grad_frac"] == pytest.approx(d["grad_units"] / (3 * n_units))
    assert d["clip_frac"] == pytest.approx(np.mean([d[f"clip_frac_epoch{e}"] for e in (1, 2, 3)]))


# -- 3. both relabel readings -----------------------------------------------------------------------

def test_relabel_both_starts_at_ratio_one_and_learner_does_not(tmp_path):
    both = make_method(GRPO, tmp_path, **SMALL_GRPO, relabel="both")
    d = both.train_iteration()
    # 1 up to float32 rounding (|log p| up to ~1e2 for a fresh DT with ODT's init); relabeling moves it > 1e-3
    np.testing.assert_allclose(both.first_minibatch_ratios, 1.0, rtol=0, atol=1e-5)
    assert d["ratio_first_absdev"] <= 1e-5
    learner = make_method(GRPO, tmp_path, **SMALL_GRPO, relabel="learner")
    d = learner.train_iteration()
    assert d["ratio_first_absdev"] > 1e-3 and d["log_ratio_absmax"] > 1e-3  # unclamped log-ratio logged
    # the log-ratio distribution is logged in order, inside the largest |log ratio|
    assert d["log_ratio_q05"] <= d["log_ratio_q50"] <= d["log_ratio_q95"]
    assert max(abs(d["log_ratio_q05"]), abs(d["log_ratio_q95"])) <= d["log_ratio_absmax"]
    assert d["log_ratio_q95"] - d["log_ratio_q05"] > 0
    # the old spelling still means the learner-only reading
    assert from_dict(GRPO.Config, {"relabel": True}).relabel_mode == "learner"
    assert from_dict(GRPO.Config, {"relabel": False}).relabel_mode == "none"
    with pytest.raises(ConfigError, match="relabel"):
        from_dict(GRPO.Config, {"relabel": "sometimes"})


# -- 4. active sampling on the action the env receives -------------------------------------------------

def test_squashed_variance_prefers_states_where_the_executed_action_varies():
    # state 0: mean 0, std 0.5, tanh near linear; state 1: mean 4, std 1, wider Gaussian but saturated
    mean = torch.tensor([[0.0], [4.0]])
    std = torch.tensor([[0.5], [1.0]])
    sv = squashed_variance(mean, std)[:, 0].double().numpy()
    pre = (std ** 2)[:, 0].double().numpy()
    assert pre[1] > pre[0] and sv[0] > 5 * sv[1]
    assert selection_probs(pre, "variance", 1.0).argmax() == 1
    assert selection_probs(sv, "squashed_variance", 1.0).argmax() == 0
    # the quadrature agrees with adaptive integration of Var[tanh(u)]
    from scipy import integrate

    for k, (m, s) in enumerate([(0.0, 0.5), (4.0, 1.0)]):
        def moment(p):
            return integrate.quad(lambda u: np.tanh(u) ** p * np.exp(-(u - m) ** 2 / (2 * s * s)), -40, 40,
                                  limit=200)[0] / (np.sqrt(2 * np.pi) * s)
        assert sv[k] == pytest.approx(moment(2) - moment(1) ** 2, rel=1e-3, abs=1e-6)


def test_reset_points_can_be_weighted_by_the_squashed_variance(tmp_path):
    g = make_method(GRPO, tmp_path, **SMALL_GRPO | {"reset_points": 8, "explore_episodes": 4,
                                                    "reset_sampling": "squashed_variance"})
    explore, _ = g.explore(record_contexts=False)
    assert all(t.squashed_var.shape == t.action_var.shape and (t.squashed_var >= 0).all() for t in explore)
    assert all((t.squashed_var <= 1.0).all() for t in explore)  # a tanh action's variance is at most 1
    w = g.candidate_weights(explore, "squashed_variance")
    np.testing.assert_array_equal(w, np.concatenate([t.squashed_var for t in explore]))
    means = [g.collect()[1] for _ in range(3)]
    assert np.mean([d["reset_var_mean"] for d in means]) > np.mean([d["candidate_var_mean"] for d in means])


def test_the_report_says_when_methods_are_evaluated_at_different_rtgs(tmp_path):
    exp = load_config(None, {"grid": {"methods": ["grpo", "odt", "iql"], "tasks": ["hopper-medium"]}})

    def run(m, rtg, rule):
        return Run(m, "hopper-medium", 0, {"eval_rtg": rtg, "eval_rtg_rule": rule}, tmp_path)
    same = {("grpo", "hopper-medium", 0): run("grpo", 3600.0, "train:eval_rtg"),
            ("odt", "hopper-medium", 0): run("odt", 3600.0, "task:eval_rtg"),
            ("iql", "hopper-medium", 0): run("iql", None, "none")}
    note = eval_rtg_note(exp, same)
    assert "GRPO-DT: train:eval_rtg (RTG 3600)" in note and "task:eval_rtg (RTG 3600)" in note
    assert not note.startswith("**")
    mixed = dict(same)
    mixed[("grpo", "hopper-medium", 0)] = run("grpo", 7200.0, "train:online_rtg")
    assert eval_rtg_note(exp, mixed).startswith("**Methods are evaluated at different RTGs on hopper-medium.**")
