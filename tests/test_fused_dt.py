"""The fused training forward (dtrl.models.fused_dt) is the module's forward: same distribution, same dropout
masks from the same generator state, and through SupervisedTrainer the same losses and weights for a seed."""

import numpy as np
import pytest
import torch

from dtrl.config.model import ModelConfig
from dtrl.data.trajectories import Trajectory, TrajectoryDataset
from dtrl.harness.pretrain import SupervisedTrainer, build_dt
from dtrl.models.batching import ContextSampler
from dtrl.models.dt import DecisionTransformer
from dtrl.models.fused_dt import dropout_masks, fused_forward
from dtrl.tasks import get_task

TASK = get_task("hopper-medium")


def _data(n_traj=6, obs_dim=11, act_dim=3, seed=0):
    rng = np.random.default_rng(seed)
    trajs = []
    for n in rng.integers(3, 25, size=n_traj):  # short ones too, so contexts are left-padded
        trajs.append(Trajectory(rng.normal(size=(n, obs_dim)).astype(np.float32),
                                rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
                                rng.random(n).astype(np.float32), np.zeros(n, bool), np.zeros(n, bool)))
    return TrajectoryDataset(trajs, source="synthetic")


def _model(ds, seed=0, **cfg):
    kw = dict(embed_dim=16, n_layers=2, n_heads=2, dropout=0.1, context_len=5, eval_context_len=2)
    kw.update(cfg)
    torch.manual_seed(seed)
    return build_dt(ModelConfig(**kw), TASK, ds).train()


def _batch(ds, k=5, n=12):
    b = ContextSampler(ds.trajectories, k, rng=np.random.default_rng(1)).sample(n)
    assert not b.mask.all()  # some padding
    return b


def test_dropout_masks_are_torch_dropouts_masks():
    shapes = [(3, 7, 5), (2, 4, 4), (50,)]
    torch.manual_seed(11)
    ones = [torch.ones(s) for s in shapes]
    want = [torch.nn.functional.dropout(x, 0.3, training=True) for x in ones]
    after_want = torch.rand(4)
    torch.manual_seed(11)
    got = dropout_masks(shapes, 0.3, torch.device("cpu"))
    assert torch.equal(torch.rand(4), after_want)  # the generator ends where dropout leaves it
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    assert 0 < (got[2] == 0).sum() < 50


@pytest.mark.parametrize("cfg", [
    {},
    {"n_layers": 1, "activation": "gelu", "timestep_embedding": True, "slot_embedding": True},
    {"n_layers": 3, "action_head": "deterministic"},
    {"dropout": 0.0},
])
def test_same_distribution_and_generator_state_as_the_module(cfg):
    ds = _data()
    model = _model(ds, **cfg)
    b = _batch(ds)
    args = (b.states, b.actions, b.rtg, b.timesteps, b.mask)
    for k in (5, 3):  # full and shorter context
        a = tuple(x[:, -k:] for x in args)
        torch.manual_seed(3)
        want = model(*a)
        state_want = torch.get_rng_state()
        torch.manual_seed(3)
        got = fused_forward(model, *a)
        assert torch.equal(torch.get_rng_state(), state_want)
        assert type(got) is type(want)
        torch.testing.assert_close(got.mean, want.mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.log_std, want.log_std, rtol=1e-5, atol=1e-6)
    model.eval()  # no dropout: nothing drawn
    state = torch.get_rng_state()
    torch.testing.assert_close(fused_forward(model, *args).mean, model(*args).mean, rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.get_rng_state(), state)


def _train(fused, ds, updates=8, **cfg):
    model = _model(ds, seed=4, **cfg)
    trainer = SupervisedTrainer(model, lr=1e-3, warmup_updates=2, fused_forward=fused)
    assert trainer.fused_forward is fused
    sampler = ContextSampler(ds.trajectories, model.cfg.context_len, rng=np.random.default_rng(2))
    torch.manual_seed(5)
    terms = [trainer.update(sampler.sample(16)) for _ in range(updates)]
    return torch.stack([torch.stack(list(t.values())) for t in terms]), model


@pytest.mark.parametrize("head", ["gaussian", "deterministic"])
def test_trainer_same_losses_and_weights_for_a_seed(head):
    """Pretraining's and ODT's update (SupervisedTrainer) with dropout 0.1: the fused path and the module's
    forward give the same loss terms at every update and the same weights after them."""
    ds = _data()
    plain, m_plain = _train(False, ds, action_head=head)
    fused, m_fused = _train(True, ds, action_head=head)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(m_plain.named_parameters(), m_fused.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(m_plain.blocks[0].qkv.weight, _model(ds, seed=4, action_head=head).blocks[0].qkv.weight)


def test_fused_forward_only_where_it_is_the_same_function():
    ds = _data()
    model = _model(ds)
    assert SupervisedTrainer(model).fused_forward
    assert not SupervisedTrainer(model, fused_forward=False).fused_forward

    class Other(DecisionTransformer):  # another backbone's forward is not the DT's
        pass

    other = Other(11, 3, model.cfg)
    assert not SupervisedTrainer(other).fused_forward
    model.blocks[1].attn_dropout = 0.2
    with pytest.raises(ValueError, match="one dropout rate"):
        fused_forward(model, *(torch.zeros(2, 5, 11), torch.zeros(2, 5, 3), torch.zeros(2, 5),
                               torch.zeros(2, 5, dtype=torch.long)))
