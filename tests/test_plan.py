"""`dtrl plan` (the grid's cost from the measured throughput table), the evidence grids' budgets, and
matched env-step budgets under the harness."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from dtrl.config.experiment import load_config
from dtrl.workflow.plan import Throughput, load_throughputs, make_plan

EVIDENCE_CPU = ["config/config.yaml", "config/evidence_cpu.yaml"]
EVIDENCE_GPU = ["config/config.yaml", "config/evidence_gpu.yaml"]


def small_grid(tmp_path, seeds=(0,), tasks=("hopper-random",), **over):
    return load_config(["config/config.yaml", "config/evidence_cpu.yaml"], {
        "results": str(tmp_path), **over,
        "grid": {"seeds": list(seeds), "tasks": list(tasks), "ablation_tasks": list(tasks)}})


def test_table_rows_say_where_they_come_from():
    rows = load_throughputs()
    assert {r.device for r in rows} >= {"cpu-2core", "h100"}
    for r in rows:
        assert r.value > 0 and r.status in ("measured", "estimate") and len(r.source) > 20, r
    # the measured rows quoted in the docs and history
    assert any(r.device == "h100" and r.kind == "dt_update" and r.value == 49.6 and r.status == "measured" for r in rows)
    assert any(r.device == "h100" and r.kind == "mlp_update" and r.value == 1111 for r in rows)


def test_cost_is_monotone_in_the_grid_size(tmp_path):
    plans = [make_plan(small_grid(tmp_path, seeds=s, tasks=t), "cpu-2core")
             for s, t in [((0,), ("hopper-random",)), ((0, 1), ("hopper-random",)),
                          ((0, 1), ("hopper-random", "hopper-medium-replay")),
                          ((0, 1, 2), ("hopper-random", "hopper-medium-replay"))]]
    secs = [p.job_seconds for p in plans]
    jobs = [len(p.jobs) for p in plans]
    steps = [sum(j.env_steps for j in p.jobs) for p in plans]
    assert secs == sorted(secs) and len(set(secs)) == len(secs)
    assert jobs == sorted(jobs) and len(set(jobs)) == len(jobs)
    assert steps == sorted(steps)
    # one more seed adds exactly its finetune and pretrain jobs: the same cost as the first seed's
    one, two = plans[0], plans[1]
    per_seed = [j.seconds for j in one.jobs if j.rule in ("pretrain", "finetune")]
    assert two.job_seconds == pytest.approx(one.job_seconds + sum(per_seed))


def test_cost_comes_from_the_throughput_table(tmp_path):
    exp = small_grid(tmp_path)
    table = load_throughputs()
    base = make_plan(exp, "cpu-2core", table=table)
    assert all(r.row in table for r in base.rates)  # only rows of the repository's table are used
    halved = [dataclasses.replace(r, value=r.value / 2) for r in table]
    slow = make_plan(exp, "cpu-2core", table=halved)
    assert slow.job_seconds == pytest.approx(2 * base.job_seconds)
    assert slow.wall_seconds == pytest.approx(slow.job_seconds / 2)  # 2 slots on the 2-core kind
    # a faster DT update row speeds up exactly the jobs that make DT updates
    fast_dt = [dataclasses.replace(r, value=r.value * 10) if r.kind == "dt_update" else r for r in table]
    fast = make_plan(exp, "cpu-2core", table=fast_dt)
    by = {j.name: j.seconds for j in fast.jobs}
    for j in base.jobs:
        if j.rule == "pretrain" or j.method == "odt":
            assert by[j.name] < j.seconds, j.name
        if j.method in ("iql", "none") or j.rule in ("behaviour", "data"):
            assert by[j.name] == pytest.approx(j.seconds), j.name
    with pytest.raises(ValueError, match="no throughputs for device kind 'tpu'"):
        make_plan(exp, "tpu")


def test_dt_update_rates_scale_with_model_size_on_cpu_only_down_on_gpu(tmp_path):
    row = Throughput(device="x", kind="dt_update", value=10.0, unit="updates/s", status="measured", source="test",
                     n_layers=2, embed_dim=64, context_len=10, batch_size=64)
    from dtrl.workflow.plan import Rates

    cpu, gpu = Rates("cpu-x", [dataclasses.replace(row, device="cpu-x")]), Rates("g", [dataclasses.replace(row, device="g")])
    bigger, smaller = (4, 64, 10, 64), (1, 64, 10, 64)
    assert cpu.get("dt_update", model=bigger).value == pytest.approx(5.0)  # twice the layers: half the rate
    assert cpu.get("dt_update", model=smaller).value == pytest.approx(20.0)
    assert gpu.get("dt_update", model=bigger).value == pytest.approx(5.0)
    assert gpu.get("dt_update", model=smaller).value == pytest.approx(10.0)  # launch-bound: never faster


def test_episode_length_from_the_dataset_summary(tmp_path):
    task = "hopper-medium-replay"  # no minimum env steps per ODT iteration (random data has one)
    exp = small_grid(tmp_path, tasks=(task,))
    (tmp_path / "data").mkdir()
    (tmp_path / f"data/{task}.json").write_text(json.dumps({"transitions": 5000, "episodes": 250}))
    plan = make_plan(exp, "cpu-2core")
    assert plan.episode_sources[task].startswith("20 steps, from dataset summary")
    odt = next(j for j in plan.jobs if j.method == "odt")
    spec = exp.method("odt")
    per_iteration = 20 * spec.params.rollouts_per_iteration
    assert odt.updates == -(-spec.online.env_steps // per_iteration) * spec.params.updates_per_iteration


def test_evidence_cpu_budgets_data_and_size():
    """Issue 19's grid: D4RL-size SAC data, 5 seeds, GRPO-DT at hundreds of thousands of env steps, the
    baselines at one shared budget, and the whole grid (data included) within 100 minutes on 2 cores."""
    exp = load_config(EVIDENCE_CPU)
    plan = make_plan(exp, "cpu-2core")
    groups = plan.budget_groups()
    grpo = exp.method("grpo").online.env_steps
    assert groups.pop(grpo) == ["grpo"] and grpo >= 100_000
    (baseline, methods), = groups.items()
    assert baseline == exp.online.env_steps < grpo and set(methods) == {"odt", "odt_td3", "iql"}
    assert {"hopper-random", "hopper-medium-replay"} <= set(exp.grid.tasks) and len(exp.grid.seeds) >= 5
    assert {"none", "grpo", "odt", "odt_td3", "iql"} <= set(exp.grid.methods)
    g = exp.data.generator
    assert (g.sac_hidden, g.sac_batch_size, g.sac_envs) == (256, 256, 8)  # D4RL's SAC size
    assert g.eval_every % g.sac_envs == 0 and g.sac_start_steps % g.sac_envs == 0  # exact step counts
    assert [j.rule for j in plan.jobs].count("behaviour") == 1  # one SAC run (hopper), charged its full cap
    assert plan.wall_seconds <= 100 * 60


def test_evidence_gpu_plans_on_the_gpu_rows():
    exp = load_config(EVIDENCE_GPU)
    plan = make_plan(exp)
    assert plan.device == "h100" and plan.slots == 1
    assert exp.data.generator.transitions == 1_000_000 and exp.model.embed_dim == 512 and exp.model.n_layers == 4
    assert {r.row.device for r in plan.rates} == {"h100"}
    assert len(plan.budget_groups()) == 2


def test_plan_command_prints_rules_budgets_and_hours(capsys):
    from dtrl.cli import main

    assert main(["plan", "-c", "config/config.yaml", "-c", "config/evidence_cpu.yaml"]) == 0
    out = capsys.readouterr().out
    for text in ("behaviour", "pretrain", "finetune", "estimated CPU core-hours", "20k: odt, odt_td3, iql", "300k: grpo",
                 "throughputs used", "[measured]"):
        assert text in out, text
    assert main(["plan", "-c", "config/config.yaml", "--device-kind", "tpu"]) == 2


# -- matched budgets under the harness -------------------------------------------------------------------

MATCHED = {
    "grpo": {"reset_points": 2, "group_size": 2, "traj_len": 3, "eval_len": 5, "explore_episodes": 1,
             "epochs": 1, "minibatch_size": 4},
    "odt": {"updates_per_iteration": 2, "batch_size": 8, "warmup_updates": 2},
    "odt_td3": {"updates_per_iteration": 2, "batch_size": 8, "warmup_updates": 2, "critic_hidden": [16, 16],
                "critic_warmup_updates": 2},
    "iql": {"offline_updates": 4, "offline_updates_per_iteration": 2, "env_steps_per_iteration": 25,
            "batch_size": 8, "hidden_dims": [16, 16]},
}


def test_every_method_of_a_matched_grid_ends_within_one_iteration_of_the_budget(tmp_path):
    from test_odt import offline_dataset

    from dtrl.data.d4rl_hdf5 import write_d4rl
    from dtrl.workflow.finetune import finetune
    from helpers import tiny_dt, write_pretrained

    task, budget = "pendulum-random", 150
    write_d4rl(tmp_path / "data.hdf5", offline_dataset(task, n=6))
    write_pretrained(tmp_path / f"pretrain/{task}/seed0/model.pt", tiny_dt(task), task)
    from dtrl.config.registry import get_algorithm

    if getattr(get_algorithm("odt_td3"), "pretrained_head", "gaussian") == "deterministic":  # its own DT
        write_pretrained(tmp_path / f"pretrain_det/{task}/seed0/model.pt", tiny_dt(task, action_head="deterministic"),
                         task)
    exp = load_config(None, {
        "results": str(tmp_path), "device": "cpu", "grid": {"methods": list(MATCHED), "tasks": [task]},
        "data": {"sources": {task: {"d4rl": str(tmp_path / "data.hdf5")}}},
        "eval": {"episodes": 1, "final_episodes": 1},
        "online": {"env_steps": budget, "eval_every_env_steps": 1000, "progress": False},  # one budget for all
        "methods": {m: {"algo": m, **p} for m, p in MATCHED.items()}})
    assert make_plan(exp, "cpu-2core").budget_groups() == {budget: list(MATCHED)}
    for m in MATCHED:
        s = finetune(exp, m, task, 0)
        rows = [r for r in csv.DictReader(open(tmp_path / "runs" / m / task / "seed0/progress.csv")) if not r["final"]]
        steps = [int(r["env_steps"]) for r in rows]
        assert s["env_steps"] == steps[-1] >= budget, m  # the budget is reached ...
        assert len(steps) == 1 or steps[-2] < budget, m  # ... by the last iteration, not before it
        assert s["iterations"] == len(rows) and s["budget_env_steps"] == budget, m


def test_plan_jobs_are_the_workflows_dag(tmp_path):
    """The plan counts the jobs Snakemake's dry run schedules, rule by rule."""
    from test_workflow import copy_workflow, job_counts, snakemake

    wf = copy_workflow(tmp_path / "wf")
    out = snakemake(wf, "-n", "--quiet", "rules", "--configfile", "config/evidence_cpu.yaml")
    assert out.returncode == 0, out.stderr
    dag = job_counts(out.stdout)
    assert dag.pop("report") == dag.pop("report_html") == dag.pop("all") == 1  # local rules: the plan counts compute
    plan = make_plan(load_config(EVIDENCE_CPU), "cpu-2core")
    assert {r["rule"]: r["jobs"] for r in plan.per_rule()} == dag
