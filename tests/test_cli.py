"""The `dtrl` command line as a user meets it: headers, pipes closed early, evaluation that reproduces a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dtrl.config.experiment import load_config

from helpers import tiny_dt, write_pretrained

REPO = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_tasks_prints_a_header(capsys):
    from dtrl.cli import main

    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["task", "env", "id"] and "ref min" in lines[0] and "eval RTG" in lines[0]
    assert any(line.startswith("hopper-medium ") for line in lines[1:])
    # which reference returns each task's normalised score uses: D4RL's, or dtrl's own (pendulum)
    refs = {line.split()[0]: line.split()[4] for line in lines[1:] if line.split() and "-v" in line.split()[1]}
    assert refs["hopper-medium"] == "D4RL" and refs["pen-human"] == "D4RL" and refs["pendulum-random"] == "dtrl"


def test_output_piped_into_a_reader_that_stops_early_ends_quietly():
    """`dtrl config --doc | head -1`: the reader is gone before dtrl writes (closed here before the
    child has even imported), so every write meets a broken pipe; no traceback, exit status 1."""
    proc = subprocess.Popen([sys.executable, "-m", "dtrl.cli", "config", "--doc"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(), cwd=REPO)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    out = subprocess.run(f"'{sys.executable}' -m dtrl.cli config --doc | head -1", shell=True, capture_output=True,
                         text=True, env=_env(), cwd=REPO, timeout=120)
    assert out.stdout == "| key | default | meaning |\n" and "Traceback" not in out.stderr, out.stderr


def test_evaluate_reproduces_the_runs_summary(tmp_path, capsys):
    """`dtrl evaluate` on the checkpoint a run was scored with, with the run's seed and config, gives the
    run's summary.json returns exactly: the same env seeds, episodes, RTG and context."""
    from dtrl.cli import main
    from dtrl.harness.evaluate import evaluate_checkpoint
    from dtrl.workflow.finetune import finetune

    task, seed = "pendulum-medium-replay", 1
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"results: {tmp_path}\ndevice: cpu\neval: {{episodes: 2, final_episodes: 3}}\n"
                   "online: {progress: false}\n")
    exp = load_config(cfg)
    # The former N(0, 0.02) init acts near 0, so the pole stays up for a while and episode returns depend
    # on the env seed (a fresh DT with ODT's init drops it within 3 steps from every start).
    model = write_pretrained(tmp_path / f"pretrain/{task}/seed{seed}/model.pt", tiny_dt(task, seed=3, init="normal"),
                             task)
    summary = finetune(exp, "none", task, seed)
    returns = evaluate_checkpoint(exp, model, task, seed=seed).returns
    assert returns.tolist() == summary["final_returns"]
    other = evaluate_checkpoint(exp, model, task, seed=0).returns  # another run seed: other env seeds
    assert other.tolist() != summary["final_returns"]

    assert main(["evaluate", "--checkpoint", str(model), "--task", task, "--seed", str(seed), "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"normalised {summary['final_norm_return']:.2f} " in out and "(3 episodes" in out
    assert out.splitlines()[0].startswith(f"run seed {seed} (as --seed says)")
    # Without --seed: the seed model.pt records (write_pretrained: 0), named on the first line.
    assert main(["evaluate", "--checkpoint", str(model), "--task", task, "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("run seed 0 (recorded in the checkpoint")
    saved = json.loads((tmp_path / f"runs/none/{task}/seed{seed}/summary.json").read_text())
    assert np.mean(saved["final_returns"]) == pytest.approx(returns.mean(), rel=0, abs=0)


def test_status_counts_jobs_work_and_eta(tmp_path, capsys):
    """dtrl status from the files a half-done grid leaves: done / running / stopped / pending per rule,
    env steps done vs planned, an ETA from the runs' own throughput."""
    import csv
    import time

    from dtrl.cli import main
    from dtrl.workflow.status import RUNNING_WINDOW_S, grid_status

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"results: {tmp_path}\ngrid: {{methods: [none, odt], tasks: [pendulum-random], seeds: [0, 1, 2]}}\n"
                   "pretrain: {updates: 100}\nonline: {env_steps: 1000}\n")
    exp = load_config(cfg)

    def put(path, text=""):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def rows(path, *rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return path

    put(tmp_path / "data/pendulum-random.json", "{}")
    pre = tmp_path / "pretrain/pendulum-random"
    put(pre / "seed0/model.pt")
    put(pre / "seed0/summary.json", json.dumps({"updates": 100, "wall_time": 10.0}))  # 10 updates/s
    rows(pre / "seed1/pretrain.csv", {"updates": 40, "wall_time": 4.0})  # running: 60 updates left -> 6 s
    old = rows(pre / "seed2/pretrain.csv", {"updates": 100, "wall_time": 10.0})  # killed at the end: stopped
    t_old = time.time() - RUNNING_WINDOW_S - 60
    os.utime(old, (t_old, t_old))
    runs = tmp_path / "runs"
    put(runs / "none/pendulum-random/seed0/summary.json", json.dumps({"env_steps": 0, "wall_time": 1.0}))
    put(runs / "odt/pendulum-random/seed0/summary.json", json.dumps({"env_steps": 1000, "wall_time": 10.0}))
    rows(runs / "odt/pendulum-random/seed1/progress.csv", {"env_steps": 400, "wall_time": 4.0})  # 600 left -> 6 s

    st = grid_status(exp)
    assert st["behaviour"].done + st["behaviour"].pending == 0  # a random dataset needs no behaviour run
    assert (st["data"].done, st["data"].pending) == (1, 0)
    p, f = st["pretrain"], st["finetune"]
    assert (p.done, p.running, p.stopped, p.pending) == (1, 1, 1, 0)
    assert (f.done, f.running, f.stopped, f.pending) == (2, 1, 0, 3)
    assert (p.work_done, p.work_planned) == (240, 300)
    assert (f.work_done, f.work_planned) == (1400, 3000)  # the offline DT plans no env steps
    assert p.remaining_s == pytest.approx(6.0) and f.remaining_s == pytest.approx(6.0 + 10.0)  # seed2: 1000 at 100/s
    assert main(["status", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "1,400 / 3,000 env steps (47%)" in out and "ETA about 0m11s" in out  # (6 + 16) s over 2 running jobs
