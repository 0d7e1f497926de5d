"""The harness every method runs under, exercised with the offline DT and a trivial method."""

import csv
import json
from dataclasses import dataclass

import numpy as np
import pytest

from dtrl.config import ConfigError, doc
from dtrl.config.experiment import load_config
from dtrl.workflow.finetune import finetune
from dtrl.util.logger import CORE_COLUMNS, SUMMARY_KEYS
from dtrl.config.registry import ALGORITHMS, register
from dtrl.harness.online import OnlineMethod

from helpers import tiny_dt, write_pretrained


class RandomWalk(OnlineMethod):
    """A trivial method: acts uniformly at random; 'updates' nothing but counts one update per iteration."""

    needs_pretrained_dt = False
    calls = 0

    @dataclass
    class Config:
        steps_per_iteration: int = doc(50, "Env steps per iteration.")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.total = 0.0

    def train_iteration(self):
        RandomWalk.calls += 1
        self.ctx.counters.env_steps += self.cfg.steps_per_iteration
        self.ctx.counters.policy_updates += 1
        self.total += 1.0
        return {"my_diag": self.total}

    def evaluate(self, episodes, seed):
        self.ctx.counters.env_steps_eval += episodes
        return np.random.default_rng(seed).uniform(0, 10, episodes)

    def state_dict(self):
        return {"total": self.total}

    def load_state_dict(self, state):
        self.total = state["total"]


@pytest.fixture
def with_random_walk():
    register("random_walk", f"{__name__}:RandomWalk")
    yield
    ALGORITHMS.pop("random_walk", None)


def _exp(tmp_path, **over):
    base = {"results": str(tmp_path), "device": "cpu", "grid": {"methods": ["none"], "tasks": ["hopper-medium"]},
            "eval": {"episodes": 2, "final_episodes": 3},
            "online": {"env_steps": 200, "eval_every_env_steps": 100, "progress": False}}
    base.update(over)
    return load_config(None, base)


def test_offline_dt_run_writes_documented_outputs(tmp_path):
    exp = _exp(tmp_path)
    write_pretrained(tmp_path / "pretrain/hopper-medium/seed0/model.pt", tiny_dt())
    s = finetune(exp, "none", "hopper-medium", 0)
    run = tmp_path / "runs/none/hopper-medium/seed0"
    assert set(SUMMARY_KEYS) <= set(json.loads((run / "summary.json").read_text()))
    assert s["env_steps"] == 0 and s["grad_updates"] == 0 and s["eval_episodes"] == 3
    assert s["env_steps_eval"] > 0
    with open(run / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:len(CORE_COLUMNS)] == CORE_COLUMNS


def test_new_method_path_budget_and_resume(tmp_path, with_random_walk):
    exp = _exp(tmp_path, methods={"rw": {"algo": "random_walk", "steps_per_iteration": 30}},
               grid={"methods": ["rw"], "tasks": ["hopper-medium"]})
    s = finetune(exp, "rw", "hopper-medium", 0)
    assert s["env_steps"] == 210 and s["iterations"] == 7 and s["grad_updates"] == 7
    run = tmp_path / "runs/rw/hopper-medium/seed0"
    rows = list(csv.DictReader(open(run / "progress.csv")))
    assert [r["my_diag"] for r in rows[:-1]] == [f"{float(i)}" for i in range(1, 8)]
    evals = [int(r["env_steps"]) for r in rows[:-1] if r["eval_return"]]
    assert evals == [30, 120, 210]  # first iteration, then every 100 steps

    # A completed run is not redone.
    RandomWalk.calls = 0
    finetune(exp, "rw", "hopper-medium", 0)
    assert RandomWalk.calls == 0

    # A killed run resumes from its checkpoint and ends where an uninterrupted run ends.
    (run / "summary.json").unlink()
    exp2 = _exp(tmp_path, methods={"rw": {"algo": "random_walk", "steps_per_iteration": 30,
                                          "online": {"env_steps": 300}}},
                grid={"methods": ["rw"], "tasks": ["hopper-medium"]})
    # (a longer budget is a changed config: refused, then accepted with the explicit override, and recorded)
    with pytest.raises(ConfigError, match=r"online.env_steps: 200 -> 300.*--allow-config-change"):
        finetune(exp2, "rw", "hopper-medium", 0)
    s2 = finetune(exp2, "rw", "hopper-medium", 0, allow_config_change=True)
    assert RandomWalk.calls == 3 and s2["env_steps"] == 300 and s2["iterations"] == 10
    assert s2["config_changes"] == [{"iteration": 7, "changed": ["online.env_steps: 200 -> 300"]}]
    rows = list(csv.DictReader(open(run / "progress.csv")))
    its = [int(r["iteration"]) for r in rows if not r.get("final")]
    assert its == list(range(1, 11))


def test_resume_reads_a_field_added_since_the_checkpoint_as_its_default(tmp_path, with_random_walk):
    """A run killed under an older dtrl resumes under one that added config fields (at their defaults, which
    keep what it computed); a recorded value that differs from today's is still a config change."""
    import torch

    exp = _exp(tmp_path, methods={"rw": {"algo": "random_walk", "steps_per_iteration": 30}},
               grid={"methods": ["rw"], "tasks": ["hopper-medium"]})
    first = finetune(exp, "rw", "hopper-medium", 0)
    run = tmp_path / "runs/rw/hopper-medium/seed0"
    ckpt = run / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)

    def as_older_dtrl(drop_param: str | None) -> None:
        old = json.loads(json.dumps(state["config"]))
        del old["online"]["max_iterations"]  # a field "added later", at its default
        if drop_param:
            del old["params"][drop_param]
        torch.save({**state, "config": old}, ckpt)
        (run / "summary.json").unlink(missing_ok=True)

    as_older_dtrl(None)
    again = finetune(exp, "rw", "hopper-medium", 0)
    assert again["env_steps"] == first["env_steps"] and "config_changes" not in again
    as_older_dtrl("steps_per_iteration")  # recorded 30 under today's name; dropped, it reads as the default 50
    with pytest.raises(ConfigError, match=r"params.steps_per_iteration: 50 -> 30"):
        finetune(exp, "rw", "hopper-medium", 0)


def test_unknown_method_and_bad_params_fail_before_running(tmp_path, with_random_walk):
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        _exp(tmp_path, grid={"methods": ["nope"], "tasks": ["hopper-medium"]})
    with pytest.raises(ConfigError, match="unknown config key 'methods.rw.step_per_iteration'"):
        _exp(tmp_path, methods={"rw": {"algo": "random_walk", "step_per_iteration": 3}},
             grid={"methods": ["rw"], "tasks": ["hopper-medium"]})
    with pytest.raises(ConfigError, match="grid.tasks: unknown task"):
        _exp(tmp_path, grid={"methods": ["none"], "tasks": ["hopper-mediocre"]})


def test_missing_pretrained_model_is_one_clear_error(tmp_path):
    exp = _exp(tmp_path)
    with pytest.raises(FileNotFoundError, match="dtrl pretrain --task hopper-medium --seed 0"):
        finetune(exp, "none", "hopper-medium", 0)


def test_policy_and_critic_updates_are_separate_columns(tmp_path, with_random_walk):
    from dtrl.util.io import atomic_torch_save, torch_load

    exp = _exp(tmp_path, methods={"rw": {"algo": "random_walk", "steps_per_iteration": 100}},
               grid={"methods": ["rw"], "tasks": ["hopper-medium"]})
    s = finetune(exp, "rw", "hopper-medium", 0)
    assert (s["policy_updates"], s["critic_updates"], s["grad_updates"]) == (2, 0, 2)
    run = tmp_path / "runs/rw/hopper-medium/seed0"
    rows = list(csv.DictReader(open(run / "progress.csv")))
    assert [r["policy_updates"] for r in rows] == ["1", "2", "2"] and {r["critic_updates"] for r in rows} == {"0"}
    # a checkpoint of the old single mixed counter cannot be resumed: one clear error, not wrong counts
    ckpt = torch_load(run / "checkpoint.pt")
    c = ckpt["counters"]
    c["grad_updates"] = c.pop("policy_updates") + c.pop("critic_updates")
    atomic_torch_save(run / "checkpoint.pt", ckpt)
    (run / "summary.json").unlink()
    with pytest.raises(ConfigError, match="older dtrl.*grad_updates"):
        finetune(exp, "rw", "hopper-medium", 0)


def test_diagnostics_may_not_shadow_the_harness_columns(tmp_path, with_random_walk, monkeypatch):
    monkeypatch.setattr(RandomWalk, "train_iteration",
                        lambda self: (setattr(self.ctx.counters, "env_steps", self.ctx.counters.env_steps + 50),
                                      {"critic_updates": 5})[1])
    exp = _exp(tmp_path, methods={"rw": {"algo": "random_walk"}}, grid={"methods": ["rw"], "tasks": ["hopper-medium"]})
    with pytest.raises(RuntimeError, match=r"columns \['critic_updates'\]"):
        finetune(exp, "rw", "hopper-medium", 0)


class Busy(RandomWalk):
    """RandomWalk that does a fixed amount of CPU work per iteration, so the compute axis has something to count."""

    kill_at = None

    def train_iteration(self):
        if Busy.kill_at is not None and self.ctx.counters.iterations + 1 == Busy.kill_at:
            raise KeyboardInterrupt  # a kill after the previous iteration's checkpoint
        float(np.linalg.norm(np.random.default_rng(0).standard_normal((400, 400)) @ np.ones((400, 400))))
        return super().train_iteration()


def _cpu_column(run):
    return [float(r["cpu_s"]) for r in csv.DictReader(open(run / "progress.csv"))]


def test_cpu_seconds_are_monotone_and_continue_across_a_kill(tmp_path):
    import time

    import torch

    from dtrl.harness.run_schema import check_run

    register("busy", f"{__name__}:Busy")
    try:
        exp = _exp(tmp_path, methods={"b": {"algo": "busy", "steps_per_iteration": 30}},
                   grid={"methods": ["b"], "tasks": ["hopper-medium"]})
        run = tmp_path / "runs/b/hopper-medium/seed0"
        Busy.kill_at = 4
        t0 = time.process_time()
        with pytest.raises(KeyboardInterrupt):
            finetune(exp, "b", "hopper-medium", 0)
        first = _cpu_column(run)
        assert len(first) == 3 and all(b > a > 0 for a, b in zip(first, first[1:]))
        assert first[-1] <= time.process_time() - t0  # this process's CPU time, from the run's start
        ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
        assert ckpt["counters"]["iterations"] == 3 and round(ckpt["counters"]["cpu_time"], 3) == first[-1]

        Busy.kill_at = None
        t1 = time.process_time()
        s = finetune(exp, "b", "hopper-medium", 0)
        cpu = _cpu_column(run)
        assert cpu[:3] == first and len(cpu) == 7 + 1  # 7 iterations (210 steps) and the final evaluation
        assert all(b >= a for a, b in zip(cpu, cpu[1:])) and cpu[3] > first[-1]
        # the resumed session adds only its own CPU time to the checkpoint's (no restart at 0, no double count)
        assert cpu[-1] - first[-1] <= time.process_time() - t1
        assert round(s["cpu_s"], 3) == cpu[-1]
        assert check_run(run) == []
    finally:
        ALGORITHMS.pop("busy", None)
        Busy.kill_at = None


def test_run_contract_checks_cpu_seconds_when_present(tmp_path, with_random_walk):
    from dtrl.harness.run_schema import check_run

    exp = _exp(tmp_path, methods={"rw": {"algo": "random_walk", "steps_per_iteration": 50}},
               grid={"methods": ["rw"], "tasks": ["hopper-medium"]})
    finetune(exp, "rw", "hopper-medium", 0)
    run = tmp_path / "runs/rw/hopper-medium/seed0"
    rows = list(csv.DictReader(open(run / "progress.csv")))

    def write(rows, cols):
        with open(run / "progress.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    cols = list(rows[0])
    write(rows, [c for c in cols if c != "cpu_s"])  # an external command may leave the column out
    assert check_run(run) == []
    rows[1]["cpu_s"] = str(float(rows[0]["cpu_s"]) - 1.0)
    write(rows, cols)
    assert any("'cpu_s' decreases" in e for e in check_run(run)), check_run(run)
