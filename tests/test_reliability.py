"""Trustworthy runs (issue 10): divergence caught per method, every bad input one clear error, no
silent config drift on resume or in a report cell, exact SAC resume, strict JSON, safe file writes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dtrl import cli
from dtrl.data.d4rl_hdf5 import write_d4rl
from dtrl.data.trajectories import TrajectoryDataset
from dtrl.config.experiment import load_config
from dtrl.util.io import atomic_write_json, atomic_write_text, remove_stale_temps, torch_load
from dtrl.config.registry import get_algorithm
from dtrl.harness.rollout import RolloutEngine, collect_episodes
from dtrl.tasks import get_task

from helpers import tiny_dt, write_pretrained

TASK = "pendulum-medium"
REPO = Path(__file__).resolve().parents[1]
NAN = float("nan")

# Small settings per method: a few updates per iteration, short groups.
PARAMS = {
    "none": {},
    "grpo": dict(group_size=2, reset_points=2, traj_len=3, eval_len=3, explore_episodes=1, minibatch_size=2,
                 epochs=1, drop_zero_spread=False),
    "qgrpo": dict(group_size=2, states_per_iteration=4, minibatch_size=4, epochs=1, critic_batch_size=8,
                  critic_warmup_updates=0, critic_hidden=[16]),
    "ppo_dt": dict(explore_episodes=1, minibatch_size=8, epochs=1, value_epochs=1, value_hidden=[16]),
    "odt": dict(updates_per_iteration=3, batch_size=8, warmup_updates=5),
    "odt_td3": dict(updates_per_iteration=4, batch_size=8, warmup_updates=5, critic_warmup_updates=2,
                    critic_hidden=[16]),
    "iql": dict(hidden_dims=[16], batch_size=16, offline_updates=30, offline_updates_per_iteration=10,
                env_steps_per_iteration=10, n_envs=1, offline_eval_episodes=0),
}


def strict_json(path: Path):
    """Parse as any JSON reader would: a bare NaN/Infinity token fails."""
    def bad(token):
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=bad)


def tree_hash(root: Path) -> dict[str, str]:
    """Path -> (mode, content hash) of every file under ``root``, and every directory (an empty one left behind
    by a failed command is residue too)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = f"{stat.S_IMODE(p.stat().st_mode):o}:" + \
                hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root))] = "dir"
    return out


def offline_dataset(n: int = 8) -> TrajectoryDataset:
    model = tiny_dt(TASK, seed=1)
    eng = RolloutEngine(get_task(TASK), n, model.cfg.context_len, seed=0)
    return TrajectoryDataset(collect_episodes(eng, model, n, 100.0, seeds=range(n)))


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pendulum.hdf5"
    write_d4rl(path, offline_dataset())
    return path


def config_file(tmp_path: Path, dataset: Path, method: str, **over) -> Path:
    """A YAML experiment: results under tmp_path/results, the dataset outside it, tiny everything."""
    cfg = {"results": str(tmp_path / "results"), "device": "cpu",
           "grid": {"methods": [method], "tasks": [TASK], "seeds": [0]},
           "data": {"sources": {TASK: {"d4rl": str(dataset)}}},
           "model": {"embed_dim": 16, "n_layers": 1, "n_heads": 2, "context_len": 4, "eval_context_len": 2},
           "pretrain": {"updates": 20, "batch_size": 8, "warmup_updates": 5, "log_every": 5,
                        "checkpoint_every": 10, "eval_episodes": 0},
           "eval": {"episodes": 1, "final_episodes": 1},
           "online": {"env_steps": 100_000, "max_iterations": 3, "eval_every_env_steps": 100_000,
                      "progress": False},
           "methods": {method: dict(PARAMS.get(method, {}))}}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(capsys, argv: list[str]) -> tuple[int, list[str]]:
    """``dtrl ARGV`` in-process: (exit code, the lines it wrote to stderr)."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def assert_one_error_line(lines: list[str], *fragments: str) -> str:
    errors = [ln for ln in lines if ": error: " in ln]
    assert len(errors) == 1, lines
    assert not any("Traceback" in ln for ln in lines), lines
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


def pretrained_path(tmp_path: Path, method: str = "grpo") -> Path:
    """Where the workflow puts the pretrained DT ``method`` finetunes (ODT+TD3's deterministic one apart)."""
    from dtrl.config.registry import get_algorithm
    from dtrl.config.pretrain import HEAD_DIRS

    return tmp_path / f"results/{HEAD_DIRS[get_algorithm(method).pretrained_head]}/{TASK}/seed0/model.pt"


def pretrained_dt_for(method: str):
    """A tiny DT with the action head ``method`` finetunes."""
    from dtrl.config.registry import get_algorithm

    return tiny_dt(TASK, embed_dim=16, n_heads=2, action_head=get_algorithm(method).pretrained_head)


# -- fault injection: a NaN in one loss term of each method ---------------------------------------------

def _patch_entropy(mp):
    from dtrl.models.dt import SquashedGaussian

    orig = SquashedGaussian.entropy
    mp.setattr(SquashedGaussian, "entropy", lambda self, *a, **k: orig(self, *a, **k) * NAN)


def _patch_value_loss(mp):
    import types

    import torch.nn.functional as F

    import dtrl.methods.ppo_dt

    mp.setattr(dtrl.methods.ppo_dt, "F", types.SimpleNamespace(mse_loss=lambda a, b: F.mse_loss(a, b) * NAN))


def _patch_value_net(mp):
    from dtrl.harness.critic import ValueNet

    orig = ValueNet.scaled
    mp.setattr(ValueNet, "scaled", lambda self, *a: orig(self, *a) * NAN)


def _patch_twin_q(mp):
    from dtrl.harness.critic import TwinQ

    orig = TwinQ.forward
    mp.setattr(TwinQ, "forward", lambda self, *a: tuple(q * NAN for q in orig(self, *a)))


def _patch_supervised(term):
    def patch(mp):
        import dtrl.harness.pretrain

        orig = dtrl.harness.pretrain.dt_supervised_loss

        def loss(*a, **k):
            terms = orig(*a, **k)
            terms[term] = terms[term] * NAN
            return terms

        mp.setattr(dtrl.harness.pretrain, "dt_supervised_loss", loss)
    return patch


def _patch_td3_critic(mp):
    from baselines.odt_td3 import ODTTD3

    orig = ODTTD3.critic_loss

    def critic_loss(self, batch):
        terms = orig(self, batch)
        terms["critic_loss"] = terms["critic_loss"] * NAN
        return terms

    mp.setattr(ODTTD3, "critic_loss", critic_loss)


def _patch_expectile(mp):
    import baselines.iql

    orig = baselines.iql.expectile_loss
    mp.setattr(baselines.iql, "expectile_loss", lambda diff, e: orig(diff, e) * NAN)


# method -> (fault applied from the 2nd iteration on, term named first, config key named)
FAULTS = {
    "grpo": (_patch_entropy, "entropy", "methods.grpo.entropy_coef"),
    "qgrpo": (_patch_twin_q, "critic_loss", "methods.qgrpo.critic_lr"),
    "ppo_dt": (_patch_value_loss, "value_loss", "methods.ppo_dt.value_lr"),
    # a broken value net shows first in the advantages, before the policy update it would break
    "ppo_dt-value-net": (_patch_value_net, "advantages", "methods.ppo_dt.value_lr"),
    "odt": (_patch_supervised("loss_temperature"), "loss_temperature", "methods.odt.temperature_lr"),
    "odt_td3": (_patch_td3_critic, "critic_loss", "methods.odt_td3.critic_lr"),
    "iql": (_patch_expectile, "value_loss", "methods.iql.value_lr"),
}


def assert_reported_not_scored(cfg: Path, method: str, status: str = "diverged") -> None:
    """The report lists the run as not scored, and dtrl check-run agrees: it follows the contract, not scored."""
    from dtrl.harness.run_schema import check_run
    from dtrl.report.build import report

    exp = load_config(cfg)
    run = Path(exp.results) / f"runs/{method}/{TASK}/seed0"
    assert check_run(run) == [], check_run(run)
    assert cli.main(["check-run", str(run)]) == cli.EXIT_DIVERGED
    res = report(exp, figures=False, reps=10)
    assert [(r["method"], r["seed"], r["status"]) for r in res["not_scored"]] == [(method, 0, status)]
    root = Path(exp.results) / "tables"
    main = root / "main.csv"
    import pandas as pd

    row = pd.read_csv(main).set_index("task").loc[TASK]
    assert row[f"{method}_seeds"] == 0 and np.isnan(row[f"{method}_mean"])  # not scored
    assert f"| {method} | {TASK} | 0 | {status} |" in (root / "not_scored.md").read_text()


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_a_nan_loss_term_stops_each_method_with_one_error(tmp_path, dataset_file, capsys, monkeypatch, case):
    method = case.split("-")[0]
    cfg = config_file(tmp_path, dataset_file, method)
    write_pretrained(pretrained_path(tmp_path, method), pretrained_dt_for(method))
    run = tmp_path / f"results/runs/{method}/{TASK}/seed0"
    patch, term, key = FAULTS[case]
    cls = get_algorithm(method)
    orig, seen = cls.train_iteration, {}

    def train_iteration(self):  # the fault starts in iteration 2, after iteration 1's checkpoint
        if self.ctx.counters.iterations >= 1:
            seen["checkpoint"] = (run / "checkpoint.pt").read_bytes()  # the last one before each iteration
            if self.ctx.counters.iterations == 1:
                patch(monkeypatch)
        return orig(self)

    monkeypatch.setattr(cls, "train_iteration", train_iteration)
    rc, lines = run_cli(capsys, ["finetune", "--method", method, "--task", TASK, "--seed", 0, "--config", cfg])
    assert rc == cli.EXIT_DIVERGED
    line = assert_one_error_line(lines, f"{method} diverged at iteration 2", f"non-finite {term}", key,
                                 "its last checkpoint (iteration 1, all finite) is kept")
    s = strict_json(run / "summary.json")
    assert s["status"] == "diverged" and s["final_norm_return"] is None and s["iterations"] == 1
    assert s["divergence"]["config_key"] == key and s["divergence"]["terms"][0] == term
    assert s["divergence"]["message"] in line
    # The checkpoint of iteration 1 is intact: the same bytes, finite, resumable.
    assert (run / "checkpoint.pt").read_bytes() == seen["checkpoint"]
    assert torch_load(run / "checkpoint.pt")["counters"]["iterations"] == 1
    assert_reported_not_scored(cfg, method)
    # Asked again, the run is not redone: the same error, from its summary, and how to start it over.
    rc, lines = run_cli(capsys, ["finetune", "--method", method, "--task", TASK, "--seed", 0, "--config", cfg])
    again = assert_one_error_line(lines)
    assert rc == cli.EXIT_DIVERGED and again.startswith(line) and f"delete {run}, or pass --restart-diverged" in again


# -- fault injection: finite losses, a policy that emits NaN ----------------------------------------------

def _nan_dt_outputs(mp):
    """Every DT forward the rollout engine makes (exploration, groups, evaluation) emits NaN action means."""
    orig = RolloutEngine.policy
    mp.setattr(RolloutEngine, "policy", lambda self, *a, **k: type(d := orig(self, *a, **k))(d.mean * NAN, d.log_std))


def _nan_iql_actions(mp):
    """The actor's means are NaN where it acts (no gradient); its loss, which needs one, stays finite."""
    from baselines.iql import GaussianActor

    orig = GaussianActor.forward

    def forward(self, obs):
        mean, log_std = orig(self, obs)
        return (mean if torch.is_grad_enabled() else mean * NAN), log_std

    mp.setattr(GaussianActor, "forward", forward)


# method -> (fault, term named, config key named)
OUTPUT_FAULTS = {m: (_nan_dt_outputs, "action means", f"methods.{m}.lr") for m in ("grpo", "qgrpo", "ppo_dt", "odt",
                                                                                     "odt_td3")}
OUTPUT_FAULTS["none"] = (_nan_dt_outputs, "action means", "pretrain.lr")
OUTPUT_FAULTS["iql"] = (_nan_iql_actions, "actor actions", "methods.iql.actor_lr")


@pytest.mark.parametrize("method", sorted(OUTPUT_FAULTS))
def test_a_policy_emitting_nan_with_finite_losses_ends_diverged_and_unscored(tmp_path, dataset_file, capsys,
                                                                            monkeypatch, method):
    """No loss term goes non-finite; the policy's outputs do, from iteration 2 on (the offline DT: from the start)."""
    cfg = config_file(tmp_path, dataset_file, method)
    write_pretrained(pretrained_path(tmp_path, method), pretrained_dt_for(method))
    run = tmp_path / f"results/runs/{method}/{TASK}/seed0"
    patch, term, key = OUTPUT_FAULTS[method]
    cls = get_algorithm(method)
    if method == "none":
        patch(monkeypatch)
    else:
        orig = cls.train_iteration

        def train_iteration(self):
            if self.ctx.counters.iterations == 1:
                patch(monkeypatch)
            return orig(self)

        monkeypatch.setattr(cls, "train_iteration", train_iteration)
    rc, lines = run_cli(capsys, ["finetune", "--method", method, "--task", TASK, "--seed", 0, "--config", cfg])
    assert rc == cli.EXIT_DIVERGED
    assert_one_error_line(lines, f"{method} diverged at iteration", f"non-finite {term}", key)
    s = strict_json(run / "summary.json")
    assert s["status"] == "diverged" and s["final_norm_return"] is None and s["final_returns"] == []
    assert s["divergence"]["config_key"] == key
    assert_reported_not_scored(cfg, method)


@pytest.mark.parametrize("sampling", ["uniform", "variance"])
def test_grpo_at_a_huge_lr_ends_diverged_whatever_its_reset_sampling(tmp_path, dataset_file, capsys, sampling):
    """lr=1e10 leaves weights finite but the outputs NaN; with uniform reset points every group then had zero
    spread, no loss was computed, and the run used to complete with a score; with active sampling it crashed on
    NaN probabilities. Either way it now ends diverged."""
    cfg = config_file(tmp_path, dataset_file, "grpo", online={"max_iterations": 4})
    write_pretrained(pretrained_path(tmp_path), pretrained_dt_for("grpo"))
    rc, lines = run_cli(capsys, ["finetune", "--method", "grpo", "--task", TASK, "--config", cfg, "--set",
                                 "methods.grpo.lr=1e10", "--set", f"methods.grpo.reset_sampling={sampling}"])
    assert rc == cli.EXIT_DIVERGED
    assert_one_error_line(lines, "grpo diverged at iteration", "methods.grpo.lr")
    assert strict_json(tmp_path / f"results/runs/grpo/{TASK}/seed0/summary.json")["status"] == "diverged"


def test_draw_states_refuses_nan_variances():
    from dtrl.methods.grpo import PolicyGradientDT
    from dtrl.util.guard import DivergenceError

    with pytest.raises(DivergenceError, match="reset-sampling variances"):
        PolicyGradientDT.draw_states(None, np.array([1.0, NAN, 2.0]), 1, "variance", 1.0)


def test_all_zero_spread_iterations_are_counted_and_warned(tmp_path, dataset_file, capsys):
    import pandas as pd

    cfg = config_file(tmp_path, dataset_file, "grpo")
    write_pretrained(pretrained_path(tmp_path), pretrained_dt_for("grpo"))
    rc, lines = run_cli(capsys, ["finetune", "--method", "grpo", "--task", TASK, "--config", cfg, "--set",
                                 "methods.grpo.zero_spread_tol=1e9", "--set",
                                 "methods.grpo.zero_spread_warn_iterations=2"])
    assert rc == 0
    warned = [ln for ln in lines if "zero spread for 2 iterations in a row" in ln]
    assert len(warned) == 1 and "(iterations 1-2)" in warned[0]
    progress = pd.read_csv(tmp_path / f"results/runs/grpo/{TASK}/seed0/progress.csv")
    assert progress["zero_spread_streak"].dropna().tolist() == [1, 2, 3]


@pytest.mark.parametrize("method,key", [("iql", "critic_lr"), ("iql", "value_lr"), ("iql", "actor_lr"),
                                        ("odt_td3", "lr"), ("odt_td3", "critic_lr")])
def test_a_huge_learning_rate_is_blamed_on_its_own_key(tmp_path, dataset_file, capsys, method, key):
    """The loss that overflows first is often another network's (IQL's critic loss reads the new V, ODT+TD3's
    TD target the DT's actions); the blown-up weights name the key whose step made them."""
    argv = _finetune_argv(tmp_path, dataset_file, method)
    rc, lines = run_cli(capsys, argv + ["--set", f"methods.{method}.{key}=1e10"])
    assert rc == cli.EXIT_DIVERGED
    assert_one_error_line(lines, f"most likely cause: methods.{method}.{key} too large")


def test_a_diverged_pretrained_model_is_not_evaluated(tmp_path, dataset_file, capsys):
    """`none` trains nothing: a NaN pretrained DT (a diverged pretraining from before the checks) is refused."""
    cfg = config_file(tmp_path, dataset_file, "none")
    model = tiny_dt(TASK, embed_dim=16, n_heads=2)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = NAN
    write_pretrained(pretrained_path(tmp_path), model)
    rc, lines = run_cli(capsys, ["finetune", "--method", "none", "--task", TASK, "--config", cfg])
    assert rc == cli.EXIT_DIVERGED
    assert_one_error_line(lines, "none diverged at iteration 0", "non-finite parameters model.",
                          "the starting model", "pretrain.lr", "no checkpoint had been written")
    s = strict_json(tmp_path / f"results/runs/none/{TASK}/seed0/summary.json")
    assert s["status"] == "diverged" and s["final_returns"] == []
    assert_reported_not_scored(cfg, "none")


def test_a_nan_loss_term_stops_pretraining(tmp_path, dataset_file, capsys, monkeypatch):
    cfg = config_file(tmp_path, dataset_file, "none")
    out = tmp_path / f"results/pretrain/{TASK}/seed0"
    import dtrl.harness.pretrain

    orig, calls, seen = dtrl.harness.pretrain.dt_supervised_loss, {"n": 0}, {}

    def loss(*a, **k):  # finite for the first 12 updates (a checkpoint at 10), then a NaN NLL
        calls["n"] += 1
        terms = orig(*a, **k)
        if calls["n"] > 12:
            seen.setdefault("checkpoint", (out / "checkpoint.pt").read_bytes())
            terms["nll"] = terms["nll"] * NAN
            terms["loss"] = terms["loss"] * NAN
        return terms

    monkeypatch.setattr(dtrl.harness.pretrain, "dt_supervised_loss", loss)
    rc, lines = run_cli(capsys, ["pretrain", "--task", TASK, "--config", cfg])
    assert rc == cli.EXIT_DIVERGED
    assert_one_error_line(lines, "pretraining diverged at update 13", "non-finite loss, nll", "pretrain.lr",
                          "its last checkpoint (update 10, all finite) is kept")
    s = strict_json(out / "summary.json")
    assert s["status"] == "diverged" and s["divergence"]["config_key"] == "pretrain.lr"
    assert not (out / "model.pt").exists()  # nothing downstream can start from it
    assert (out / "checkpoint.pt").read_bytes() == seen["checkpoint"]
    assert torch_load(out / "checkpoint.pt")["updates"] == 10
    # A run that starts from it records why it cannot run (exit 3, as a diverged run), so a workflow goes on to
    # the report, which lists it as not scored.
    rc, lines = run_cli(capsys, ["finetune", "--method", "none", "--task", TASK, "--config", cfg])
    assert rc == cli.EXIT_DIVERGED
    assert_one_error_line(lines, "none was not run: the pretraining it starts from", "pretraining diverged at update 13")
    s = strict_json(tmp_path / f"results/runs/none/{TASK}/seed0/summary.json")
    assert s["status"] == "diverged" and s["divergence"]["config_key"] == "pretrain.lr"
    assert_reported_not_scored(cfg, "none")


# -- bad input: exit 2, one line, nothing under results changed -------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _finished_run(tmp_path, dataset, capsys, method="none") -> Path:
    cfg = config_file(tmp_path, dataset, method)
    if not pretrained_path(tmp_path).exists():
        write_pretrained(pretrained_path(tmp_path), tiny_dt(TASK, embed_dim=16, n_heads=2))
    assert run_cli(capsys, ["finetune", "--method", method, "--task", TASK, "--config", cfg])[0] == 0
    return cfg


def _setup_truncated_resume_checkpoint(tmp_path, dataset, capsys):
    cfg = _finished_run(tmp_path, dataset, capsys, "odt")
    run = tmp_path / f"results/runs/odt/{TASK}/seed0"
    (run / "summary.json").unlink()  # as if killed while running
    _truncate(run / "checkpoint.pt")
    return ["finetune", "--method", "odt", "--task", TASK, "--config", cfg], ["checkpoint.pt", "delete it"]


def _setup_truncated_pretrained(tmp_path, dataset, capsys):
    cfg = config_file(tmp_path, dataset, "odt")
    write_pretrained(pretrained_path(tmp_path), tiny_dt(TASK, embed_dim=16, n_heads=2))
    _truncate(pretrained_path(tmp_path))
    return ["finetune", "--method", "odt", "--task", TASK, "--config", cfg], ["model.pt", "dtrl pretrain"]


def _setup_truncated_given_pretrained(tmp_path, dataset, capsys):
    cfg = config_file(tmp_path, dataset, "grpo")
    other = tmp_path / "elsewhere/model.pt"
    write_pretrained(other, tiny_dt(TASK, embed_dim=16, n_heads=2))
    _truncate(other)
    return (["finetune", "--method", "grpo", "--task", TASK, "--config", cfg, "--pretrained", other],
            ["elsewhere/model.pt", "--pretrained"])


def _setup_wrong_shape_pretrained(tmp_path, dataset, capsys):
    cfg = config_file(tmp_path, dataset, "grpo")
    write_pretrained(pretrained_path(tmp_path), tiny_dt("hopper-medium", embed_dim=16, n_heads=2))
    return ["finetune", "--method", "grpo", "--task", TASK, "--config", cfg], ["11-d observations", TASK,
                                                                                "dtrl pretrain"]


def _kill_pretraining_after_first_checkpoint(cfg: Path, monkeypatch) -> None:
    import dtrl.harness.pretrain

    real = dtrl.harness.pretrain.atomic_torch_save

    def save_then_die(path, obj):
        real(path, obj)
        raise KeyboardInterrupt

    monkeypatch.setattr(dtrl.harness.pretrain, "atomic_torch_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["pretrain", "--task", TASK, "--config", str(cfg)])
    monkeypatch.setattr(dtrl.harness.pretrain, "atomic_torch_save", real)


def _setup_truncated_pretrain_checkpoint(tmp_path, dataset, capsys, monkeypatch):
    cfg = config_file(tmp_path, dataset, "none")
    _kill_pretraining_after_first_checkpoint(cfg, monkeypatch)
    _truncate(tmp_path / f"results/pretrain/{TASK}/seed0/checkpoint.pt")
    return ["pretrain", "--task", TASK, "--config", cfg], ["checkpoint.pt", "start pretraining over"]


def _setup_truncated_evaluate(tmp_path, dataset, capsys):
    write_pretrained(pretrained_path(tmp_path), tiny_dt(TASK, embed_dim=16, n_heads=2))
    _truncate(pretrained_path(tmp_path))
    return ["evaluate", "--checkpoint", pretrained_path(tmp_path), "--task", TASK], ["model.pt", "not a readable"]


def _setup_wrong_shape_evaluate(tmp_path, dataset, capsys):
    write_pretrained(pretrained_path(tmp_path), tiny_dt("hopper-medium", embed_dim=16, n_heads=2))
    return ["evaluate", "--checkpoint", pretrained_path(tmp_path), "--task", TASK], ["11-d observations"]


def _setup_yaml_error(tmp_path, dataset, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("online:\n  env_steps: [1, 2\n")
    return ["finetune", "--method", "none", "--task", TASK, "--config", bad], ["bad.yaml", "not valid YAML",
                                                                               "line"]


def _setup_set_yaml_error(tmp_path, dataset, capsys):
    cfg = config_file(tmp_path, dataset, "none")
    return (["finetune", "--method", "none", "--task", TASK, "--config", cfg, "--set", "online.env_steps=[1"],
            ["--set online.env_steps=[1", "not valid YAML"])


def _setup_empty_config(tmp_path, dataset, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    return ["config", "--config", empty], ["empty.yaml is empty"]


def _setup_method_validation(tmp_path, dataset, capsys):
    cfg = config_file(tmp_path, dataset, "grpo")
    return (["finetune", "--method", "grpo", "--task", TASK, "--config", cfg, "--set", "methods.grpo.clip_eps=2"],
            ["methods.grpo: clip_eps must be in (0, 1)"])


def _setup_truncated_summary(tmp_path, dataset, capsys):
    cfg = _finished_run(tmp_path, dataset, capsys)
    _truncate(tmp_path / f"results/runs/none/{TASK}/seed0/summary.json")
    return ["report", "--config", cfg], ["summary.json is not valid JSON", "delete"]


def _setup_changed_config_on_resume(tmp_path, dataset, capsys):
    cfg = _finished_run(tmp_path, dataset, capsys, "grpo")
    (tmp_path / f"results/runs/grpo/{TASK}/seed0/summary.json").unlink()  # as if killed
    return (["finetune", "--method", "grpo", "--task", TASK, "--config", cfg, "--set", "methods.grpo.group_size=3"],
            ["cannot resume", "params.group_size: 2 -> 3", "--allow-config-change"])


def _setup_minari_download_without_hub(tmp_path, dataset, capsys, monkeypatch):
    pytest.importorskip("minari")
    try:
        import huggingface_hub  # noqa: F401
        pytest.skip("huggingface_hub is installed here")
    except ImportError:
        pass
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    cfg = config_file(tmp_path, dataset, "none",
                      data={"sources": {TASK: {"minari": "mujoco/invertedpendulum/medium-v0", "minari_download": True}}})
    return ["data", TASK, "--config", cfg], ["minari:mujoco/invertedpendulum/medium-v0", "huggingface_hub"]


def _setup_config_is_a_directory(tmp_path, dataset, capsys):
    return ["config", "--config", tmp_path], ["is a directory"]


def _evaluate_argv(tmp_path, *extra):
    write_pretrained(pretrained_path(tmp_path), tiny_dt(TASK, embed_dim=16, n_heads=2))
    return ["evaluate", "--checkpoint", pretrained_path(tmp_path), "--task", TASK, *extra]


def _setup_negative_episodes(tmp_path, dataset, capsys):
    return _evaluate_argv(tmp_path, "--episodes", "-3"), ["--episodes is -3", "at least 1"]


def _setup_zero_episodes(tmp_path, dataset, capsys):
    return _evaluate_argv(tmp_path, "--episodes", "0"), ["--episodes is 0", "at least 1"]


def _setup_nan_rtg(tmp_path, dataset, capsys):
    return _evaluate_argv(tmp_path, "--rtg", "nan"), ["--rtg is nan", "finite"]


def _finetune_argv(tmp_path, dataset, method="grpo", **over):
    cfg = config_file(tmp_path, dataset, method, **over)
    write_pretrained(pretrained_path(tmp_path, method), pretrained_dt_for(method))
    return ["finetune", "--method", method, "--task", TASK, "--config", cfg]


def _setup_device_mps(tmp_path, dataset, capsys):
    return _finetune_argv(tmp_path, dataset) + ["--set", "device=mps"], ["device is 'mps'", "cpu or cuda"]


def _setup_device_cuda(tmp_path, dataset, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    return _finetune_argv(tmp_path, dataset) + ["--set", "device=cuda"], ["CUDA is not available"]


def _setup_pretrain_device_cuda(tmp_path, dataset, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    cfg = config_file(tmp_path, dataset, "none")
    return ["pretrain", "--task", TASK, "--config", cfg, "--set", "device=cuda"], ["CUDA is not available"]


def _setup_behaviour_device_cuda(tmp_path, dataset, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    cfg = config_file(tmp_path, dataset, "none")
    return (["behaviour", "pendulum", "--config", cfg, "--set", "data.generator.device=cuda"],
            ["data.generator.device is 'cuda'"])


def _setup_report_out_file(tmp_path, dataset, capsys):
    cfg = config_file(tmp_path, dataset, "none")
    (tmp_path / "results").mkdir()
    (tmp_path / "results/afile").write_text("x")
    return ["report", "--config", cfg, "--out", tmp_path / "results/afile"], ["--out", "afile is a file"]


def _setup_finetune_out_file(tmp_path, dataset, capsys):
    argv = _finetune_argv(tmp_path, dataset)
    (tmp_path / "results/afile").write_text("x")
    return argv + ["--out", tmp_path / "results/afile"], ["--out", "afile is a file"]


def _setup_set_value_error(tmp_path, dataset, capsys):
    return (_finetune_argv(tmp_path, dataset) + ["--set", "online.env_steps=abc"],
            ["--set online.env_steps=abc: online.env_steps: expected an integer"])


def _setup_unknown_source_task(tmp_path, dataset, capsys):
    argv = _finetune_argv(tmp_path, dataset, data={"sources": {"pendulum-medum": {"d4rl": str(dataset)}}})
    return argv, ["data.sources: unknown task 'pendulum-medum'", "Did you mean 'pendulum-medium'?"]


def _setup_source_of_another_task(tmp_path, dataset, capsys):
    argv = _finetune_argv(tmp_path, dataset, data={"sources": {"pendulum-medium-replay": {"d4rl": str(dataset)}}})
    return argv, ["data.sources: 'pendulum-medium-replay' is not a task of the grid", "Did you mean 'pendulum-medium'?"]


def _setup_unknown_ablation_task(tmp_path, dataset, capsys):
    return (_finetune_argv(tmp_path, dataset) + ["--set", "grid.ablation_tasks=[pendulum-medum]"],
            ["grid.ablation_tasks: unknown task 'pendulum-medum'", "Did you mean 'pendulum-medium'?"])


def _setup_fixed_key_on_resume(tmp_path, dataset, capsys):
    cfg = _finished_run(tmp_path, dataset, capsys, "odt")
    (tmp_path / f"results/runs/odt/{TASK}/seed0/summary.json").unlink()  # as if killed
    return (["finetune", "--method", "odt", "--task", TASK, "--config", cfg, "--set", "methods.odt.optimizer=adamw",
             "--allow-config-change"], ["params.optimizer: 'lamb' -> 'adamw'", "cannot change mid-run"])


BAD_INPUTS = {
    "finetune: truncated checkpoint.pt (resume)": _setup_truncated_resume_checkpoint,
    "finetune: truncated pretrained model.pt": _setup_truncated_pretrained,
    "finetune --pretrained: truncated file": _setup_truncated_given_pretrained,
    "finetune: pretrained model of the wrong shape": _setup_wrong_shape_pretrained,
    "pretrain: truncated checkpoint.pt": _setup_truncated_pretrain_checkpoint,
    "evaluate: truncated model.pt": _setup_truncated_evaluate,
    "evaluate: model of the wrong shape": _setup_wrong_shape_evaluate,
    "YAML syntax error in a config file": _setup_yaml_error,
    "YAML syntax error in a --set value": _setup_set_yaml_error,
    "empty config file": _setup_empty_config,
    "method validation names methods.<name>": _setup_method_validation,
    "report: truncated summary.json": _setup_truncated_summary,
    "finetune: resume under a changed config": _setup_changed_config_on_resume,
    "data: minari_download without huggingface_hub": _setup_minari_download_without_hub,
    "-c <a directory>": _setup_config_is_a_directory,
    "evaluate --episodes -3": _setup_negative_episodes,
    "evaluate --episodes 0": _setup_zero_episodes,
    "evaluate --rtg nan": _setup_nan_rtg,
    "finetune --set device=mps": _setup_device_mps,
    "finetune --set device=cuda without CUDA: no empty run dir left": _setup_device_cuda,
    "pretrain --set device=cuda without CUDA: no empty seed dir left": _setup_pretrain_device_cuda,
    "behaviour --set data.generator.device=cuda: no .lock left": _setup_behaviour_device_cuda,
    "report --out <a file>": _setup_report_out_file,
    "finetune --out <a file>": _setup_finetune_out_file,
    "an error of a --set value names the --set": _setup_set_value_error,
    "data.sources keyed by an unknown task": _setup_unknown_source_task,
    "data.sources keyed by a near miss of a grid task": _setup_source_of_another_task,
    "grid.ablation_tasks: unknown task, closest named": _setup_unknown_ablation_task,
    "resume --allow-config-change of a key that cannot change": _setup_fixed_key_on_resume,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, dataset_file, capsys, monkeypatch, case):
    setup = BAD_INPUTS[case]
    kw = {"monkeypatch": monkeypatch} if "monkeypatch" in setup.__code__.co_varnames else {}
    argv, fragments = setup(tmp_path, dataset_file, capsys, **kw)
    (tmp_path / "results").mkdir(exist_ok=True)
    before = tree_hash(tmp_path / "results")
    rc, lines = run_cli(capsys, argv)
    assert rc == cli.EXIT_INPUT, lines
    line = assert_one_error_line(lines, *fragments)
    assert line.startswith(f"dtrl {argv[0]}: error: ")
    if any(a == "--set" for a in argv) and "exp.yaml" not in " ".join(fragments):
        assert "exp.yaml" not in line  # a --set value's error names the --set, not the config file
    assert tree_hash(tmp_path / "results") == before


def test_resume_with_the_override_continues_and_records_the_change(tmp_path, dataset_file, capsys):
    argv, _ = _setup_changed_config_on_resume(tmp_path, dataset_file, capsys)
    rc, _ = run_cli(capsys, argv + ["--allow-config-change"])
    assert rc == 0
    s = strict_json(tmp_path / f"results/runs/grpo/{TASK}/seed0/summary.json")
    assert s["status"] == "completed" and s["config"]["params"]["group_size"] == 3
    assert s["config_changes"] == [{"iteration": 3, "changed": ["params.group_size: 2 -> 3"]}]


@pytest.mark.parametrize("method,opt", [("odt", ("trainer", "optimizer")), ("grpo", ("opt",))])
def test_resume_with_a_changed_lr_and_the_override_trains_at_the_new_lr(tmp_path, dataset_file, capsys, method, opt):
    import pandas as pd

    cfg = _finished_run(tmp_path, dataset_file, capsys, method)
    run = tmp_path / f"results/runs/{method}/{TASK}/seed0"
    (run / "summary.json").unlink()  # as if killed after iteration 3
    rc, _ = run_cli(capsys, ["finetune", "--method", method, "--task", TASK, "--config", cfg, "--set",
                             f"methods.{method}.lr=0.5", "--set", "online.max_iterations=5", "--allow-config-change"])
    assert rc == 0
    lr = pd.read_csv(run / "progress.csv").dropna(subset=["lr"]).set_index("iteration")["lr"]
    assert lr.loc[3] < 0.01 and lr.loc[4] == lr.loc[5] == 0.5  # the column shows the value in force
    state = torch_load(run / "checkpoint.pt")["method"]
    for k in opt:
        state = state[k]
    assert state["param_groups"][0]["lr"] == 0.5  # and the optimizer stepped with it
    s = strict_json(run / "summary.json")
    assert s["config_changes"][0]["iteration"] == 3 and any("params.lr" in c for c in s["config_changes"][0]["changed"])


def test_pretrain_resume_refuses_a_changed_key_unless_overridden(tmp_path, dataset_file, capsys, monkeypatch):
    cfg = config_file(tmp_path, dataset_file, "none")
    _kill_pretraining_after_first_checkpoint(cfg, monkeypatch)
    out = tmp_path / f"results/pretrain/{TASK}/seed0"
    argv = ["pretrain", "--task", TASK, "--config", cfg, "--set", "pretrain.lr=0.002"]
    before = tree_hash(tmp_path / "results")
    rc, lines = run_cli(capsys, argv)
    assert rc == cli.EXIT_INPUT and tree_hash(tmp_path / "results") == before
    assert_one_error_line(lines, "cannot resume the pretraining", "pretrain.lr: 0.0001 -> 0.002",
                          "--allow-config-change")
    rc, _ = run_cli(capsys, argv + ["--allow-config-change"])
    assert rc == 0 and (out / "model.pt").exists()
    s = strict_json(out / "summary.json")
    assert s["status"] == "completed" and s["config"]["pretrain"]["lr"] == 0.002
    assert s["config_changes"] == [{"updates": 10, "changed": ["pretrain.lr: 0.0001 -> 0.002"]}]
    import pandas as pd

    lr = pd.read_csv(out / "pretrain.csv").set_index("updates")["lr"]
    assert lr.loc[10] == pytest.approx(1e-4) and lr.loc[15] == lr.loc[20] == 0.002  # the new lr, warmup done


def test_a_second_process_on_a_locked_run_dir_exits_2_naming_the_holder(tmp_path, dataset_file, capsys):
    argv = _finetune_argv(tmp_path, dataset_file, "odt")
    run = tmp_path / f"results/runs/odt/{TASK}/seed0"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dtrl.util.lock import hold\n"
         f"with hold({str(run)!r}, 'a test run'):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_hash(tmp_path / "results")
        rc, lines = run_cli(capsys, argv)
        assert rc == cli.EXIT_INPUT and tree_hash(tmp_path / "results") == before
        assert_one_error_line(lines, f"{run} is locked by another process", f"pid {holder.pid} on host",
                              "scancel --name", "--wait")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not (run / ".lock").exists()  # released with the holder, and removed
    rc, _ = run_cli(capsys, argv)  # free again: it runs
    assert rc == 0 and not (run / ".lock").exists()


def test_a_waiting_lock_is_taken_when_the_holder_dies(tmp_path):
    """kill -9 of the holder releases the lock (the kernel does); a waiter then holds it alone."""
    from dtrl.util.lock import hold

    d = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from dtrl.util.lock import hold\n"
         f"with hold({str(d)!r}, 'x'):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=60)
    with hold(d, "y"):  # no LockHeld: the dead holder's lock is gone though its file may remain
        assert f"pid {os.getpid()}" in (d / ".lock").read_text()
    assert not (d / ".lock").exists()


def test_subprocess_one_line_and_debug_traceback(tmp_path, dataset_file):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {methods: [none\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "dtrl.cli"]
    p = subprocess.run(base + ["config", "--config", str(bad)], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert p.stderr.startswith(f"dtrl config: error: config file {bad}: not valid YAML")
    p = subprocess.run(base + ["--debug", "config", "--config", str(bad)], capture_output=True, text=True, env=env)
    assert p.returncode != 0 and "Traceback" in p.stderr and "ConfigError" in p.stderr


# -- report: configs of one cell --------------------------------------------------------------------------

def _fake_run(root: Path, seed: int, config: dict | None, score: float = 50.0, status: str = "completed"):
    """A run that follows the run contract (dtrl.harness.run_schema), scoring ``score``."""
    from dtrl.util.logger import CORE_COLUMNS
    from dtrl.tasks import get_task

    t = get_task(TASK)
    ret = t.ref_min_score + score / 100 * (t.ref_max_score - t.ref_min_score)  # normalises to score
    s = {"method": "grpo", "algo": "grpo", "task": TASK, "seed": seed, "final_return": ret,
         "final_norm_return": float(t.normalize(ret)), "final_norm_return_std": 0.0, "final_returns": [ret],
         "eval_episodes": 1, "env_steps": 10, "env_steps_eval": 5, "policy_updates": 1, "critic_updates": 0,
         "grad_updates": 1, "wall_time": 1.0, "iterations": 1, "status": status}
    if config is not None:
        s["config"] = config
    d = root / f"runs/grpo/{TASK}/seed{seed}"
    atomic_write_json(d / "summary.json", s)
    row = {"iteration": 1, "env_steps": 10, "env_steps_eval": 5, "policy_updates": 1, "critic_updates": 0,
           "grad_updates": 1, "eval_return": ret, "eval_norm_return": s["final_norm_return"], "wall_time": 1.0,
           "cpu_s": 1.0, "env_steps_per_s": 1.0, "updates_per_s": 1.0}
    (d / "progress.csv").write_text(",".join(CORE_COLUMNS) + "\n" + ",".join(str(row[c]) for c in CORE_COLUMNS) + "\n")


def test_report_refuses_to_mix_method_configs_in_a_cell(tmp_path):
    from dtrl.config import ConfigError
    from dtrl.report.build import report

    exp = load_config(None, {"results": str(tmp_path), "grid": {"methods": ["grpo"], "tasks": [TASK],
                                                                 "seeds": [0, 1, 2]}})
    cfg = {"method": "grpo", "algo": "grpo", "params": {"lr": 3e-5, "group_size": 8}, "online": {"env_steps": 100,
           "progress": True}, "eval": {"episodes": 10}, "task": TASK, "seed": 0, "pretrained_with": None}
    _fake_run(tmp_path, 0, cfg)
    _fake_run(tmp_path, 1, {**cfg, "seed": 1, "online": {"env_steps": 100, "progress": False}})  # cosmetic only
    _fake_run(tmp_path, 2, {**cfg, "seed": 2, "params": {"lr": 1e-4, "group_size": 8}})
    with pytest.raises(ConfigError, match=r"grpo on pendulum-medium: seed 0 and seed 2 .*params.lr: 3e-05 -> 0.0001"):
        report(exp, figures=False, reps=10)
    assert not (tmp_path / "tables").exists()  # refused before writing anything
    _fake_run(tmp_path, 2, None)  # a run from before dtrl recorded configs
    with pytest.raises(ConfigError, match="seed 2 .* records no config"):
        report(exp, figures=False, reps=10)
    _fake_run(tmp_path, 2, {**cfg, "seed": 2})
    res = report(exp, figures=False, reps=10)
    assert res["not_scored"] == []
    # A parameter added after a run was made (it did not record it) is its default there: a run recording
    # that default shares the cell's config, one recording another value does not.
    _fake_run(tmp_path, 2, {**cfg, "seed": 2, "params": {**cfg["params"], "explore_actions": "sample"}})
    assert report(exp, figures=False, reps=10)["not_scored"] == []
    _fake_run(tmp_path, 2, {**cfg, "seed": 2, "params": {**cfg["params"], "explore_actions": "mean"}})
    with pytest.raises(ConfigError, match=r"params.explore_actions: 'sample' -> 'mean'"):
        report(exp, figures=False, reps=10)
    _fake_run(tmp_path, 2, {**cfg, "seed": 2})
    # A diverged seed is left out, so its (different) config does not matter.
    _fake_run(tmp_path, 2, {**cfg, "params": {"lr": 1e10}}, score=NAN, status="diverged")
    res = report(exp, figures=False, reps=10)
    assert [r["seed"] for r in res["not_scored"]] == [2]
    # A summary of an older dtrl: no status, a bare NaN token (a diverged run scored NaN): not scored either.
    p = tmp_path / f"runs/grpo/{TASK}/seed1/summary.json"
    old = json.loads(p.read_text())
    old.pop("status")
    p.write_text(json.dumps({**old, "final_norm_return": NAN}))
    assert "NaN" in p.read_text()
    res = report(exp, figures=False, reps=10)
    assert [(r["seed"], r["status"]) for r in res["not_scored"]] == [(1, "invalid"), (2, "diverged")]


# -- the behaviour SAC resumes exactly from any checkpoint --------------------------------------------------

SAC_TINY = {"transitions": 200, "sac_steps": 1600, "sac_envs": 4, "sac_batch_size": 32, "sac_hidden": 16,
            "sac_utd": 0.5, "sac_start_steps": 200, "eval_every": 400, "eval_episodes": 1,
            "medium_fraction": 0.9, "rollout_envs": 1, "rollout_workers": 1, "sac_init_alpha": 0.1, "seed": 0,
            "device": "cpu", "progress": False, "sac_checkpoint_every": 300}


def test_sac_killed_after_a_checkpoint_resumes_to_the_same_policies(tmp_path, monkeypatch):
    from dtrl.data import generate
    from dtrl.data.d4rl_hdf5 import read_d4rl

    def exp(root):
        return load_config(overrides={"results": str(root), "data": {"generator": SAC_TINY}})

    whole = generate.train_behaviour(exp(tmp_path / "whole"), "pendulum")
    assert whole["status"] == "complete" and not whole["medium"]["reached"]  # pre-'medium' all the way

    real, saves = generate._BehaviourRun._save_state, []

    def save_then_die(self, *a, **k):
        real(self, *a, **k)
        saves.append(self.step)
        if len(saves) == 2:  # killed right after its second checkpoint (step 604 of 1600)
            raise KeyboardInterrupt

    monkeypatch.setattr(generate._BehaviourRun, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        generate.train_behaviour(exp(tmp_path / "cut"), "pendulum")
    monkeypatch.setattr(generate._BehaviourRun, "_save_state", real)
    assert saves == [300, 600]
    resumed = generate.train_behaviour(exp(tmp_path / "cut"), "pendulum")
    assert resumed["resumed_at"] == [600]
    timing = ("wall_time_s", "cpu_time_s")  # measured, not computed: a killed and resumed run's differ

    def computed(v):
        return {key: x for key, x in v.items() if key not in timing} if isinstance(v, dict) else v

    assert set(timing) <= set(resumed["medium"]) and set(timing) <= set(whole["medium"])
    for k in ("eval_curve", "medium", "expert", "sac_updates", "sac_steps_done"):
        assert computed(resumed[k]) == computed(whole[k]), k
    a, b = generate.behaviour_dir(exp(tmp_path / "whole"), "pendulum"), generate.behaviour_dir(exp(tmp_path / "cut"),
                                                                                             "pendulum")
    for name in ("expert.pt", "medium.pt"):
        wa, wb = torch_load(a / name)["state_dict"], torch_load(b / name)["state_dict"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    ra, rb = read_d4rl(a / "medium_replay.hdf5"), read_d4rl(b / "medium_replay.hdf5")
    for ta, tb in zip(ra, rb, strict=True):
        np.testing.assert_array_equal(ta.observations, tb.observations)
        np.testing.assert_array_equal(ta.sim_states, tb.sim_states)


# -- files: strict JSON, modes from the umask, stale temps ------------------------------------------------

def test_json_writer_turns_non_finite_floats_into_null(tmp_path):
    p = atomic_write_json(tmp_path / "s.json", {"a": NAN, "b": [1.0, float("inf"), np.float32("nan")],
                                                "c": np.array([1.5, -np.inf]), "d": 2})
    assert strict_json(p) == {"a": None, "b": [1.0, None, None], "c": [1.5, None], "d": 2}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_of_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        p = atomic_write_text(tmp_path / "x.txt", "hi")
        q = atomic_write_json(tmp_path / "y.json", {})
        from dtrl.util.io import atomic_torch_save

        r = atomic_torch_save(tmp_path / "z.pt", {"a": 1})
    finally:
        os.umask(old)
    for f in (p, q, r):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path):
    import socket

    host = socket.gethostname().replace(".", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".x.json.{host}.{dead}.abcd1234.tmp"
    live = tmp_path / f".x.json.{host}.{os.getppid()}.abcd1234.tmp"  # a running process's write in flight
    other = tmp_path / ".y.json.somehost.1.abcd1234.tmp"  # another file's temp: left alone
    for f in (stale, live, other):
        f.write_text("torn")
    atomic_write_json(tmp_path / "x.json", {"ok": True})
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temps(tmp_path / "x.json") == []
    assert strict_json(tmp_path / "x.json") == {"ok": True}


def test_weight_limit_is_the_configured_bound():
    """weight_absmax reads +inf past the method's weight_limit (IQL and ODT+TD3 fields), the value below it."""
    import torch

    from baselines.iql import IQLConfig
    from baselines.odt_td3 import ODTTD3Config
    from dtrl.util.guard import WEIGHT_LIMIT, weight_absmax

    w = [torch.tensor([0.5, -2.0]), torch.tensor([[1.5]])]
    assert float(weight_absmax(w, limit=3.0)) == 2.0
    assert float(weight_absmax(w, limit=1.0)) == float("inf")
    assert IQLConfig().weight_limit == ODTTD3Config().weight_limit == WEIGHT_LIMIT
