"""The `dtrl` command line as a user meets it: headers, pipes closed early, evaluation that reproduces a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dtrl.experiment import load_config

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
    from dtrl.evaluate import evaluate_checkpoint
    from dtrl.finetune import finetune

    task, seed = "pendulum-medium-replay", 1
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"results: {tmp_path}\ndevice: cpu\neval: {{episodes: 2, final_episodes: 3}}\n"
                   "online: {progress: false}\n")
    exp = load_config(cfg)
    model = write_pretrained(tmp_path / f"pretrain/{task}/seed{seed}/model.pt", tiny_dt(task, seed=3), task)
    summary = finetune(exp, "none", task, seed)
    returns, _ = evaluate_checkpoint(exp, model, task, seed=seed)
    assert returns.tolist() == summary["final_returns"]
    other, _ = evaluate_checkpoint(exp, model, task, seed=0)  # another run seed: other env seeds
    assert other.tolist() != summary["final_returns"]

    assert main(["evaluate", "--checkpoint", str(model), "--task", task, "--seed", str(seed), "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"normalised {summary['final_norm_return']:.2f} " in out and "(3 episodes" in out
    saved = json.loads((tmp_path / f"runs/none/{task}/seed{seed}/summary.json").read_text())
    assert np.mean(saved["final_returns"]) == pytest.approx(returns.mean(), rel=0, abs=0)
