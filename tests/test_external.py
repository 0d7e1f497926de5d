"""The run contract (dtrl check-run) and a baseline from another codebase run as a config entry."""

from __future__ import annotations

import csv
import json
import shlex
import sys
from pathlib import Path

import pytest

from dtrl.config import ConfigError
from dtrl.config.experiment import load_config
from dtrl.harness.run_schema import check_run

from helpers import tiny_dt, write_pretrained

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "external_random_baseline.py"
TASK = "pendulum-random"


def _exp(tmp_path, **methods):
    return load_config(None, {"results": str(tmp_path), "device": "cpu", "eval": {"episodes": 1, "final_episodes": 3},
                              "online": {"env_steps": 300, "progress": False}, "methods": methods,
                              "grid": {"methods": ["none", *methods], "tasks": [TASK], "seeds": [0]}})


def _toy(**over):
    cmd = (f"{shlex.quote(sys.executable)} {shlex.quote(str(SCRIPT))} --name {{method}} --task {{task}} --seed {{seed}} "
           "--out {out} --env-steps {env_steps} --eval-episodes {eval_episodes} --eval-every 100")
    return {"algo": "external", "command": cmd, **over}


@pytest.fixture(scope="module")
def native_run(tmp_path_factory):
    """A run the harness wrote (the offline DT): the reference the contract describes."""
    from dtrl.workflow.finetune import finetune

    root = tmp_path_factory.mktemp("native")
    write_pretrained(root / f"pretrain/{TASK}/seed0/model.pt", tiny_dt(TASK), TASK)
    finetune(_exp(root), "none", TASK, 0)
    return root / f"runs/none/{TASK}/seed0"


def _copy(run: Path, dest: Path) -> Path:
    d = dest / "runs" / "none" / TASK / "seed0"
    d.mkdir(parents=True)
    for f in ("progress.csv", "summary.json"):
        (d / f).write_bytes((run / f).read_bytes())
    return d


def test_harness_runs_follow_the_contract(native_run):
    assert check_run(native_run) == []


def test_missing_column_is_named(native_run, tmp_path, capsys):
    from dtrl.cli import main

    d = _copy(native_run, tmp_path)
    with open(d / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in rows[0] if c != "eval_norm_return"]
    with open(d / "progress.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    assert "progress.csv lacks required column 'eval_norm_return'" in check_run(d)
    assert main(["check-run", str(d)]) == 1
    assert "progress.csv lacks required column 'eval_norm_return'" in capsys.readouterr().out


def test_summary_errors_are_named(native_run, tmp_path):
    d = _copy(native_run, tmp_path)
    s = json.loads((d / "summary.json").read_text())
    del s["grad_updates"]
    s["final_norm_return"] = s["final_return"]  # a raw return where the normalised one belongs
    (d / "summary.json").write_text(json.dumps(s))
    errors = check_run(d)
    assert any("lacks required key 'grad_updates'" in e for e in errors), errors
    s["grad_updates"] = 0
    (d / "summary.json").write_text(json.dumps(s))
    assert any("'final_norm_return'" in e and "normalises to" in e for e in check_run(d)), check_run(d)
    (d / "summary.json").unlink()
    assert any("summary.json is missing" in e for e in check_run(d))


def test_external_command_runs_per_task_and_seed(tmp_path, capsys):
    from dtrl.cli import main
    from dtrl.workflow.finetune import finetune

    exp = _exp(tmp_path, toy=_toy())
    s = finetune(exp, "toy", TASK, 0)
    run = tmp_path / f"runs/toy/{TASK}/seed0"
    assert check_run(run) == [] and s["method"] == "toy" and s["env_steps"] >= 300 and s["eval_episodes"] == 3
    assert not (tmp_path / "pretrain").exists()  # no {pretrained} placeholder: no pretrained DT needed
    before = (run / "summary.json").stat().st_mtime_ns
    finetune(exp, "toy", TASK, 0)  # a finished run is not rerun
    assert (run / "summary.json").stat().st_mtime_ns == before
    # The report names it by its entry name.
    from dtrl.report.common import method_label

    assert method_label(exp, "toy") == "toy"
    # A command that breaks the contract: a clear error, and the run is not taken as complete.
    import yaml

    from dtrl.config import to_dict

    bad = _exp(tmp_path, bad=_toy(command=_toy()["command"].replace("--name {method}", "--name other")))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(to_dict(bad)))
    assert main(["finetune", "--method", "bad", "--task", TASK, "--seed", "0", "-c", str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err
    assert "breaks the run contract" in err and "'method' is 'other'" in err
    assert not (tmp_path / f"runs/bad/{TASK}/seed0/summary.json").exists()


@pytest.mark.parametrize("command, message", [
    ("python x.py --out {out} --task {taks}", "unknown placeholder {taks}"),
    ("python x.py --task {task}", "must contain {out}"),
    ("", "needs a command"),
])
def test_bad_external_entries_fail_at_load(tmp_path, command, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        _exp(tmp_path, toy={"algo": "external", "command": command})


def test_pretrained_placeholder_makes_the_workflow_pretrain(tmp_path):
    exp = _exp(tmp_path, toy=_toy(command="run --dt {pretrained} --out {out}"))
    assert exp.method("toy").params.needs_pretrained_dt
    assert not _exp(tmp_path, toy=_toy()).method("toy").params.needs_pretrained_dt


def test_an_external_command_gets_the_pretrained_dt(tmp_path):
    """With {pretrained} in its command, the command is given the stochastic DT the workflow pretrains."""
    from dtrl.workflow.finetune import finetune

    write_pretrained(tmp_path / f"pretrain/{TASK}/seed0/model.pt", tiny_dt(TASK))
    toy = _toy()
    exp = _exp(tmp_path, toy={**toy, "command": "test -f {pretrained} && " + toy["command"]})
    s = finetune(exp, "toy", TASK, 0)
    assert s["method"] == "toy" and check_run(tmp_path / f"runs/toy/{TASK}/seed0") == []


def test_contract_document_lists_the_schema():
    """docs/CONTRACTS.md documents exactly the columns and keys dtrl check-run requires."""
    from dtrl.methods.external import PLACEHOLDERS
    from dtrl.harness.run_schema import PROGRESS_COLUMNS, SUMMARY_TYPES

    text = (REPO / "docs" / "CONTRACTS.md").read_text()
    section = text.split("## The run contract", 1)[1].split("\n## ", 1)[0]
    assert all(f"| `{c}` |" in section for c in PROGRESS_COLUMNS)
    assert all(f"| `{k}` |" in section for k in SUMMARY_TYPES)
    assert all(f"`{{{p}}}`" in section for p in PLACEHOLDERS)
