import math

import pytest
import torch

from dtrl.models.dt import DecisionTransformer, ModelConfig, SquashedGaussian


def _batch(B=3, T=4, S=5, A=2, pad=1):
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, :pad] = False
    return (torch.randn(B, T, S), torch.rand(B, T, A) * 2 - 1, torch.rand(B, T) * 100,
            torch.arange(T).repeat(B, 1), mask)


def test_shapes_and_temperature_in_state_dict(tiny_model_cfg):
    m = DecisionTransformer(5, 2, tiny_model_cfg)
    dist = m(*_batch())
    assert dist.mean.shape == (3, 4, 2) and dist.log_std.shape == (3, 4, 2)
    assert dist.log_prob(torch.zeros(3, 4, 2)).shape == (3, 4)
    sd = m.state_dict()
    assert "log_temperature" in sd and "state_mean" in sd and "reward_scale" in sd
    assert m.target_entropy == -2.0
    assert math.isclose(m.temperature.item(), tiny_model_cfg.init_temperature, rel_tol=1e-6)
    assert all(p is not m.log_temperature for p in m.policy_parameters())


def test_log_std_within_bounds(tiny_model_cfg):
    m = DecisionTransformer(5, 2, tiny_model_cfg)
    with torch.no_grad():
        m.log_std_head.bias.fill_(100.0)
    d = m(*_batch())
    assert d.log_std.max() <= tiny_model_cfg.log_std_max + 1e-6


def test_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    mean, log_std = torch.randn(64, 3), torch.randn(64, 3) * 0.5
    ours = SquashedGaussian(mean, log_std)
    ref = torch.distributions.TransformedDistribution(
        torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1),
        [torch.distributions.TanhTransform(cache_size=1)])
    a = ref.sample()
    a = a.clamp(-0.999, 0.999)
    assert torch.allclose(ours.log_prob(a), ref.log_prob(a), atol=1e-4)


def test_log_prob_finite_at_bounds():
    d = SquashedGaussian(torch.zeros(4, 2), torch.zeros(4, 2))
    a = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, -1.0], [0.0, 1.0]])
    lp = d.log_prob(a)
    assert torch.isfinite(lp).all()
    # pre-tanh log prob is stable for large |y| where a naive log(1 - tanh^2) is -inf
    y = torch.full((4, 2), 30.0)
    assert torch.isfinite(d.log_prob_pre_tanh(y)).all()


def test_causal_no_future_leak(tiny_model_cfg):
    torch.manual_seed(0)
    m = DecisionTransformer(5, 2, tiny_model_cfg).eval()
    s, a, r, t, mask = _batch(pad=0)
    d1 = m(s, a, r, t, mask)
    s2, a2 = s.clone(), a.clone()
    s2[:, -1] += 5.0  # change the future state
    a2[:, -2:] += 0.5  # the action at step t must not affect the prediction of step t
    d2 = m(s2, a2, r, t, mask)
    assert torch.allclose(d1.mean[:, :-2], d2.mean[:, :-2], atol=1e-6)
    a3 = a.clone()
    a3[:, -1] = 0.3
    d3 = m(s, a3, r, t, mask)
    assert torch.allclose(d1.mean, d3.mean, atol=1e-6)


def test_padding_does_not_change_real_positions(tiny_model_cfg):
    torch.manual_seed(0)
    cfg = tiny_model_cfg
    cfg.slot_embedding = False  # (the default) slot embeddings are position-dependent by design
    m = DecisionTransformer(5, 2, cfg).eval()
    s, a, r, t, mask = _batch(pad=2)
    d1 = m(s, a, r, t, mask)
    s2 = s.clone()
    s2[:, :2] = 123.0  # garbage in padded positions
    d2 = m(s2, a, r, t, mask)
    assert torch.allclose(d1.mean[:, 2:], d2.mean[:, 2:], atol=1e-5)


def test_same_seed_same_numbers(tiny_model_cfg):
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        m = DecisionTransformer(5, 2, tiny_model_cfg)
        torch.manual_seed(8)
        outs.append(m(*_batch()).mean)
    assert torch.equal(outs[0], outs[1])


def test_bad_config_rejected():
    from dtrl.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="divisible"):
        from_dict(ModelConfig, {"embed_dim": 30, "n_heads": 4})
    with pytest.raises(ConfigError, match="Did you mean 'n_layers'"):
        from_dict(ModelConfig, {"n_layer": 2})
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(ModelConfig, {"n_layers": "two"})


def test_default_is_odts_architecture(tiny_model_cfg):
    """ODT's --ordering 0: no timestep or positional embedding, ReLU MLPs; the timestep does not matter."""
    m = DecisionTransformer(5, 2, tiny_model_cfg).eval()
    assert m.embed_timestep is None and m.embed_slot is None
    names = [n for n, _ in m.named_parameters()]
    assert not any("timestep" in n or "slot" in n for n in names)
    acts = [type(x) for x in m.modules() if isinstance(x, (torch.nn.ReLU, torch.nn.GELU))]
    assert acts and set(acts) == {torch.nn.ReLU}
    s, a, r, t, mask = _batch()
    assert torch.equal(m(s, a, r, t, mask).mean, m(s, a, r, t + 17, mask).mean)


def test_embedding_and_activation_options(tiny_model_cfg):
    import dataclasses

    cfg = dataclasses.replace(tiny_model_cfg, timestep_embedding=True, slot_embedding=True, activation="gelu")
    m = DecisionTransformer(5, 2, cfg).eval()
    assert m.embed_timestep is not None and m.embed_slot is not None
    assert {type(x) for x in m.modules() if isinstance(x, (torch.nn.ReLU, torch.nn.GELU))} == {torch.nn.GELU}
    s, a, r, t, mask = _batch()
    assert not torch.allclose(m(s, a, r, t, mask).mean, m(s, a, r, t + 17, mask).mean)


def test_checkpoint_without_the_new_fields_loads_as_it_was_trained(tiny_model_cfg):
    """A payload written before timestep_embedding/activation existed had both (timestep on, GELU)."""
    import dataclasses

    from dtrl.models.checkpoint import dt_from_payload, dt_payload
    from dtrl.config import to_dict

    old = DecisionTransformer(5, 2, dataclasses.replace(tiny_model_cfg, timestep_embedding=True, activation="gelu",
                                                        init="normal"))
    payload = dt_payload(old)
    for k in ("timestep_embedding", "activation", "init"):
        del payload["model_cfg"][k]
    new = dt_from_payload(payload).eval()
    assert new.cfg.timestep_embedding and new.cfg.activation == "gelu" and new.cfg.init == "normal"
    assert to_dict(new.cfg) == to_dict(old.cfg)
    torch.manual_seed(0)
    b = _batch()
    assert torch.equal(new(*b).mean, old.eval()(*b).mean)


# -- initialisation (issue 18 item 1) -------------------------------------------------------------


def _rtg_sensitivity(m: DecisionTransformer, seed: int = 1) -> float:
    """Mean |action(RTG x 0.25) - action(RTG x 4)| over 64 contexts whose RTGs lie in [1000, 4000]."""
    g = torch.Generator().manual_seed(seed)
    B, T = 64, m.cfg.context_len
    s, a = torch.randn(B, T, m.obs_dim, generator=g), torch.rand(B, T, m.act_dim, generator=g) * 1.8 - 0.9
    r = 1000 + 3000 * torch.rand(B, T, generator=g)
    t, mask = torch.arange(T).repeat(B, 1), torch.ones(B, T, dtype=torch.bool)
    was = m.training
    m.eval()
    with torch.no_grad():
        lo, hi = (torch.tanh(m(s, a, r * f, t, mask).mean) for f in (0.25, 4.0))
    m.train(was)
    return (lo - hi).abs().mean().item()


@pytest.mark.parametrize("head", ["gaussian", "deterministic"])
def test_fresh_dt_conditions_on_the_rtgs_magnitude(tiny_model_cfg, head):
    """ODT's init (PyTorch's default for the RTG embedding, with a bias) makes a new DT's action move with
    the size of the RTG; dtrl's former N(0, 0.02)/zero-bias init left LayerNorm(w * rtg) with its sign only."""
    import dataclasses

    for seed in range(3):
        torch.manual_seed(seed)
        m = DecisionTransformer(5, 2, dataclasses.replace(tiny_model_cfg, action_head=head))
        assert _rtg_sensitivity(m) > 1e-4
        torch.manual_seed(seed)
        old = DecisionTransformer(5, 2, dataclasses.replace(tiny_model_cfg, action_head=head, init="normal"))
        assert _rtg_sensitivity(old) < 1e-6


def test_briefly_pretrained_dt_still_conditions_on_the_rtgs_magnitude(tiny_model_cfg):
    """30 LAMB updates on actions that depend on the RTG's size: the RTG keeps moving the action (ODT's
    init), while from the zero-bias init the RTG token still carries little more than its sign."""
    import dataclasses

    from dtrl.models.batching import ContextBatch
    from dtrl.harness.pretrain import SupervisedTrainer

    def pretrained(init: str) -> DecisionTransformer:
        torch.manual_seed(0)
        m = DecisionTransformer(5, 2, dataclasses.replace(tiny_model_cfg, init=init))
        trainer = SupervisedTrainer(m, lr=1e-3, warmup_updates=10)
        g = torch.Generator().manual_seed(7)
        for _ in range(30):
            s, r = torch.randn(64, 4, 5, generator=g), 1000 + 3000 * torch.rand(64, 4, generator=g)
            a = (0.8 * torch.tanh(r / 2000 - 1.25)).unsqueeze(-1).expand(-1, -1, 2)
            trainer.update(ContextBatch(s, a, r, torch.arange(4).repeat(64, 1), torch.ones(64, 4, dtype=torch.bool)))
        return m

    new, old = _rtg_sensitivity(pretrained("odt")), _rtg_sensitivity(pretrained("normal"))
    assert new > 1e-3 and new > 100 * old


def test_init_is_odts(tiny_model_cfg):
    """Gaussian head orthogonal with zero bias; embeddings PyTorch's default (uniform within 1/sqrt(fan_in),
    biases included); transformer blocks N(0, 0.02) with zero bias."""
    import dataclasses

    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_model_cfg, embed_dim=256, n_heads=4)
    m = DecisionTransformer(5, 3, cfg)
    for head in (m.mean_head, m.log_std_head):
        w = head.weight.detach()
        assert torch.allclose(w @ w.T, torch.eye(3), atol=1e-5) and torch.equal(head.bias, torch.zeros(3))
    for emb, fan_in in ((m.embed_return, 1), (m.embed_state, 5), (m.embed_action, 3)):
        bound = fan_in ** -0.5
        for p in (emb.weight, emb.bias):
            assert p.abs().max() <= bound
            assert p.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.15)  # U(-b, b), far from 0.02
    block = m.blocks[0]
    for lin in (block.qkv, block.proj, block.mlp[0], block.mlp[2]):
        assert lin.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    det = DecisionTransformer(5, 3, dataclasses.replace(cfg, action_head="deterministic"))
    assert det.mean_head.bias.abs().max() <= 256 ** -0.5 and det.mean_head.bias.abs().max() > 0  # PyTorch default
    old = DecisionTransformer(5, 3, dataclasses.replace(cfg, init="normal"))
    assert torch.equal(old.embed_return.bias, torch.zeros(256)) and old.mean_head.weight.std() < 0.03
