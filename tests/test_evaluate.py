"""`dtrl evaluate` on a checkpoint of a method without a DT (IQL): the run's final score, the seed it used."""

from __future__ import annotations

import sys
import types

import pytest

from dtrl.config.experiment import load_config
from dtrl.tasks import get_task

from test_iql import pd_dataset

TASK = "pendulum-medium"


@pytest.fixture
def iql_run(tmp_path, monkeypatch):
    """A finished IQL run (seed 2) of a small config, its dataset handed to finetune in memory."""
    from dtrl.workflow.finetune import finetune

    ds = pd_dataset(get_task(TASK), 8, noise=0.8)
    sources = types.ModuleType("dtrl.data.sources")
    sources.load_task_dataset = lambda exp, t, reference_keeps_tail=False: ds
    monkeypatch.setitem(sys.modules, "dtrl.data.sources", sources)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"""\
results: {tmp_path}
device: cpu
eval: {{episodes: 2, final_episodes: 3}}
online: {{env_steps: 200, eval_every_env_steps: 100, progress: false}}
methods:
  iql_small: {{algo: iql, hidden_dims: [32, 32], batch_size: 32, offline_updates: 100,
              offline_updates_per_iteration: 100, env_steps_per_iteration: 100, n_envs: 2, offline_eval_episodes: 1}}
""")
    summary = finetune(load_config(cfg), "iql_small", TASK, 2)
    return cfg, tmp_path / f"runs/iql_small/{TASK}/seed2/checkpoint.pt", summary


def test_evaluate_scores_an_iql_checkpoint_as_its_run_did(iql_run, capsys):
    from dtrl.cli import main
    from dtrl.harness.evaluate import evaluate_checkpoint

    cfg, ckpt, summary = iql_run
    exp = load_config(cfg)
    got = evaluate_checkpoint(exp, ckpt, TASK)  # no seed: the one the checkpoint records
    assert (got.seed, got.seed_from) == (2, "the checkpoint")
    assert got.returns.tolist() == summary["final_returns"]
    other = evaluate_checkpoint(exp, ckpt, TASK, seed=0)
    assert (other.seed, other.seed_from) == (0, "--seed") and other.returns.tolist() != summary["final_returns"]

    assert main(["evaluate", "--checkpoint", str(ckpt), "--task", TASK, "-c", str(cfg)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run seed 2 (recorded in the checkpoint; --seed N for another)"), lines
    assert f"normalised {summary['final_norm_return']:.2f} " in lines[1]
    # Episode lengths beside the return: what the return is made of (how long the policy stays up).
    n = got.lengths
    assert n.shape == got.returns.shape and n.min() >= 1
    assert f"episode length {n.mean():.1f} +- {n.std():.1f} (min {n.min()}, max {n.max()}" in lines[2]
    assert f"return per step {got.returns.sum() / n.sum():.3f}" in lines[2]
    # An RTG means nothing to an MLP policy: one error line, exit 2.
    assert main(["evaluate", "--checkpoint", str(ckpt), "--task", TASK, "-c", str(cfg), "--rtg", "100"]) == 2
    assert "holds no Decision Transformer, so --rtg does not apply" in capsys.readouterr().err


def test_evaluate_refuses_an_iql_checkpoint_of_another_task(iql_run, capsys):
    from dtrl.cli import main

    cfg, ckpt, _ = iql_run
    assert main(["evaluate", "--checkpoint", str(ckpt), "--task", "hopper-medium", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dtrl evaluate: error: ") and "policy does not fit hopper-medium" in err
    assert len(err.strip().splitlines()) == 1
