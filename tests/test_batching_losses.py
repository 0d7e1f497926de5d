import copy
import math

import numpy as np
import pytest
import torch

from dtrl.models.batching import ContextSampler
from dtrl.data.trajectories import Trajectory
from dtrl.models.losses import dt_supervised_loss, masked_mean
from dtrl.models.dt import DecisionTransformer, SquashedGaussian
from dtrl.models.optim import Lamb, make_optimizer, warmup_schedule


def _traj(states, actions, rewards):
    n = len(rewards)
    return Trajectory(np.asarray(states, np.float32), np.asarray(actions, np.float32),
                      np.asarray(rewards, np.float32), np.zeros(n, bool), np.zeros(n, bool))


@pytest.fixture
def two_trajs():
    # A: 3 steps, rewards 1,2,3 -> RTG 6,5,3.  B: 5 steps of reward 1 -> RTG 5,4,3,2,1.
    # States encode (trajectory, step) so every gathered row can be checked by eye.
    a = _traj([[10 + t, 1] for t in range(3)], [[0.1 * (t + 1)] for t in range(3)], [1, 2, 3])
    b = _traj([[20 + t, 2] for t in range(5)], [[-0.1 * (t + 1)] for t in range(5)], [1] * 5)
    return a, b


# -- sampler ------------------------------------------------------------------------------------

def test_end_anchored_windows_match_hand_computed(two_trajs):
    s = ContextSampler(two_trajs, 4)
    # flat order: A0 A1 A2 B0 B1 B2 B3 B4 -> anchors 1 (A1), 4 (B1), 7 (B4), 3 (B0)
    b = s.contexts([1, 4, 7, 3])
    assert b.states.shape == (4, 4, 2) and b.actions.shape == (4, 4, 1)
    assert b.rtg.shape == b.timesteps.shape == b.mask.shape == (4, 4)
    assert b.mask.dtype == torch.bool and b.timesteps.dtype == torch.int64
    assert b.mask.tolist() == [[False, False, True, True], [False, False, True, True],
                               [True, True, True, True], [False, False, False, True]]
    assert b.states[..., 0].tolist() == [[0, 0, 10, 11], [0, 0, 20, 21], [21, 22, 23, 24], [0, 0, 0, 20]]
    assert b.rtg.tolist() == [[0, 0, 6, 5], [0, 0, 5, 4], [4, 3, 2, 1], [0, 0, 0, 5]]
    assert b.timesteps.tolist() == [[0, 0, 0, 1], [0, 0, 0, 1], [1, 2, 3, 4], [0, 0, 0, 0]]
    # padding is zero everywhere, and B1's window never reaches back into A
    assert torch.all(b.actions[~b.mask] == 0) and torch.all(b.states[~b.mask] == 0)
    assert torch.allclose(b.actions[1, :, 0], torch.tensor([0.0, 0.0, -0.1, -0.2]))


def test_start_anchored_windows_like_odt(two_trajs):
    s = ContextSampler(two_trajs, 4, anchor="start")
    b = s.contexts([1, 3, 6])  # A1.., B0.., B3..
    assert b.mask.tolist() == [[False, False, True, True], [True] * 4, [False, False, True, True]]
    assert b.states[..., 0].tolist() == [[0, 0, 11, 12], [20, 21, 22, 23], [0, 0, 23, 24]]
    assert b.rtg.tolist() == [[0, 0, 5, 3], [5, 4, 3, 2], [0, 0, 2, 1]]
    assert b.timesteps.tolist() == [[0, 0, 1, 2], [0, 1, 2, 3], [0, 0, 3, 4]]


def test_context_longer_than_every_trajectory(two_trajs):
    b = ContextSampler(two_trajs, 7).contexts([2, 7])
    assert b.mask.sum(1).tolist() == [3, 5]
    assert b.states[0, :, 0].tolist() == [0, 0, 0, 0, 10, 11, 12]


def test_rtg_timestep_and_extra_overrides(two_trajs):
    a, b = two_trajs
    rtg = [np.array([100.0, 90.0, 80.0]), np.arange(5, dtype=np.float32) + 50]
    ts = [np.arange(3) + 200, np.arange(5) + 300]
    s = ContextSampler(two_trajs, 3, rtg_override=rtg, timesteps=ts,
                       extra={"rewards": [a.rewards, b.rewards], "terminals": [a.terminals, b.terminals]})
    out = s.contexts([1, 7])
    assert out.rtg.tolist() == [[0, 100, 90], [52, 53, 54]]  # the stored tokens, not hindsight RTG
    assert out.timesteps.tolist() == [[0, 200, 201], [302, 303, 304]]
    assert out.extra["rewards"].tolist() == [[0, 1, 2], [1, 1, 1]]
    assert out.extra["terminals"].dtype == torch.bool
    with pytest.raises(ValueError, match="rtg_override has shape"):
        ContextSampler(two_trajs, 3, rtg_override=[np.zeros(2), np.zeros(5)])
    with pytest.raises(ValueError, match="2 arrays but there are"):
        ContextSampler([a], 3, rtg_override=[np.zeros(3), np.zeros(5)])
    with pytest.raises(ValueError, match="extra arrays"):
        s.add(a, extra={"rewards": a.rewards})


def test_sampling_is_uniform_over_transitions(two_trajs):
    s = ContextSampler(two_trajs, 4, rng=np.random.default_rng(0))
    b = s.sample(40_000)
    last = b.states[:, -1, 0].numpy()  # identifies the anchor transition
    ids, counts = np.unique(last, return_counts=True)
    assert ids.tolist() == [10, 11, 12, 20, 21, 22, 23, 24]
    np.testing.assert_allclose(counts / counts.sum(), 1 / 8, atol=0.01)  # B (5 steps) picked 5/8 of the time


def test_sampling_reproducible_from_generator_state(two_trajs):
    s = ContextSampler(two_trajs, 4, rng=np.random.default_rng(3))
    state = s.rng.bit_generator.state
    first = s.sample(16).states
    s.rng.bit_generator.state = state
    assert torch.equal(first, s.sample(16).states)


def _shifted_sampler(anchor: str, generator: torch.Generator | None = None, seed: int = 0) -> ContextSampler:
    """Trajectories of 3, 5, 1 and 4 steps, the first one dropped (live steps start at storage index 3);
    every state is unique, so a window identifies its anchor."""
    lens = [3, 5, 1, 4]
    trajs = [_traj([[100 * i + t, i] for t in range(n)], [[0.01 * (100 * i + t)] for t in range(n)],
                   np.arange(1, n + 1)) for i, n in enumerate(lens)]
    s = ContextSampler(trajs[:3], 4, anchor=anchor, rng=np.random.default_rng(seed), generator=generator)
    s.pop_oldest(1)
    s.add(trajs[3])
    return s


def _window_ids(s: ContextSampler, batch) -> np.ndarray:
    """The anchor (0-based over live steps) of each context in ``batch``, by matching whole windows."""
    every = s.contexts(np.arange(s.num_transitions))
    key = lambda b, i: (b.states[i].numpy().tobytes(), b.mask[i].numpy().tobytes())  # noqa: E731
    table = {key(every, i): i for i in range(s.num_transitions)}
    assert len(table) == s.num_transitions  # windows are distinct
    return np.array([table[key(batch, i)] for i in range(batch.batch_size)])


@pytest.mark.parametrize("anchor", ["end", "start"])
def test_device_and_host_samplers_draw_windows_from_the_same_distribution(anchor):
    """Issue 13: the device sampler consumes another random stream than numpy's, so it cannot be
    bit-identical for a seed; it must draw the same window distribution: every live transition
    equally likely as the anchor (trajectories in proportion to their length). Chi-square goodness
    of fit of both against that exact distribution, and of the two against each other."""
    from scipy.stats import chi2, chi2_contingency

    host = _shifted_sampler(anchor)
    dev = _shifted_sampler(anchor, generator=torch.Generator().manual_seed(5))
    n = host.num_transitions
    assert n == 10 and dev.num_transitions == n
    draws = 30_000
    counts = {}
    for name, s in (("host", host), ("device", dev)):
        ids = np.concatenate([_window_ids(s, s.sample(3000)) for _ in range(draws // 3000)])
        counts[name] = np.bincount(ids, minlength=n)
        stat = ((counts[name] - draws / n) ** 2 / (draws / n)).sum()
        assert chi2.sf(stat, n - 1) > 1e-4, (name, counts[name])
    assert chi2_contingency(np.stack([counts["host"], counts["device"]]))[1] > 1e-4


@pytest.mark.parametrize("anchor", ["end", "start"])
def test_device_batches_equal_host_batches_for_the_same_windows(anchor):
    """The device path (anchors drawn on the device, contexts_at) builds, element by element, the batch
    the host path (numpy anchors, contexts) builds for the same anchors; extra arrays included."""
    gen = torch.Generator().manual_seed(11)
    s = _shifted_sampler(anchor, generator=gen)
    replay = torch.Generator().set_state(gen.get_state())
    drawn = s.sample(64)  # device path
    anchors = torch.randint(0, 2**62, (64,), generator=replay, dtype=torch.int64) % s.num_transitions
    for dev_batch, host_batch in ((drawn, s.contexts(anchors.numpy())),
                                  (s.contexts_at(torch.arange(s.num_transitions)),
                                   s.contexts(np.arange(s.num_transitions)))):
        for f in ("states", "actions", "rtg", "timesteps", "mask"):
            a, b = getattr(dev_batch, f), getattr(host_batch, f)
            assert a.dtype == b.dtype and torch.equal(a, b), f
    assert set(_window_ids(s, drawn)) <= set(range(s.num_transitions))
    # an explicit numpy generator still draws on the host
    rng_state = s.rng.bit_generator.state
    explicit = s.sample(8, np.random.default_rng(1))
    assert torch.equal(explicit.states, s.contexts(np.random.default_rng(1).integers(0, 10, 8)).states)
    assert s.rng.bit_generator.state == rng_state


def test_device_generator_must_live_on_the_samplers_device(two_trajs):
    if not torch.cuda.is_available():
        pytest.skip("needs a second device type")
    with pytest.raises(ValueError, match="generator"):
        ContextSampler(two_trajs, 4, device="cpu", generator=torch.Generator(device="cuda"))


def test_add_and_pop_match_a_rebuilt_sampler():
    rng = np.random.default_rng(0)
    trajs = [_traj(rng.normal(size=(n, 2)), rng.uniform(-1, 1, (n, 1)), rng.normal(size=n))
             for n in rng.integers(1, 9, size=30)]
    s = ContextSampler(trajs[:3], 5)
    live = list(trajs[:3])
    for t in trajs[3:]:  # a FIFO buffer of at most 6 trajectories, forcing several compactions
        s.add(t)
        live.append(t)
        if len(live) > 6:
            s.pop_oldest()
            live.pop(0)
        ref = ContextSampler(live, 5)
        assert s.num_transitions == ref.num_transitions and s.lengths() == [len(x) for x in live]
        every = np.arange(ref.num_transitions)
        got, want = s.contexts(every), ref.contexts(every)
        for k in ("states", "actions", "rtg", "timesteps", "mask"):
            assert torch.equal(getattr(got, k), getattr(want, k)), k
    s.pop_oldest(s.num_trajectories)
    with pytest.raises(ValueError, match="empty"):
        s.sample(4)
    s.add(trajs[0])
    assert s.contexts([0]).mask.sum() == 1


def test_sampler_bad_input(two_trajs):
    a, b = two_trajs
    with pytest.raises(ValueError, match="at least one trajectory"):
        ContextSampler([], 4)
    with pytest.raises(ValueError, match="context_len"):
        ContextSampler(two_trajs, 0)
    with pytest.raises(ValueError, match="anchor"):
        ContextSampler(two_trajs, 4, anchor="middle")
    with pytest.raises(ValueError, match="observations have shape"):
        ContextSampler([a, _traj(np.zeros((2, 5)), np.zeros((2, 1)), np.zeros(2))], 4)
    with pytest.raises(ValueError, match="is empty"):
        ContextSampler([a, _traj(np.zeros((0, 2)), np.zeros((0, 1)), np.zeros(0))], 4)
    s = ContextSampler(two_trajs, 4)
    with pytest.raises(IndexError, match="anchor indices"):
        s.contexts([8])
    with pytest.raises(ValueError, match="batch_size"):
        s.sample(0)
    with pytest.raises(ValueError, match="cannot drop 3"):
        s.pop_oldest(3)


# -- losses -------------------------------------------------------------------------------------

def _model_batch(cfg, B=4):
    torch.manual_seed(0)
    model = DecisionTransformer(3, 2, cfg)
    T = cfg.context_len
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :2] = False
    batch = (torch.randn(B, T, 3), torch.rand(B, T, 2) * 2 - 1, torch.rand(B, T) * 10,
             torch.arange(T).repeat(B, 1), mask)
    return model, batch


def test_each_loss_reaches_only_its_parameters(tiny_model_cfg):
    model, (s, a, r, t, m) = _model_batch(tiny_model_cfg)
    terms = dt_supervised_loss(model(s, a, r, t, m), a, m, model.log_temperature, model.target_entropy)
    assert set(terms) == {"loss", "loss_temperature", "nll", "entropy", "temperature"}
    terms["loss"].backward(retain_graph=True)
    assert model.log_temperature.grad is None
    grads = [p.grad for p in model.policy_parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)
    terms["loss_temperature"].backward()
    assert model.log_temperature.grad is not None and model.log_temperature.grad.abs() > 0
    assert all(p.grad is None for p in model.policy_parameters())


def _padded_case():
    torch.manual_seed(0)
    mean, log_std = torch.randn(2, 3, 2), torch.randn(2, 3, 2) * 0.3
    actions = torch.rand(2, 3, 2) * 1.8 - 0.9
    mask = torch.tensor([[False, True, True], [True, True, True]])
    return mean, log_std, actions, mask, torch.tensor(math.log(0.3), requires_grad=True)


def test_loss_values_match_odts_formula_with_padding():
    """Default: ODT's loss (online-dt main.py:399-402, trainer.py:100-102): the log-likelihood a masked mean,
    the entropy the mean over all B x K slots, padding included; the temperature loss uses that entropy."""
    mean, log_std, actions, mask, log_t = _padded_case()
    torch.manual_seed(1)
    terms = dt_supervised_loss(SquashedGaussian(mean, log_std), actions, mask, log_t, -2.0, entropy_samples=4)
    # The reference's formula, written out: N reparameterised draws y, entropy = -mean_N(sum_A log p(tanh y)).
    torch.manual_seed(1)
    normal = torch.distributions.Normal(mean, log_std.exp())
    h = torch.zeros(2, 3)
    for _ in range(4):
        y = mean + log_std.exp() * torch.randn_like(mean)
        h -= (normal.log_prob(y) - 2.0 * (math.log(2.0) - y - torch.nn.functional.softplus(-2.0 * y))).sum(-1) / 4
    log_lik = torch.distributions.TransformedDistribution(
        normal, [torch.distributions.TanhTransform()]).log_prob(actions).sum(-1)[mask > 0].mean()
    assert torch.allclose(terms["entropy"], h.mean(), atol=1e-5)
    assert torch.allclose(terms["nll"], -log_lik, atol=1e-4)
    assert torch.allclose(terms["temperature"], torch.tensor(0.3))
    assert torch.allclose(terms["loss"], -(log_lik + 0.3 * h.mean()), atol=1e-4)
    assert torch.allclose(terms["loss_temperature"], 0.3 * (h.mean() + 2.0), atol=1e-5)
    # What the model says at a padded slot moves the entropy (not the NLL).
    mean2, log_std2 = mean.clone(), log_std.clone()
    log_std2[0, 0] -= 3.0
    torch.manual_seed(1)
    terms2 = dt_supervised_loss(SquashedGaussian(mean2, log_std2), actions, mask, log_t, -2.0, entropy_samples=4)
    assert torch.allclose(terms["nll"], terms2["nll"]) and terms2["entropy"] < terms["entropy"] - 0.1


def test_loss_with_the_entropy_over_real_steps_only():
    mean, log_std, actions, mask, log_t = _padded_case()
    torch.manual_seed(1)
    terms = dt_supervised_loss(SquashedGaussian(mean, log_std), actions, mask, log_t, -2.0, entropy_samples=4,
                               entropy_positions="real")
    d = SquashedGaussian(mean, log_std)
    lp = d.log_prob(actions)
    assert torch.allclose(terms["nll"], -lp[mask].mean())
    torch.manual_seed(1)
    ent = d.entropy(4)
    assert torch.allclose(terms["entropy"], ent[mask].mean())
    assert torch.allclose(terms["loss"], terms["nll"] - 0.3 * terms["entropy"])
    assert torch.allclose(terms["loss_temperature"], 0.3 * (terms["entropy"] + 2.0))
    # whatever the model says at padded positions does not count, for the NLL nor for the entropy
    mean2, log_std2 = mean.clone(), log_std.clone()
    mean2[0, 0] += 5.0
    log_std2[0, 0] -= 3.0
    torch.manual_seed(1)
    terms2 = dt_supervised_loss(SquashedGaussian(mean2, log_std2), actions, mask, log_t, -2.0, entropy_samples=4,
                                entropy_positions="real")
    assert torch.allclose(terms["nll"], terms2["nll"]) and torch.allclose(terms["entropy"], terms2["entropy"])
    with pytest.raises(ValueError, match="entropy_positions"):
        dt_supervised_loss(d, actions, mask, log_t, -2.0, entropy_positions="padding")


def test_loss_bad_input_and_empty_mask():
    d = SquashedGaussian(torch.zeros(2, 3, 2), torch.zeros(2, 3, 2))
    lt = torch.tensor(0.0)
    with pytest.raises(ValueError, match="actions have shape"):
        dt_supervised_loss(d, torch.zeros(2, 3, 1), torch.ones(2, 3, dtype=torch.bool), lt, -2.0)
    with pytest.raises(ValueError, match="mask has shape"):
        dt_supervised_loss(d, torch.zeros(2, 3, 2), torch.ones(2, 4, dtype=torch.bool), lt, -2.0)
    assert masked_mean(torch.ones(3), torch.zeros(3, dtype=torch.bool)) == 0


def test_bf16_distribution_is_scored_in_fp32():
    d = SquashedGaussian(torch.zeros(2, 3, 2, dtype=torch.bfloat16), torch.zeros(2, 3, 2, dtype=torch.bfloat16))
    terms = dt_supervised_loss(d, torch.full((2, 3, 2), 0.999), torch.ones(2, 3, dtype=torch.bool),
                               torch.tensor(0.0), -2.0)
    assert terms["loss"].dtype == torch.float32 and torch.isfinite(terms["loss"])


# -- optimizer ----------------------------------------------------------------------------------

class _PaperLamb:
    """Test oracle written independently from the LAMB paper (You et al. 2020, Algorithm 2: bias-corrected
    Adam ratio r = m_hat / (sqrt(v_hat) + eps), update (r + wd * w) scaled by ||w|| / ||r + wd * w||) plus
    NVLAMB's global gradient pre-normalisation g / max(1, ||g|| / max_grad_norm), in plain Python floats,
    one scalar at a time. No package implements ODT's configuration exactly: torch-optimizer's Lamb
    clamps ||w|| and puts the bias correction outside the trust ratio, pytorch_optimizer's has no bias
    correction, timm's (the source of ODT's lamb.py) cannot be imported here without torchvision."""

    def __init__(self, tensors, lr, wd, eps=1e-8, b1=0.9, b2=0.999, max_grad_norm=1.0):
        self.w = [[float(x) for x in t.flatten()] for t in tensors]
        self.m = [[0.0] * len(w) for w in self.w]
        self.v = [[0.0] * len(w) for w in self.w]
        self.lr, self.wd, self.eps, self.b1, self.b2, self.max = lr, wd, eps, b1, b2, max_grad_norm
        self.t = 0

    def step(self, grads):
        self.t += 1
        g = [[float(x) for x in t.flatten()] for t in grads]
        norm = math.sqrt(sum(x * x for gi in g for x in gi))
        c = max(1.0, norm / self.max)
        for w, m, v, gi in zip(self.w, self.m, self.v, g):
            r = []
            for j in range(len(w)):
                gj = gi[j] / c
                m[j] = self.b1 * m[j] + (1 - self.b1) * gj
                v[j] = self.b2 * v[j] + (1 - self.b2) * gj * gj
                m_hat, v_hat = m[j] / (1 - self.b1 ** self.t), v[j] / (1 - self.b2 ** self.t)
                r.append(m_hat / (math.sqrt(v_hat) + self.eps) + self.wd * w[j])
            if self.wd != 0:
                wn, rn = math.sqrt(sum(x * x for x in w)), math.sqrt(sum(x * x for x in r))
                ratio = wn / rn if wn > 0 and rn > 0 else 1.0
            else:
                ratio = 1.0  # ODT's lamb.py adapts only parameters with weight decay
            for j in range(len(w)):
                w[j] -= self.lr * ratio * r[j]


@pytest.mark.parametrize("impl", ["flat", "foreach", "loop"])
@pytest.mark.parametrize("wd", [5e-4, 0.0])
@pytest.mark.parametrize("steps", [1, 5])
def test_lamb_matches_an_independent_implementation(impl, wd, steps):
    # ||w|| below 10, far above 10 (the old clamp), zero; gradients once above max_grad_norm 1.0
    torch.manual_seed(0)
    w0 = [torch.randn(3, 2, dtype=torch.float64) * 0.5, torch.randn(7, dtype=torch.float64) * 20.0,
          torch.zeros(4, dtype=torch.float64)]
    assert w0[0].norm() < 10 < w0[1].norm()
    grads = [[torch.randn_like(x) * (3.0 if s == 0 else 0.05) for x in w0] for s in range(steps)]
    params = [x.clone().requires_grad_() for x in w0]
    opt = Lamb(params, lr=0.01, weight_decay=wd, eps=1e-8, impl=impl)
    oracle = _PaperLamb(w0, lr=0.01, wd=wd)
    for gs in grads:
        _run_lamb(opt, params, [gs])
        oracle.step(gs)
        for p, w in zip(params, oracle.w):
            assert p.detach().flatten().tolist() == pytest.approx(w, rel=1e-10, abs=1e-12)
    moved = [(p.detach() - x).norm().item() for p, x in zip(params, w0)]
    if wd:  # the trust ratio makes a step's size proportional to ||w||, unclamped
        assert moved[1] > 10 * moved[0]


def test_lamb_in_float32_matches_in_float64_and_without_clipping():
    torch.manual_seed(1)
    w0 = [torch.randn(16, 16) * 3.0, torch.randn(16) * 0.1]
    grads = [[torch.randn_like(x) * 0.01 for x in w0] for _ in range(3)]
    for max_grad_norm in (1.0, None):
        params = [x.clone().requires_grad_() for x in w0]
        opt = Lamb(params, lr=1e-3, weight_decay=5e-4, eps=1e-8, max_grad_norm=max_grad_norm)
        oracle = _PaperLamb(w0, lr=1e-3, wd=5e-4, max_grad_norm=float("inf") if max_grad_norm is None else 1.0)
        for gs in grads:
            _run_lamb(opt, params, [gs])
            oracle.step(gs)
        for p, w in zip(params, oracle.w):
            assert p.detach().flatten().tolist() == pytest.approx(w, rel=1e-5, abs=1e-6)


def _run_lamb(opt, params, grad_seq):
    for gs in grad_seq:
        for x, g in zip(params, gs):
            x.grad = None if g is None else g.clone()
        opt.step()


def test_lamb_implementations_agree_and_flat_state_resumes():
    torch.manual_seed(0)
    ps = [torch.randn(5, 3), torch.randn(7), torch.randn(())]
    grads = [[torch.randn_like(x) for x in ps] for _ in range(6)]
    kw = dict(lr=0.01, weight_decay=5e-4)
    out = {}
    for impl in ("flat", "foreach", "loop"):
        params = [x.clone().requires_grad_() for x in ps]
        _run_lamb(Lamb(params, impl=impl, **kw), params, grads)
        out[impl] = params
    for impl in ("flat", "foreach"):
        for x, y in zip(out[impl], out["loop"]):
            assert torch.allclose(x, y, atol=1e-6), impl
    # 3 steps, save, load into a fresh optimizer, 3 more == 6 uninterrupted, bit for bit
    p1 = [x.clone().requires_grad_() for x in ps]
    o1 = Lamb(p1, impl="flat", **kw)
    _run_lamb(o1, p1, grads[:3])
    sd = copy.deepcopy(o1.state_dict())
    p2 = [x.detach().clone().requires_grad_() for x in p1]
    o2 = Lamb(p2, impl="flat", **kw)
    o2.load_state_dict(sd)
    _run_lamb(o2, p2, grads[3:])
    assert all(torch.equal(x, y) for x, y in zip(p2, out["flat"]))
    assert o2.state[p2[0]]["step"] == 6


def test_lamb_parameters_without_gradients_are_left_alone():
    torch.manual_seed(0)
    a, b = torch.randn(4, requires_grad=True), torch.randn(3, requires_grad=True)
    b0 = b.detach().clone()
    opt = Lamb([a, b], lr=0.1)  # auto: a missing gradient rules out the flat layout for that step
    _run_lamb(opt, [a, b], [[torch.randn(4), None]])
    assert torch.equal(b.detach(), b0) and len(opt.state[b]) == 0 and opt.state[a]["step"] == 1
    _run_lamb(opt, [a, b], [[torch.randn(4), torch.randn(3)]])  # now flat: a's moments are carried over
    assert opt.state[a]["step"] == 2 and opt.state[b]["step"] == 1 and not torch.equal(b.detach(), b0)
    with pytest.raises(RuntimeError, match="impl='flat'"):
        _run_lamb(Lamb([a, b], impl="flat"), [a, b], [[torch.randn(4), None]])


def test_warmup_schedule_and_optimizer_choice():
    p = torch.zeros(2, requires_grad=True)
    opt = make_optimizer([p], "lamb", lr=1.0, weight_decay=0.0)
    sched = warmup_schedule(opt, 4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(2)
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert isinstance(make_optimizer([p], "adamw", 1e-3, 1e-4), torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer([p], "sgd", 1e-3, 0.0)
    with pytest.raises(ValueError, match="learning rate"):
        Lamb([p], lr=-1.0)


def test_lamb_flat_gradient_buffer_is_the_same_step():
    """Lamb.flat_grad binds every .grad to a view of one buffer; zero_grad(set_to_none=False) zeroes it in
    place and backward accumulates into it: the steps equal those with separate gradients (impl foreach)."""
    torch.manual_seed(0)
    w0 = [torch.randn(4, 3), torch.randn(3), torch.randn(())]
    xs = [torch.randn(5, 4) for _ in range(4)]
    out = {}
    for flat in (True, False):
        ps = [w.clone().requires_grad_() for w in w0]
        opt = Lamb(ps, lr=0.01, weight_decay=5e-4, impl="auto" if flat else "foreach")
        for i, x in enumerate(xs):
            opt.zero_grad(set_to_none=not flat)
            ((x @ ps[0] + ps[1]).tanh().sum() * ps[2]).backward()
            if flat and i > 0:  # backward accumulated into the bound buffer itself
                buf = opt._flat[0]["grad"].untyped_storage().data_ptr()
                assert all(p.grad.untyped_storage().data_ptr() == buf for p in ps)
            if flat:
                g = opt.flat_grad()
                assert g is not None and g.numel() == 16 and all(p.grad.data_ptr() >= g.data_ptr() for p in ps)
                assert torch.equal(g[:12].view(4, 3), ps[0].grad)
            opt.step()
        out[flat] = ps
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert Lamb([torch.zeros(2, requires_grad=True)], impl="foreach").flat_grad() is None
