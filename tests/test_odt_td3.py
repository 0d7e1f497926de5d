"""ODT+TD3 (`--method odt_td3`): deterministic DT, TD targets, next contexts, gradient isolation, update counts,
harness run, resume."""

import copy
import csv
import dataclasses
import math

import numpy as np
import pytest
import torch

from baselines.odt_td3 import NoisyAction, ODTTD3, ODTTD3Config, next_window
from dtrl.config import ConfigError, from_dict
from dtrl.data.trajectories import Trajectory, TrajectoryDataset
from dtrl.workflow.finetune import finetune
from dtrl.models.losses import masked_mean
from dtrl.models.dt import DeterministicAction
from dtrl.harness.online import build_context
from dtrl.config.online import EvalConfig
from dtrl.tasks import get_task

from helpers import tiny_dt, write_pretrained
from test_odt import TASK, assert_resumes_to_the_same_result, experiment, method_instance, offline_dataset

# 3 DT updates per iteration with a policy delay of 2: 6 minibatches, each a critic update.
TD3_FAST = {"updates_per_iteration": 3, "batch_size": 16, "warmup_updates": 10, "critic_warmup_updates": 6}


def _hopper_traj(rewards, end: str, next_obs: bool = False, seed: int = 0) -> Trajectory:
    rng = np.random.default_rng(seed)
    n = len(rewards)
    term, tout = np.zeros(n, bool), np.zeros(n, bool)
    (term if end == "terminal" else tout)[-1] = True
    obs = rng.normal(size=(n, 11)).astype(np.float32)
    return Trajectory(obs, rng.uniform(-1, 1, (n, 3)).astype(np.float32), np.asarray(rewards, np.float32), term,
                      tout, next_observations=rng.normal(size=(n, 11)).astype(np.float32) if next_obs else None)


@pytest.fixture
def td3(tmp_path):
    ds = TrajectoryDataset([
        _hopper_traj([1.0, 2.0, 3.0], "terminal", seed=1),            # ends in a terminal
        _hopper_traj([10.0, 20.0, 30.0], "timeout", next_obs=True, seed=2),  # time-limit cut, s' known
        _hopper_traj([100.0, 200.0, 300.0], "timeout", seed=3),       # time-limit cut, s' unknown
        _hopper_traj(list(np.linspace(0.5, 1.0, 9)), "terminal", seed=4),  # longer than the context
    ])
    # Windows anchored at their last step, so that each transition is the last slot of exactly one context.
    return method_instance(ODTTD3, tmp_path, ds, **TD3_FAST, context_anchor="end")


def _all_contexts(m):
    return m.buffer.sampler.contexts(np.arange(m.buffer.num_transitions))


def test_critic_target_ignores_timeouts_but_respects_terminals(td3):
    # A target critic that answers 10 everywhere makes the bootstrap visible: y = r + 0.99 * 10 * (1 - terminal).
    for q in (td3.critic_target.q1, td3.critic_target.q2):
        torch.nn.init.zeros_(q[-1].weight)
        torch.nn.init.constant_(q[-1].bias, 10.0)
    b = _all_contexts(td3)
    y, w = td3.td_target(b)
    r, last = b.extra["reward"][:, -1], y[:, -1]
    done = b.extra["terminal"][:, -1].bool()
    assert done.sum() == 2  # the two terminals
    torch.testing.assert_close(last[done], r[done])  # terminal: no bootstrap
    torch.testing.assert_close(last[~done], r[~done] + 0.99 * 10.0)  # everything else bootstraps...
    assert w[:, -1][done].all()
    # ... including the timeout whose next observation is known; the one without has no target at all
    assert w[r == 30.0, -1].all() and not w[r == 300.0, -1].any()
    assert w[r == 200.0, -1].all() and w[r == 100.0, -1].all()
    assert not w[~b.mask].any()


def test_next_window_is_the_context_one_step_later(td3):
    K = td3.K
    n = td3.buffer.num_transitions
    b = _all_contexts(td3)
    # anchors whose trajectory continues and whose window is full: only the 9-step trajectory has them
    full = b.mask.all(dim=1) & (b.extra["terminal"][:, -1] == 0) & (b.extra["reward"][:, -1] < 1.0)
    anchors = torch.nonzero(full).flatten().tolist()
    anchors = [a for a in anchors if a + 1 < n]
    assert anchors
    nxt = next_window(td3.buffer.sampler.contexts(anchors))
    later = td3.buffer.sampler.contexts([a + 1 for a in anchors])
    torch.testing.assert_close(nxt["states"], later.states)
    torch.testing.assert_close(nxt["rtg"], later.rtg)
    assert torch.equal(nxt["timesteps"], later.timesteps) and torch.equal(nxt["mask"], later.mask)
    torch.testing.assert_close(nxt["actions"][:, :-1], later.actions[:, :-1])  # the last action is never seen
    assert K == td3.model.cfg.context_len


def test_the_dt_is_deterministic_with_no_temperature(td3):
    m = td3.model
    assert m.cfg.action_head == "deterministic" and m.log_std_head is None
    assert m.log_temperature is None and m.temperature is None
    assert not any("temperature" in n or "log_std" in n for n, _ in m.named_parameters())
    assert td3.trainer.temperature_optimizer is None
    b = td3.buffer.sample(4)
    d = m(b.states, b.actions, b.rtg, b.timesteps, b.mask)
    assert isinstance(d, DeterministicAction) and torch.all(d.std == 0)
    assert torch.equal(d.mode, torch.tanh(d.mean))


def test_supervised_term_is_the_mse_over_real_positions(td3):
    m = td3.model
    m.eval()  # no dropout: the same function in both losses
    b = _all_contexts(td3)
    assert (~b.mask).any()  # some windows are left-padded
    a = td3.actor_loss(b)
    with torch.no_grad():
        pred = torch.tanh(m(b.states, b.actions, b.rtg, b.timesteps, b.mask).mean)
    sq = (pred - b.actions).pow(2)
    expected = sq[b.mask].mean()  # the reference's ((a_hat - a) ** 2)[mask > 0].mean()
    torch.testing.assert_close(a["loss_supervised"], expected)
    torch.testing.assert_close(a["loss"], expected - td3.cfg.alpha * a["actor_q"].detach())
    # the target actions at padded positions do not enter the loss
    actions = b.actions.clone()
    actions[~b.mask] = 0.9
    moved = dataclasses.replace(b, actions=actions)
    with torch.no_grad():
        pred2 = torch.tanh(m(moved.states, moved.actions, moved.rtg, moved.timesteps, moved.mask).mean)
    torch.testing.assert_close(pred2[b.mask], pred[b.mask])  # padded tokens are masked out of attention too
    torch.testing.assert_close(td3.actor_loss(moved)["loss_supervised"], expected)
    assert "nll" not in a and "entropy" not in a and "loss_temperature" not in a


def test_odt_td3_refuses_a_stochastic_dt(tmp_path):
    path = write_pretrained(tmp_path / "stoc.pt", tiny_dt())
    ctx = build_context(get_task(TASK), 0, torch.device("cpu"), offline_dataset(), path, tmp_path / "run",
                        EvalConfig())
    with pytest.raises(ConfigError, match="deterministic action head.*gaussian"):
        ODTTD3(from_dict(ODTTD3Config, TD3_FAST), ctx)


def test_each_loss_reaches_only_its_own_parameters(td3):
    b = td3.buffer.sample(8)
    m = td3.model
    policy, critic = m.policy_parameters(), list(td3.critic.parameters())
    assert len(policy) == len(list(m.parameters()))
    targets = list(td3.critic_target.parameters()) + list(td3.target.parameters())
    assert not any(p.requires_grad for p in targets)

    def grads(loss):
        g = torch.autograd.grad(loss, policy + critic, allow_unused=True, retain_graph=True)
        nz = [x is not None and bool(x.abs().sum() > 0) for x in g]
        return any(nz[:len(policy)]), any(nz[len(policy):])

    c = td3.critic_loss(b)
    assert grads(c["critic_loss"]) == (False, True)
    a = td3.actor_loss(b)
    assert grads(a["loss"]) == (True, False)
    assert grads(-a["actor_q"]) == (True, False)  # the TD3 term alone reaches the DT
    assert all(p.requires_grad for p in critic)  # the critic is trainable again after the actor loss


def test_frozen_critic_gives_the_same_values_and_no_critic_gradient(td3):
    from dtrl.harness.critic import TwinQ

    q = td3.critic
    obs, act = torch.randn(6, 11), torch.randn(6, 3, requires_grad=True)
    free, frozen = q(obs, act), q(obs, act, frozen=True)
    assert all(torch.equal(a, b) for a, b in zip(free, frozen))
    frozen[0].sum().backward()
    assert act.grad is not None and act.grad.abs().sum() > 0
    assert all(p.grad is None for p in q.parameters()) and isinstance(q, TwinQ)


def test_soft_update_matches_the_per_parameter_update_bit_for_bit(td3):
    from dtrl.harness.critic import soft_update

    target, source = copy.deepcopy(td3.critic_target), td3.critic
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    ref = copy.deepcopy(target)
    with torch.no_grad():
        for pt, ps in zip(ref.parameters(), source.parameters()):
            pt.mul_(1.0 - 0.005).add_(ps, alpha=0.005)
    soft_update(target, source, 0.005)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), ref.parameters()))


def test_update_steps_return_detached_scalar_terms(td3):
    b = td3.buffer.sample(8)
    c = td3._critic_step(b)
    assert tuple(c) == ODTTD3.CRITIC_TERMS and all(v.dim() == 0 and not v.requires_grad for v in c.values())
    a = td3._actor_step(b)
    assert tuple(a) == ODTTD3.ACTOR_TERMS and all(v.dim() == 0 and not v.requires_grad for v in a.values())
    assert td3.critic_compiled.mode == td3.actor_compiled.mode == "off"  # CPU: eager


def _count_iteration(m):
    c = m.ctx.counters
    before = (c.critic_updates, c.policy_updates, m.trainer.updates)
    m.train_iteration()
    return c.critic_updates - before[0], c.policy_updates - before[1], m.trainer.updates - before[2]


def test_published_setting_makes_600_critic_and_300_dt_updates_per_iteration(td3):
    cfg = ODTTD3Config()
    assert (cfg.updates_per_iteration, cfg.policy_delay) == (300, 2)
    # the schedule of one iteration at the published setting, with the steps themselves replaced by a log
    td3.cfg = dataclasses.replace(td3.cfg, updates_per_iteration=300, policy_delay=2)
    calls = []
    td3._critic_step = lambda batch: calls.append("critic") or {"critic_loss": torch.tensor(0.0)}
    td3._actor_step = lambda batch: calls.append("actor") or {"loss": torch.tensor(0.0)}
    td3.buffer.sample = lambda n: None
    c = td3.ctx.counters
    td3._update_many(td3.cfg.updates_per_iteration)
    assert (calls.count("critic"), calls.count("actor")) == (600, 300)
    assert (c.critic_updates, c.policy_updates) == (600, 300)
    # the DT learns on the first minibatch of every pair, after its critic update (trainer.py:181-188)
    assert calls[:6] == ["critic", "actor", "critic", "critic", "actor", "critic"]


def test_each_iteration_trains_the_critic_policy_delay_times_as_often(td3):
    assert _count_iteration(td3) == (6 + 6, 3, 3)  # the first iteration also makes the 6 warmup updates
    assert _count_iteration(td3) == (6, 3, 3)
    td3.cfg = dataclasses.replace(td3.cfg, policy_delay=3)
    assert _count_iteration(td3) == (9, 3, 3)


def test_actor_term_moves_the_dt_towards_higher_q(td3):
    """A critic that prefers action +1 everywhere pulls the DT's mean action up."""
    for q in (td3.critic.q1, td3.critic.q2):
        torch.nn.init.zeros_(q[-1].weight)
        torch.nn.init.zeros_(q[-1].bias)
        for layer in q:
            if isinstance(layer, torch.nn.Linear) and layer is not q[-1]:
                torch.nn.init.zeros_(layer.weight)
                torch.nn.init.constant_(layer.bias, 0.0)
    # Q(s, a) = sum(a): first layer passes the actions through a ReLU of (a + 1) >= 0
    q1 = td3.critic.q1
    obs_dim = 11
    with torch.no_grad():
        q1[0].weight[:3, obs_dim:] = torch.eye(3)
        q1[0].bias[:3] = 1.0
        q1[2].weight[:3, :3] = torch.eye(3)
        q1[-1].weight[0, :3] = 1.0
    b = td3.buffer.sample(32)
    m = td3.model
    td3.cfg = dataclasses.replace(td3.cfg, alpha=1000.0, grad_clip=0.0)
    for g in td3.trainer.optimizer.param_groups:
        g["lr"] = 1e-2
    m.eval()  # no dropout: compare the same function before and after
    with torch.no_grad():
        m.mean_head.bias.zero_()  # actions away from the tanh's saturation, where a step moves them most
        before = torch.tanh(m(b.states, b.actions, b.rtg, b.timesteps, b.mask).mean)[b.mask].mean()
    for _ in range(3):
        td3._actor_step(b)
    with torch.no_grad():
        after = torch.tanh(m(b.states, b.actions, b.rtg, b.timesteps, b.mask).mean)[b.mask].mean()
    assert after > before + 0.05


def test_exploration_adds_clipped_noise_after_the_tanh(tmp_path):
    model = tiny_dt(action_head="deterministic")
    s, a = torch.randn(2, 4, 11), torch.zeros(2, 4, 3)
    rtg, ts = torch.full((2, 4), 100.0), torch.arange(4).repeat(2, 1)
    d, nd = model(s, a, rtg, ts), NoisyAction(model, 0.1)(s, a, rtg, ts)
    assert torch.equal(d.mean, nd.mean) and torch.allclose(nd.std, torch.full_like(nd.std, 0.1))
    # clamp(tanh(mu) + 0.1 eps) to the bounds shrunk by 1e-6, as the reference's evaluation.py:172-174
    eps = torch.tensor([[1.0, -2.0, 30.0]])
    one = DeterministicAction(torch.tensor([[0.5, -0.2, 3.0]]), torch.full((1, 3), math.log(0.1)))
    expected = torch.tensor([[math.tanh(0.5) + 0.1, math.tanh(-0.2) - 0.2, 1 - 1e-6]])
    torch.testing.assert_close(one.action_from_noise(eps), expected)
    # same episode seed with and without noise: identical first state, first actions 0.1 * eps apart (post-tanh)
    m = method_instance(ODTTD3, tmp_path, critic_warmup_updates=0)
    state = m.ctx.np_rng.bit_generator.state
    (noisy,) = m.explore()
    m.ctx.np_rng.bit_generator.state = state
    m.cfg = dataclasses.replace(m.cfg, exploration_noise=0.0)
    assert m._explorer() == (m.model, False)
    (mean,) = m.explore()
    assert np.array_equal(noisy.observations[0], mean.observations[0])
    diff = noisy.actions[0] - mean.actions[0]
    assert 0 < np.abs(diff).max() < 0.5 and np.all(np.abs(noisy.actions) < 1)


def test_defaults_are_the_published_values():
    c = ODTTD3Config()
    assert (c.alpha, c.gamma, c.tau, c.policy_noise, c.noise_clip, c.policy_delay) == (0.1, 0.99, 0.005, 0.2, 0.5, 2)
    assert c.exploration_noise == 0.1 and c.critic_hidden == [256, 256]
    assert (c.critic_lr, c.critic_weight_decay) == (1e-3, 0.01)
    assert ODTTD3.pretrained_head == "deterministic"
    assert (c.batch_size, c.updates_per_iteration, c.buffer_size, c.lr) == (256, 300, 1000, 1e-4)
    assert all(f.metadata.get("doc") for f in dataclasses.fields(ODTTD3Config))
    assert math.isclose(get_task(TASK).online_rtg, 7200)


def test_odt_td3_run_writes_documented_outputs(tmp_path):
    s = finetune(experiment(tmp_path, "odt_td3", TD3_FAST), "odt_td3", TASK, 0)
    rows = list(csv.DictReader(open(tmp_path / "runs/odt_td3" / TASK / "seed0/progress.csv")))
    its = s["iterations"]
    assert s["critic_updates"] == 6 + 6 * its and s["policy_updates"] == s["grad_updates"] == 3 * its
    # per iteration, read from progress.csv: 6 critic and 3 DT updates (after the 6 warmup ones)
    it_rows = [r for r in rows if not r.get("final")]
    critic = [int(r["critic_updates"]) for r in it_rows]
    policy = [int(r["policy_updates"]) for r in it_rows]
    assert critic[0] == 6 + 6 and np.all(np.diff(critic) == 6) and np.all(np.diff([0] + policy) == 3)
    assert rows[0]["warmup_critic_loss"] != ""
    for col in ("critic_loss", "q_mean", "td_error", "target_q", "actor_q", "mse", "loss_supervised", "grad_norm",
                "explore_return", "buffer_trajectories"):
        assert rows[0][col] != "" and np.isfinite(float(rows[0][col])), col
    assert "temperature" not in rows[0] and "nll" not in rows[0]


def test_odt_td3_resumes_to_the_same_result(tmp_path, capsys):
    assert_resumes_to_the_same_result(tmp_path, "odt_td3", TD3_FAST, capsys)


# -- the critic's warm start (issue 18 item 4) --------------------------------------------------------


def test_warmup_polyak_updates_the_target_critic_and_online_starts_from_hard_copies(td3):
    """The reference's pretraining soft-updates the target critic after every policy_delay-th critic step
    (trainer.py:187, 979-981); its online trainer starts from deep copies of critic and DT (trainer.py:47, 51)."""
    td3.cfg = dataclasses.replace(td3.cfg, critic_warmup_updates=5)
    before = [p.detach().clone() for p in td3.critic_target.parameters()]
    after_step, step = [], td3._critic_step

    def recorded(batch):
        out = step(batch)
        after_step.append([p.detach().clone() for p in td3.critic.parameters()])
        return out

    td3._critic_step = recorded
    td3.warm_up_critic()
    expected = before
    for i, critic in enumerate(after_step):
        if i % td3.cfg.policy_delay == 0:  # steps 0, 2, 4
            expected = [(1 - td3.cfg.tau) * e + td3.cfg.tau * c for e, c in zip(expected, critic)]
    target = list(td3.critic_target.parameters())
    assert all(torch.allclose(t, e, rtol=0, atol=1e-7) for t, e in zip(target, expected))
    assert any(not torch.equal(t, b) for t, b in zip(target, before))  # it moved
    assert any(not torch.equal(t, c) for t, c in zip(target, td3.critic.parameters()))  # but lags the critic

    # the first iteration: warm-up, then the targets are the critic and the DT themselves
    td3.cfg = dataclasses.replace(td3.cfg, critic_warmup_updates=2)
    td3.warmed_up = False
    with torch.no_grad():
        next(td3.target.parameters()).add_(1.0)  # a target DT that differs, to see the copy
    diag = td3._before_first_iteration()
    assert td3.warmed_up and "warmup_critic_loss" in diag
    assert all(torch.equal(t, c) for t, c in zip(td3.critic_target.parameters(), td3.critic.parameters()))
    assert all(torch.equal(t, p) for t, p in zip(td3.target.parameters(), td3.model.parameters()))


# -- the TD target as the reference builds it (issue 18 item 5) -------------------------------------------


def _reference_td(m, traj, si: int, last_terminal: bool, all_ones: bool, all_slots: bool):
    """RL_as_Vitamin's TD target and critic loss for the window of ``traj`` starting at ``si``, written out from
    its code (data.py:88-151 window and padding, trainer.py:609-640 next window, 759-798 target and loss) with
    dtrl's networks (which normalise states and scale the RTG themselves). Returns (y, mask, loss, a')."""
    K, T = m.K, len(traj)
    tlen = min(K, T - si)
    pad = K - tlen

    def front(x, value=0.0):
        x = torch.as_tensor(np.asarray(x, np.float64), dtype=torch.float32)
        return torch.cat([torch.full((pad, *x.shape[1:]), value), x])

    term = traj.terminals.astype(np.float64)
    if last_terminal:
        term[-1] = 1.0  # evaluation.py:250-252
    rtg = np.cumsum(traj.rewards[si:][::-1].astype(np.float64))[::-1][:tlen + 1]
    if len(rtg) <= tlen:
        rtg = np.concatenate([rtg, [0.0]])
    ss, ns, aa = front(traj.observations[si:si + tlen]), front(traj.next_observations[si:si + tlen]), \
        front(traj.actions[si:si + tlen])
    rr, dd, rtg = front(traj.rewards[si:si + tlen]), front(term[si:si + tlen], 2.0), front(rtg)
    ts, mask = front(np.arange(si, si + tlen)).long(), front(np.ones(tlen)).bool()
    na = torch.cat([aa, torch.zeros(1, aa.shape[1])])[1:]
    nts = torch.cat([ts, ts[-1:] + 1])[1:]
    tmask = torch.ones(K, dtype=torch.bool) if all_ones else mask  # decision_transformer.py:295-304
    with torch.no_grad():
        a_next = torch.tanh(m.target(ns[None], na[None], rtg[None, 1:], nts[None], tmask[None]).mean)[0]
        q_next = torch.min(*m.critic_target(ns, a_next.clamp(-1, 1)))
        y = rr + (1 - dd) * m.cfg.gamma * q_next
        q1, q2 = m.critic(ss, aa)
        err = ((q1 - y) ** 2 + (q2 - y) ** 2) * mask
        loss = err.mean() if all_slots else err.sum() / mask.sum()
    return y, mask, loss, a_next


@pytest.mark.parametrize("online_terminals", ["last_step", "env"])
@pytest.mark.parametrize("target_padding_mask", ["all_ones", "real"])
@pytest.mark.parametrize("critic_loss_mean", ["all_slots", "real"])
def test_td_target_and_critic_loss_match_the_reference_per_switch(tmp_path, online_terminals, target_padding_mask,
                                                                  critic_loss_mean):
    """An online episode cut by the time limit, its last window padded: dtrl's target and critic loss equal the
    reference's formulas, switch by switch (the defaults are the reference's)."""
    if (online_terminals, target_padding_mask, critic_loss_mean) == ("last_step", "all_ones", "all_slots"):
        cfg = ODTTD3Config()
        assert (cfg.online_terminals, cfg.target_padding_mask, cfg.critic_loss_mean) == \
            (online_terminals, target_padding_mask, critic_loss_mean)
    m = method_instance(ODTTD3, tmp_path, **TD3_FAST, policy_noise=0.0, online_terminals=online_terminals,
                        target_padding_mask=target_padding_mask, critic_loss_mean=critic_loss_mean)
    assert m.K == 4 and m.buffer.sampler.anchor == "start"
    cut = _hopper_traj([1.0, 2.0, 4.0], "timeout", next_obs=True, seed=5)  # time-limit cut, s' known
    cut.next_observations[:-1] = cut.observations[1:]  # as an online episode records them
    m.buffer.add(cut)
    n = m.buffer.num_transitions
    b = m.buffer.sampler.contexts([n - 2])  # starts at step 1: real steps 1, 2 after 2 padded slots
    assert b.mask.tolist() == [[False, False, True, True]]
    for q in (m.critic_target.q1, m.critic_target.q2, m.critic.q1, m.critic.q2):
        torch.nn.init.normal_(q[-1].bias, 5.0)  # Q values away from 0, so a missing bootstrap shows
    m.model.eval()
    y, w = m.td_target(b)
    y_ref, mask, loss_ref, a_ref = _reference_td(m, cut, 1, online_terminals == "last_step",
                                          target_padding_mask == "all_ones", critic_loss_mean == "all_slots")
    assert torch.equal(w[0], mask)
    torch.testing.assert_close(m.target_actions(b)[0][mask], a_ref[mask])
    torch.testing.assert_close(y[0][mask], y_ref[mask])
    torch.testing.assert_close(m.critic_loss(b)["critic_loss"], loss_ref)
    # each switch changes what it says it changes
    other_y, _, other_loss, other_a = _reference_td(m, cut, 1, online_terminals != "last_step",
                                                    target_padding_mask != "all_ones", critic_loss_mean != "all_slots")
    assert (y[0][-1] - other_y[-1]).abs() > 1.0  # the cut: bootstrapped or not
    assert (a_ref[2] - other_a[2]).abs().max() > 1e-3  # a real step whose target DT saw (or not) the padding
    assert not torch.allclose(loss_ref, other_loss)
