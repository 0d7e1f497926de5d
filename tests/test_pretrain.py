import csv
import dataclasses

import json

import numpy as np
import pytest
import torch

from dtrl.models.checkpoint import load_pretrained_dt
from dtrl.util.io import InputError
from dtrl.config import ConfigError
from dtrl.data.trajectories import DataError, Trajectory, TrajectoryDataset
from dtrl.config.experiment import ExperimentConfig
from dtrl.util.io import read_json, torch_load
from dtrl.models.dt import ModelConfig
from dtrl.harness.pretrain import PRETRAIN_COLUMNS, PRETRAIN_COLUMNS_DETERMINISTIC, SupervisedTrainer, cmd_pretrain, pretrain
from dtrl.config.pretrain import PretrainConfig
from dtrl.tasks import get_task

TASK = get_task("pendulum-medium")


def _dataset(seed=0, n_traj=12, obs_dim=3, act_dim=2):
    """Actions are a fixed smooth function of the state: a DT can fit them, so its NLL must drop."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(obs_dim, act_dim))
    trajs = []
    for n in rng.integers(8, 30, size=n_traj):
        obs = rng.normal(size=(n, obs_dim)).astype(np.float32) * 2 + 1
        act = (0.9 * np.tanh(obs @ w)).astype(np.float32)
        trajs.append(Trajectory(obs, act, rng.random(n).astype(np.float32), np.zeros(n, bool), np.zeros(n, bool)))
    return TrajectoryDataset(trajs, source="synthetic")


def _exp(tmp_path, dropout=0.1, action_head="gaussian", **pretrain):
    kw = dict(updates=20, batch_size=16, lr=1e-3, warmup_updates=5, log_every=5, checkpoint_every=10,
              eval_episodes=0)
    kw.update(pretrain)
    return ExperimentConfig(
        results=str(tmp_path), device="cpu",
        model=ModelConfig(embed_dim=32, n_layers=1, n_heads=2, dropout=dropout, context_len=4, eval_context_len=2,
                          action_head=action_head),
        pretrain=PretrainConfig(**kw))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _weights(path):
    return torch_load(path)["dt"]["model"]


def test_loss_decreases_on_synthetic_data(tmp_path):
    exp = _exp(tmp_path, dropout=0.0, updates=150, batch_size=32, warmup_updates=10, log_every=10,
               checkpoint_every=1000)
    s = pretrain(exp, TASK, 0, _dataset())
    rows = _rows(tmp_path / "pretrain/pendulum-medium/seed0/pretrain.csv")
    nll = [float(r["nll"]) for r in rows]
    assert nll[-1] < nll[0] - 2.0, nll
    assert s["final_nll"] == pytest.approx(nll[-1])
    assert np.isfinite([float(r["loss"]) for r in rows]).all()


def test_deterministic_dt_is_pretrained_with_the_masked_mse(tmp_path):
    exp = _exp(tmp_path, dropout=0.0, action_head="deterministic", updates=300, batch_size=32, warmup_updates=10,
               log_every=10, checkpoint_every=1000)
    ds = _dataset()
    s = pretrain(exp, TASK, 0, ds)
    out = tmp_path / "pretrain_det/pendulum-medium/seed0"  # apart from the stochastic DT's pretrain/
    rows = _rows(out / "pretrain.csv")
    assert list(rows[0]) == PRETRAIN_COLUMNS_DETERMINISTIC
    mse = [float(r["mse"]) for r in rows]
    assert mse[-1] < 0.5 * mse[0], mse
    assert all(float(r["loss"]) == float(r["mse"]) for r in rows)  # the MSE is the whole loss
    assert s["final_mse"] == pytest.approx(mse[-1]) and s["action_head"] == "deterministic"
    assert s["final_nll"] is None and s["final_temperature"] is None
    ckpt = torch_load(out / "model.pt")
    assert ckpt["trainer"]["temperature_optimizer"] is None
    model = load_pretrained_dt(out / "model.pt")
    assert model.cfg.action_head == "deterministic" and model.log_temperature is None
    # the logged MSE is the reference's ((a_hat - a) ** 2)[mask > 0].mean() of the trained model
    from dtrl.models.batching import ContextSampler

    b = ContextSampler(ds.trajectories, 4, rng=np.random.default_rng(0)).sample(64)
    model.eval()
    with torch.no_grad():
        pred = model(b.states, b.actions, b.rtg, b.timesteps, b.mask).mode
    trainer = SupervisedTrainer(model, warmup_updates=0)
    with torch.no_grad():
        terms = trainer._losses(b.states, b.actions, b.rtg, b.timesteps, b.mask)
    torch.testing.assert_close(terms["loss"], ((pred - b.actions) ** 2)[b.mask].mean())
    assert not (tmp_path / "pretrain").exists()


def test_outputs_and_model_file(tmp_path, capsys):
    ds = _dataset()
    out = tmp_path / "run"
    s = pretrain(_exp(tmp_path), TASK, 3, ds, out)
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "pretrain.csv", "summary.json"]  # checkpoint removed
    rows = _rows(out / "pretrain.csv")
    assert list(rows[0]) == PRETRAIN_COLUMNS
    assert [int(r["updates"]) for r in rows] == [5, 10, 15, 20]
    assert float(rows[0]["lr"]) == pytest.approx(1e-3 / 5 * 5)  # warmup of 5: full lr by the 5th update
    summary = read_json(out / "summary.json")
    assert summary == s and summary["updates"] == 20 and summary["seed"] == 3
    for k in ("wall_time", "updates_per_s", "final_loss", "final_entropy", "final_temperature"):
        assert np.isfinite(summary[k]), k
    ckpt = torch_load(out / "model.pt")
    assert ckpt["task"] == TASK.name and ckpt["updates"] == 20 and ckpt["config"]["pretrain"]["updates"] == 20
    assert set(ckpt["trainer"]) == {"optimizer", "scheduler", "temperature_optimizer", "updates"}
    model = load_pretrained_dt(out / "model.pt")
    mean, std = ds.state_stats()
    assert torch.allclose(model.state_mean, torch.as_tensor(mean)) and torch.allclose(model.state_std, torch.as_tensor(std))
    assert model.reward_scale.item() == pytest.approx(TASK.reward_scale)
    assert model.cfg.max_timestep >= TASK.max_episode_steps
    assert (model.obs_dim, model.act_dim) == (3, 2)
    # a finished run is not redone
    assert pretrain(_exp(tmp_path, updates=50), TASK, 3, ds, out) == s
    assert cmd_pretrain(_exp(tmp_path), TASK.name, 3, out) == 0
    assert "nothing to do" in capsys.readouterr().out
    # A workflow rerun removes summary.json (the job's output) first: one clear error, the weights kept.
    (out / "summary.json").unlink()
    with pytest.raises(InputError, match="exists but its summary.json does not"):
        cmd_pretrain(_exp(tmp_path), TASK.name, 3, out)
    assert (out / "model.pt").exists()


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    ds = _dataset()
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        pretrain(_exp(tmp_path, updates=10), TASK, seed, ds, tmp_path / name)
    a, b, c = (_weights(tmp_path / n / "model.pt") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("optimizer", ["lamb", "adamw"])
def test_resume_after_kill_gives_identical_weights(tmp_path, monkeypatch, optimizer):
    ds = _dataset()
    exp = _exp(tmp_path, updates=20, checkpoint_every=10, optimizer=optimizer)  # dropout on: torch RNG matters
    pretrain(exp, TASK, 0, ds, tmp_path / "whole")

    real_update = SupervisedTrainer.update
    calls = {"n": 0}

    def dying_update(self, batch):
        calls["n"] += 1
        if calls["n"] == 15:  # 5 updates past the checkpoint at 10: their work and CSV row are lost
            raise _Killed
        return real_update(self, batch)

    monkeypatch.setattr(SupervisedTrainer, "update", dying_update)
    with pytest.raises(_Killed):
        pretrain(exp, TASK, 0, ds, tmp_path / "killed")
    run = tmp_path / "killed"
    assert (run / "checkpoint.pt").exists() and not (run / "model.pt").exists()
    assert [int(r["updates"]) for r in _rows(run / "pretrain.csv")] == [5, 10]
    monkeypatch.setattr(SupervisedTrainer, "update", real_update)

    # Resuming must not lean on the process's RNG state: scramble it first.
    torch.manual_seed(1234)
    np.random.seed(1234)
    pretrain(exp, TASK, 0, ds, run)
    whole, resumed = _weights(tmp_path / "whole/model.pt"), _weights(run / "model.pt")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    a, b = _rows(tmp_path / "whole/pretrain.csv"), _rows(run / "pretrain.csv")
    assert [r["updates"] for r in b] == [r["updates"] for r in a] == ["5", "10", "15", "20"]
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    # the compute axis continues from the checkpoint's CPU-seconds: rising across the resume, not restarted
    cpu = [float(r["cpu_s"]) for r in b]
    assert cpu[0] > 0 and all(y > x for x, y in zip(cpu, cpu[1:]))
    assert json.loads((run / "summary.json").read_text())["cpu_s"] >= cpu[-1]


def test_resume_refuses_a_different_model(tmp_path, monkeypatch):
    ds = _dataset()
    exp = _exp(tmp_path, updates=20, checkpoint_every=10)
    real_update = SupervisedTrainer.update
    calls = {"n": 0}

    def dying_update(self, batch):
        calls["n"] += 1
        if calls["n"] == 12:
            raise _Killed
        return real_update(self, batch)

    monkeypatch.setattr(SupervisedTrainer, "update", dying_update)
    with pytest.raises(_Killed):
        pretrain(exp, TASK, 0, ds, tmp_path / "r")
    monkeypatch.setattr(SupervisedTrainer, "update", real_update)
    other = dataclasses.replace(exp, model=dataclasses.replace(exp.model, embed_dim=64))
    with pytest.raises(ConfigError, match="model config differs"):
        pretrain(other, TASK, 0, ds, tmp_path / "r")


def test_bad_datasets_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="no trajectories"):
        pretrain(_exp(tmp_path), TASK, 0, TrajectoryDataset([], source="empty.hdf5"))
    ds = _dataset()
    ds.trajectories[2].observations[1, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        pretrain(_exp(tmp_path), TASK, 0, ds)
    with pytest.raises(ConfigError, match="eval_episodes"):
        PretrainConfig(eval_episodes=-1).validate()


def test_trajectories_longer_than_the_timestep_table(tmp_path):
    rng = np.random.default_rng(0)
    n = 1500  # longer than pendulum's 1000-step limit: the table must still cover every timestep
    ds = TrajectoryDataset([Trajectory(rng.normal(size=(n, 3)).astype(np.float32),
                                       rng.uniform(-1, 1, (n, 2)).astype(np.float32), np.ones(n, np.float32),
                                       np.zeros(n, bool), np.zeros(n, bool))])
    pretrain(_exp(tmp_path, updates=2, log_every=1), TASK, 0, ds, tmp_path / "long")
    assert load_pretrained_dt(tmp_path / "long/model.pt").cfg.max_timestep >= n


def test_evaluation_after_pretraining(tmp_path):
    pytest.importorskip("mujoco")
    pytest.importorskip("dtrl.harness.evaluate")
    from dtrl.tasks import with_overrides

    task = with_overrides(get_task("pendulum-medium"), max_episode_steps=20)
    rng = np.random.default_rng(0)
    trajs = [Trajectory(rng.normal(size=(20, 4)).astype(np.float32), rng.uniform(-1, 1, (20, 1)).astype(np.float32),
                        np.ones(20, np.float32), np.zeros(20, bool), np.ones(20, bool)) for _ in range(3)]
    s = pretrain(_exp(tmp_path, updates=5, eval_episodes=2), task, 0, TrajectoryDataset(trajs))
    assert len(s["eval_returns"]) == 2 and s["eval_episodes"] == 2
    assert all(0 < r <= 20 for r in s["eval_returns"])
    assert np.isfinite(s["eval_norm_return"])


def test_trainer_falls_back_to_eager_when_compilation_fails(tiny_model_cfg):
    from dtrl.models.batching import ContextSampler
    from dtrl.harness.pretrain import build_dt

    ds = _dataset()
    model = build_dt(dataclasses.replace(tiny_model_cfg, context_len=4), TASK, ds)
    trainer = SupervisedTrainer(model, lr=1e-3)

    def broken(*args):
        raise RuntimeError("inductor exploded")

    c = trainer.compiled
    c.mode, c.fn, c.unproven = "default", broken, True  # as on a GPU
    batch = ContextSampler(ds.trajectories, 4, rng=np.random.default_rng(0)).sample(8)
    with pytest.warns(RuntimeWarning, match="inductor exploded"):
        out = trainer.update(batch)
    assert trainer.compile == "off" and trainer.updates == 1
    assert set(out) == set(SupervisedTrainer.TERMS) and all(torch.isfinite(v) for v in out.values())
    trainer.update(batch)  # and keeps going eagerly, without warning again


def test_amp_off_is_fp32_throughout():
    """amp: off = the reference's fp32 numerics on CUDA: no autocast, and TF32 matmuls off; bf16 (the default)
    autocasts and lets the matmuls it leaves in fp32 use TF32."""
    import contextlib

    from dtrl.harness.pretrain import amp_dtype_of, autocast, fp32_matmul_precision

    assert amp_dtype_of("off") is None and isinstance(autocast("cuda", amp_dtype_of("off")), contextlib.nullcontext)
    assert fp32_matmul_precision("off") == "highest" and fp32_matmul_precision("bf16") == "high"
    assert amp_dtype_of("bf16") is torch.bfloat16 and not isinstance(autocast("cuda", torch.bfloat16),
                                                                       contextlib.nullcontext)
    assert PretrainConfig().amp == "bf16"
