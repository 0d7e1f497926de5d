"""Reinformer as a backbone: shapes, its expectile RTG loss, its inference in the rollout engine (the
predicted RTG fed back and recorded), exact resets with its context, ratio = 1 under GRPO-DT, a
pretrain + grpo smoke run, resume, and the backbone checks at config load."""

import json

import numpy as np
import pytest
import torch

from dtrl.models.backbone import build_backbone, fill_last_rtg
from dtrl.models.checkpoint import load_pretrained_dt
from dtrl.config import ConfigError
from dtrl.data.trajectories import Trajectory, TrajectoryDataset
from dtrl.envs.make import env_dims
from dtrl.config.experiment import backbone_of, load_config
from dtrl.workflow.finetune import finetune
from dtrl.methods.grpo import GRPO
from dtrl.config.model import ModelConfig
from dtrl.harness.pretrain import pretrain
from dtrl.models.reinformer import Reinformer, expectile_rtg_loss
from dtrl.harness.rollout import RolloutEngine, Start, collect_episodes, context_at
from dtrl.tasks import get_task

from helpers import write_pretrained

SMALL = dict(embed_dim=32, n_layers=1, n_heads=2, dropout=0.0, context_len=4, eval_context_len=2,
             backbone="reinformer")
SMALL_GRPO = dict(group_size=4, reset_points=4, traj_len=5, eval_len=10, explore_episodes=2, minibatch_size=4,
                  epochs=2)


def tiny_reinformer(task_name="hopper-medium", seed=0, **cfg) -> Reinformer:
    task = get_task(task_name)
    torch.manual_seed(seed)
    return build_backbone(*env_dims(task), ModelConfig(**{**SMALL, **cfg}), task.reward_scale)


def _ctx(B=3, T=4, S=5, A=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, S, generator=g), torch.rand(B, T, A, generator=g) * 2 - 1,
            torch.rand(B, T, generator=g) * 3000, torch.arange(T).expand(B, T).clone(),
            torch.ones(B, T, dtype=torch.bool))


def test_shapes_and_which_token_predicts_what():
    torch.manual_seed(0)
    m = build_backbone(5, 2, ModelConfig(**SMALL), 1e-3).eval()
    s, a, r, ts, mask = _ctx()
    scaled, raw, dist = m.heads(s, a, r, ts, mask)
    assert scaled.shape == raw.shape == (3, 4) and dist.mean.shape == dist.log_std.shape == (3, 4, 2)
    torch.testing.assert_close(raw * 1e-3, scaled)
    assert m.predict_rtg(s, a, r, ts, mask).shape == (3,)
    # The RTG comes from the state token: R_t and a_t (after s_t in the sequence) do not change it ...
    r2, a2 = r.clone(), a.clone()
    r2[:, -1] += 500.0
    a2[:, -1] = -a2[:, -1]
    assert torch.equal(m.predict_rtg(s, a2, r2, ts, mask), m.predict_rtg(s, a, r, ts, mask))
    # ... while the action is conditioned on R_t (the RTG token's hidden state) but not on a_t.
    assert not torch.allclose(m(s, a, r2, ts, mask).mean[:, -1], dist.mean[:, -1])
    torch.testing.assert_close(m(s, a2, r, ts, mask).mean[:, -1], dist.mean[:, -1], rtol=0, atol=0)
    # Left padding: hidden steps change nothing at the real ones.
    pad = mask.clone()
    pad[:, :2] = False
    s3 = s.clone()
    s3[:, :2] = 99.0
    torch.testing.assert_close(m(s3, a, r, ts, pad).mean[:, 2:], m(s, a, r, ts, pad).mean[:, 2:])
    assert m.act_context_len == 4  # its reference acts with its whole training context (eval.py:58-73)


def test_expectile_rtg_loss_against_hand_computed_values():
    pred = torch.tensor([[1.0, 3.0, 100.0]])
    target = torch.tensor([[2.0, 2.0, -7.0]])
    mask = torch.tensor([[True, True, False]])  # the padded position counts nowhere, not even in the norm
    # norm = mean|target| over real steps = 2; u = (target - pred) / 2 = [0.5, -0.5]
    # weights |tau - 1(u < 0)| = [0.9, 0.1] -> mean(0.9 * 0.25, 0.1 * 0.25) = 0.125
    assert expectile_rtg_loss(pred, target, mask, 0.9).item() == pytest.approx(0.125, abs=1e-7)
    # tau = 0.5 is half the mean squared error of u
    assert expectile_rtg_loss(pred, target, mask, 0.5).item() == pytest.approx(0.5 * 0.25, abs=1e-7)
    # a high tau pushes the prediction up: under-predicting costs more than over-predicting by as much
    lo = expectile_rtg_loss(torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor([[True]]), 0.99)
    hi = expectile_rtg_loss(torch.tensor([[3.0]]), torch.tensor([[2.0]]), torch.tensor([[True]]), 0.99)
    assert lo.item() == pytest.approx(0.99 * 0.25) and hi.item() == pytest.approx(0.01 * 0.25)


def test_supervised_terms_add_the_weighted_losses():
    torch.manual_seed(0)
    s, a, r, ts, mask = _ctx()
    m = build_backbone(5, 2, ModelConfig(**SMALL, rtg_loss_weight=2.0, action_loss_weight=0.5), 1e-3)
    t = m.supervised_terms(s, a, r, ts, mask)
    action_term = t["nll"] - t["temperature"] * t["entropy"]
    torch.testing.assert_close(t["loss"].detach(), 2.0 * t["rtg_loss"] + 0.5 * action_term, rtol=1e-5, atol=1e-5)


def test_rollouts_feed_back_the_predicted_rtg_and_record_it(hopper=get_task("hopper-medium")):
    model = tiny_reinformer().eval()
    eng = RolloutEngine(hopper, 3, model.cfg.context_len, seed=0)
    trajs = collect_episodes(eng, model, 3, 3600.0, seeds=range(3), sample=True, record_contexts=True,
                             context_len=model.act_context_len)
    for tr in trajs:
        c = {k: torch.as_tensor(v) for k, v in tr.contexts.items()}
        with torch.no_grad():
            pred = model.predict_rtg(c["states"], c["actions"], c["rtg"], c["timesteps"], c["mask"]).numpy()
            dist = model(c["states"], c["actions"], c["rtg"], c["timesteps"], c["mask"])
            logp = dist.log_prob(torch.as_tensor(tr.actions)[:, None].expand(-1, 4, -1))[:, -1].numpy()
        # each step's RTG token is the model's prediction there (no target, nothing subtracted) ...
        np.testing.assert_array_equal(tr.policy_rtg, pred)
        np.testing.assert_array_equal(tr.contexts["rtg"][:, -1], tr.policy_rtg)
        assert not np.allclose(tr.policy_rtg, 3600.0)
        # ... and the recorded log-probs are the ones the recorded contexts give
        np.testing.assert_allclose(logp, tr.log_probs, atol=1e-5)


def test_restore_replays_the_trajectory_exactly_with_its_context(hopper=get_task("hopper-medium")):
    model = tiny_reinformer().eval()
    eng = RolloutEngine(hopper, 2, model.cfg.context_len, seed=0)
    (tr,) = eng.run(model, [Start(target_rtg=0.0, seed=5)], sample_steps=0, max_steps=30, record_sim_states=True,
                    record_contexts=True)
    t0 = 6
    (again,) = eng.run(model, [Start(traj=tr, t=t0)], sample_steps=0, max_steps=10, record_contexts=True)
    n = len(again)
    assert n == min(10, len(tr) - t0) and n > 2
    for key in ("observations", "actions", "rewards", "policy_rtg", "log_probs"):
        assert np.array_equal(getattr(again, key), getattr(tr, key)[t0:t0 + n]), key
    for t in range(n):
        ctx = context_at(again, t, model.cfg.context_len)
        for k in ctx:
            assert np.array_equal(ctx[k], again.contexts[k][t]), (k, t)
            assert np.array_equal(ctx[k], tr.contexts[k][t0 + t]), (k, t)


def test_grpo_on_reinformer_starts_at_ratio_one_and_learns(tmp_path):
    from dtrl.harness.online import build_context
    from dtrl.config.online import EvalConfig
    from dtrl.config import from_dict

    task = get_task("hopper-medium")
    path = write_pretrained(tmp_path / "model.pt", tiny_reinformer())
    assert isinstance(load_pretrained_dt(path), Reinformer)
    ctx = build_context(task, 0, torch.device("cpu"), None, path, tmp_path / "run", EvalConfig())
    g = GRPO(from_dict(GRPO.Config, SMALL_GRPO), ctx)
    assert g.k == 4  # Reinformer acts with its training context
    before = [p.detach().clone() for p in g.model.policy_parameters()]
    d = g.train_iteration()
    assert len(g.first_minibatch_ratios) == 4
    assert d["ratio_first_absdev"] < 1e-5
    assert d["iter_policy_updates"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, g.model.policy_parameters()))


def test_qgrpo_critic_target_uses_the_predicted_rtg():
    model = tiny_reinformer().eval()
    s, a, r, ts, mask = _ctx(S=model.obs_dim, A=model.act_dim)
    c = {"states": s, "actions": a, "rtg": r, "timesteps": ts, "mask": mask}
    filled = fill_last_rtg(model, c)
    torch.testing.assert_close(filled["rtg"][:, -1], model.predict_rtg(s, a, r, ts, mask))
    assert torch.equal(filled["rtg"][:, :-1], r[:, :-1])


def _pendulum_dataset(seed=0, n_traj=10):
    """Synthetic InvertedPendulum-sized data (4-d states, 1-d actions) with returns that differ by trajectory."""
    rng = np.random.default_rng(seed)
    trajs = []
    for n in rng.integers(8, 25, size=n_traj):
        obs = rng.normal(size=(n, 4)).astype(np.float32)
        act = (0.8 * np.tanh(obs[:, :1] - obs[:, 1:2])).astype(np.float32)
        trajs.append(Trajectory(obs, act, np.ones(n, np.float32), np.zeros(n, bool), np.zeros(n, bool)))
    return TrajectoryDataset(trajs, source="synthetic")


def _exp(tmp_path, budget=200, **extra):
    return load_config(None, {
        "results": str(tmp_path), "device": "cpu", "model": dict(SMALL),
        "pretrain": {"updates": 30, "batch_size": 16, "lr": 1e-3, "warmup_updates": 5, "log_every": 10,
                     "checkpoint_every": 10, "eval_episodes": 2},
        "grid": {"methods": ["grpo"], "tasks": ["pendulum-medium"]},
        "eval": {"episodes": 1, "final_episodes": 2},
        "online": {"env_steps": budget, "eval_every_env_steps": 10_000, "progress": False},
        "methods": {"grpo": dict(SMALL_GRPO)}, **extra})


def test_pretrain_then_grpo_smoke_and_resume_equality(tmp_path):
    task = get_task("pendulum-medium")
    exp = _exp(tmp_path)
    s = pretrain(exp, task, 0, _pendulum_dataset())
    out = tmp_path / "pretrain_reinformer/pendulum-medium/seed0"  # apart from the DT's pretrain/
    assert (out / "model.pt").exists() and not (tmp_path / "pretrain").exists()
    assert s["backbone"] == "reinformer" and np.isfinite(s["final_rtg_loss"]) and len(s["eval_returns"]) == 2
    header = (out / "pretrain.csv").read_text().splitlines()[0].split(",")
    assert "rtg_loss" in header and header[-5:] == ["lr", "grad_norm", "updates_per_s", "wall_time", "cpu_s"]

    whole = finetune(_exp(tmp_path, 300), "grpo", "pendulum-medium", 0, out=tmp_path / "whole")
    assert whole["status"] == "completed" and whole["policy_updates"] > 0
    finetune(_exp(tmp_path, 120), "grpo", "pendulum-medium", 0, out=tmp_path / "cut")
    (tmp_path / "cut/summary.json").unlink()  # as if killed after its last checkpoint
    resumed = finetune(_exp(tmp_path, 300), "grpo", "pendulum-medium", 0, out=tmp_path / "cut",
                       allow_config_change=True)
    for k in ("env_steps", "grad_updates", "iterations", "final_returns"):
        assert whole[k] == resumed[k], k
    recorded = json.loads((tmp_path / "whole/summary.json").read_text())
    assert recorded["final_returns"] == whole["final_returns"]


def test_pretraining_resumes_to_identical_weights(tmp_path, monkeypatch):
    import dtrl.harness.pretrain as P

    task, ds = get_task("pendulum-medium"), _pendulum_dataset()
    exp = _exp(tmp_path / "a")
    exp.pretrain.eval_episodes = 0
    pretrain(exp, task, 0, ds)
    exp_b = _exp(tmp_path / "b")
    exp_b.pretrain.eval_episodes = 0
    real = P.atomic_torch_save
    calls = {"n": 0}

    def killing_save(path, obj):  # die right after the first checkpoint (update 10)
        real(path, obj)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(P, "atomic_torch_save", killing_save)
    with pytest.raises(KeyboardInterrupt):
        pretrain(exp_b, task, 0, ds)
    monkeypatch.setattr(P, "atomic_torch_save", real)
    pretrain(exp_b, task, 0, ds)
    rel = "pretrain_reinformer/pendulum-medium/seed0/model.pt"
    wa = torch.load(tmp_path / "a" / rel, weights_only=False)["dt"]["model"]
    wb = torch.load(tmp_path / "b" / rel, weights_only=False)["dt"]["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("algo", ["odt", "odt_td3"])
def test_odt_family_refuses_reinformer_at_config_load(tmp_path, algo):
    with pytest.raises(ConfigError, match="dt backbone only"):
        _exp(tmp_path, grid={"methods": [algo], "tasks": ["pendulum-medium"]})
    # a method entry may put one method on Reinformer while the rest stay on the DT
    exp = load_config(None, {"grid": {"methods": ["odt", "iql", "none", "g"], "tasks": ["pendulum-medium"]},
                             "methods": {"g": {"algo": "grpo", "backbone": "reinformer"}}})
    assert [backbone_of(exp, m) for m in ("odt", "iql", "none", "g")] == ["dt", "mlp", "dt", "reinformer"]
    assert exp.pretrained_kind("g") == ("gaussian", "reinformer")
    with pytest.raises(ConfigError, match="relabel"):
        load_config(None, {"grid": {"methods": ["g"]},
                           "methods": {"g": {"algo": "grpo", "backbone": "reinformer", "relabel": "learner"}}})
    with pytest.raises(ConfigError, match="unknown backbone"):
        load_config(None, {"grid": {"methods": ["g"]}, "methods": {"g": {"algo": "grpo", "backbone": "rnn"}}})


def test_report_main_table_names_each_entrys_backbone():
    from dtrl.report.tables import main_markdown, main_table

    exp = load_config(None, {"grid": {"methods": ["none", "grpo", "odt", "iql", "grpo_reinformer"],
                                      "tasks": ["hopper-medium"], "seeds": [0]},
                             "methods": {"grpo_reinformer": {"algo": "grpo", "backbone": "reinformer"}}})
    lines = main_markdown(exp, main_table(exp, {}), 0).splitlines()
    header = lines.index(next(line for line in lines if line.startswith("| task |")))
    cells = [c.strip() for c in lines[header + 2].strip("|").split("|")]
    # odt and iql have a published column each, left blank in this row
    assert cells == ["*backbone*", "dt", "dt", "dt", "", "mlp", "", "reinformer"]


def test_paper_grid_resolves_reinformers_reference_hyperparameters():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    exp = load_config([repo / "config/config.yaml", repo / "config/ablations.yaml"])  # odt in the grid: valid
    pre = exp.for_task("hopper-medium", backbone="reinformer")  # what `dtrl pretrain --backbone reinformer` uses
    assert pre.model.backbone == "reinformer" and (pre.model.context_len, pre.model.embed_dim) == (5, 256)
    assert (pre.pretrain.updates, pre.pretrain.batch_size, pre.pretrain.weight_decay) == (50000, 256, 1e-4)
    assert exp.for_task("hopper-medium-replay", backbone="reinformer").pretrain.batch_size == 128  # main.py:40-42
    assert exp.for_task("walker2d-random", backbone="reinformer").pretrain.lr == 1e-4  # wins over walker2d's 1e-3
    run = exp.for_task("walker2d-random", "grpo_reinformer")
    assert run.model.backbone == "reinformer" and run.model.context_len == 5
    dt = exp.for_task("walker2d-random", "grpo")
    assert dt.model.backbone == "dt" and dt.model.context_len == 20 and dt.pretrain.lr == 1e-3


@pytest.mark.parametrize("tau,low,high", [(0.99, 8.5, 10.5), (0.5, 4.5, 7.0)])
def test_the_rtg_head_learns_the_expectile_of_the_returns_from_a_state(tau, low, high):
    """Thirty trajectories start from the same state with returns 2, 5 or 10: the RTG predicted there tends to
    the tau-expectile of {2, 5, 10} (tau 0.99: 9.87, near the best return the data shows; tau 0.5: the mean
    5.67), the max-return behaviour Reinformer's inference relies on."""
    from dtrl.models.batching import ContextSampler

    torch.manual_seed(0)
    trajs = [Trajectory(np.zeros((10, 3), np.float32), np.zeros((10, 1), np.float32),
                        np.full(10, [0.2, 0.5, 1.0][k % 3], np.float32), np.zeros(10, bool), np.zeros(10, bool))
             for k in range(30)]
    cfg = ModelConfig(embed_dim=16, n_layers=1, n_heads=2, dropout=0.0, context_len=2, eval_context_len=2,
                      backbone="reinformer", rtg_expectile=tau)
    m = build_backbone(3, 1, cfg, 0.1)
    sampler = ContextSampler(trajs, 2, rng=np.random.default_rng(0))
    opt = torch.optim.Adam(m.policy_parameters(), lr=1e-2)
    for _ in range(150):
        b = sampler.sample(64)
        loss = m.supervised_terms(b.states, b.actions, b.rtg, b.timesteps, b.mask)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        first = m.predict_rtg(torch.zeros(1, 1, 3), torch.zeros(1, 1, 1), torch.zeros(1, 1),
                              torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool)).item()
    assert low < first < high, first


def test_status_counts_each_backbones_pretraining(tmp_path):
    from dtrl.workflow.status import grid_status

    exp = load_config(None, {"results": str(tmp_path), "pretrain": {"updates": 100},
                             "grid": {"methods": ["grpo", "grpo_rf"], "tasks": ["pendulum-random"], "seeds": [0]},
                             "methods": {"grpo_rf": {"algo": "grpo", "backbone": "reinformer"}},
                             "overrides": [{"backbones": ["reinformer"], "pretrain": {"updates": 300}}]})
    done = tmp_path / "pretrain_reinformer/pendulum-random/seed0"
    done.mkdir(parents=True)
    (done / "model.pt").write_text("")
    (done / "summary.json").write_text(json.dumps({"updates": 300, "wall_time": 3.0}))
    p = grid_status(exp)["pretrain"]
    assert (p.done, p.pending) == (1, 1)  # the DT's pretrain/ is still to do
    assert (p.work_done, p.work_planned) == (300, 400)  # each with its own resolved budget


def test_qgrpo_and_ppo_dt_run_on_reinformer_at_ratio_one(tmp_path):
    from dtrl.config import from_dict
    from dtrl.config.online import EvalConfig
    from dtrl.harness.online import build_context
    from dtrl.methods.ppo_dt import PPODT
    from dtrl.methods.qgrpo import QGRPO

    path = write_pretrained(tmp_path / "model.pt", tiny_reinformer())
    params = {QGRPO: dict(explore_episodes=2, critic_warmup_updates=0, states_per_iteration=6, group_size=3,
                          critic_batch_size=16, critic_hidden=[16], minibatch_size=6),
              PPODT: dict(explore_episodes=2, minibatch_size=16, value_hidden=[16])}
    for cls, p in params.items():
        ctx = build_context(get_task("hopper-medium"), 0, torch.device("cpu"), None, path, tmp_path / cls.__name__,
                            EvalConfig())
        m = cls(from_dict(cls.Config, p), ctx)
        d = m.train_iteration()
        assert d["iter_policy_updates"] > 0 and d["ratio_first_absdev"] < 1e-5, cls.__name__
        assert len(m.evaluate(2, seed=0).returns) == 2
