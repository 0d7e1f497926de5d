"""Several jobs per GPU: `jobs_per_gpu` reaches the GPU rules' resources under the local-gpu profile."""

from __future__ import annotations

import re

import pytest

from test_workflow import copy_workflow, snakemake

TARGET = "results/quick/runs/grpo/pendulum-random/seed0/summary.json"  # needs pretrain (GPU) and data (CPU)


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("wf_gpu"))


def rule_resources(out: str) -> dict[str, str]:
    """The resources line of each rule's first job in a dry run's output."""
    found = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block)
        r = re.search(r"resources: (.*)", block)
        if m and r:
            found.setdefault(m.group(1), r.group(1))
    return found


@pytest.mark.parametrize("k, milli", [(None, 1000), (4, 250)])
def test_jobs_per_gpu_reaches_the_gpu_rules(wf, k, milli):
    lines = ["device: cuda"] + ([] if k is None else [f"jobs_per_gpu: {k}"])
    (wf / "gpu.yaml").write_text("\n".join(lines) + "\n")
    out = snakemake(wf, "-n", "--profile", "workflow/profiles/local-gpu", "--configfile", "config/quick.yaml",
                    "gpu.yaml", "--", TARGET)
    assert out.returncode == 0, out.stderr
    res = rule_resources(out.stdout)
    for rule in ("pretrain", "finetune"):
        assert re.search(rf"\bgpu=1\b.*\bgpu_milli={milli}\b", res[rule]), res[rule]
    assert "gpu_milli" not in res["data"]  # CPU-only jobs do not take a share of a GPU


def test_bad_jobs_per_gpu_is_refused_before_scheduling(wf):
    (wf / "bad.yaml").write_text("jobs_per_gpu: 0\n")
    out = snakemake(wf, "-n", "--configfile", "config/quick.yaml", "bad.yaml", "--", TARGET)
    assert out.returncode != 0 and "jobs_per_gpu is 0; use 1" in out.stderr + out.stdout


def test_bench_jobs_per_gpu_times_k_concurrent_jobs(tmp_path):
    """The measuring script runs k copies of a job at once and sums their updates/s (a stand-in job here)."""
    import json
    import subprocess
    import sys

    from test_workflow import REPO

    job = f"{sys.executable} -c \"import time; time.sleep(0.2); print('updates/s {{k}}.5 job {{i}}')\""
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_jobs_per_gpu.py"), "--k", "1", "3",
                          "--command", job, "--json", str(tmp_path / "rows.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["k"] for r in rows] == [1, 3]
    assert rows[0]["updates_per_s_sum"] == 1.5 and rows[1]["updates_per_s_sum"] == 3 * 3.5
    assert all(r["jobs_per_hour"] == pytest.approx(3600 * r["k"] / r["wall_s"], abs=0.006) for r in rows)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == rows
