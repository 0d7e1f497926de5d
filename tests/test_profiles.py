"""The Snakemake profiles: what each job of a grid would ask SLURM for (dry runs, no cluster needed).

The SLURM profile names `executor: slurm`, so these tests need snakemake-executor-plugin-slurm (in the
`test` extra); the sbatch line is built by the plugin's own submit-string code from each job's resources.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_workflow import REPO, copy_workflow

pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[test]' installs the SLURM plugin")


@pytest.fixture(scope="module")
def wf(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("wf_profiles"))


def job_resources(wf: Path, *args: str) -> dict[str, list[dict[str, str]]]:
    """rule -> the resources of each of its jobs, from a dry run through the SLURM profile."""
    # --cores: a dry run caps threads at the local cores (1 by default); the SLURM executor does not.
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "64", "--profile",
                          "workflow/profiles/slurm", *args],
                         cwd=wf, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    jobs: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out.stdout):
        m = re.match(r"(?:local)?rule (\w+):", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if m and res:
            jobs.setdefault(m.group(1), []).append(dict(kv.split("=", 1) for kv in res.group(1).split(", ")))
    return jobs


class _Resources(dict):
    __getattr__ = dict.get


def sbatch(resources: dict[str, str]) -> str:
    """The sbatch call the SLURM plugin makes for a job with these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    res = _Resources({k: int(v) if v.isdigit() else v for k, v in resources.items()})
    job = SimpleNamespace(resources=res, threads=int(res.get("cpus_per_task") or 1))
    params = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "", "partition": "",
              "workdir": None}
    return get_submit_command(job, params) + set_gres_string(job)


def test_slurm_requests_follow_the_quick_grid(wf):
    jobs = job_resources(wf, "--configfile", "config/quick.yaml")
    assert set(jobs) >= {"behaviour", "data", "pretrain", "finetune"}
    for rule, rs in jobs.items():
        if rule == "all":
            continue
        for r in rs:
            call = sbatch(r)
            assert "--cpus-per-task=1" in call, (rule, call)  # quick.yaml's threads: 1, not a profile's 4
            assert re.search(r"--mem 2000\b", call) and int(r["runtime"]) <= 30, (rule, call)
            assert "--gpus" not in call, (rule, call)  # device: cpu asks for no GPU


def test_slurm_requests_of_the_paper_grid(wf):
    jobs = job_resources(wf, "--", "results/runs/odt/hopper-medium/seed0/summary.json")
    call = sbatch(jobs["finetune"][0])
    assert "-t 1440" in call and "--mem 16000" in call and "--gpus=1" in call and "--cpus-per-task=4" in call, call
    assert "--gpus" not in sbatch(jobs["data"][0])
    assert "--gpus=1" in sbatch(jobs["behaviour"][0])  # SAC follows device: auto
    # `--config device=cpu` (a CPU-only cluster) reaches every rule: no job asks for a GPU, SAC's included
    # (data.generator.device follows the experiment's device unless set).
    jobs = job_resources(wf, "--config", "device=cpu", "--", "results/runs/odt/hopper-medium/seed0/summary.json")
    assert set(jobs) >= {"behaviour", "data", "pretrain", "finetune"}
    for rule, rs in jobs.items():
        assert all(r.get("gpu", "0") == "0" and "--gpus" not in sbatch(r) for r in rs), (rule, rs)


def test_slurm_profile_sets_the_status_command_and_user_lines_add_to_it():
    """The profile makes scancel'ed jobs visible (squeue status), and its default-resources hold only the
    commented user lines, so `--default-resources slurm_account=...` drops no size."""
    import yaml

    prof = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    assert prof["slurm-status-command"] == "squeue"
    assert not prof.get("default-resources") and not prof.get("set-threads")
    assert not any(isinstance(v, dict) and {"mem_mb", "runtime"} & set(v) for v in (prof.get("set-resources") or {}).values())
