"""The Snakemake workflow: lint, the paper grid's DAG, config validation, and a tiny grid end to end.

Snakemake runs in a subprocess, in a copy of the workflow (Snakefile, workflow/, config/) under a
temporary directory, so its `.snakemake/` state and outputs never touch the checkout.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
# pretrain: 12 tasks x 3 seeds stochastic DTs, and as many deterministic ones for ODT+TD3
PAPER_JOBS = {"behaviour": 4, "data": 12, "pretrain": 72, "finetune": 180, "report": 1, "report_html": 1, "all": 1}


def snakemake(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table of a (dry) run."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    counts.pop("total", None)
    return counts


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    for d in ("workflow", "config"):
        shutil.copytree(REPO / d, dest / d, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def wf(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("wf"))


def test_lint_is_clean():
    out = snakemake(REPO, "--lint")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Congratulations, your workflow is in a good condition!" in out.stdout + out.stderr, out.stdout


def test_paper_grid_dry_run(wf):
    """The paper grid: 4 behaviour runs (one per family), 12 datasets, 12 x 3 pretrainings shared by the
    stochastic-DT methods and 12 x 3 deterministic ones for ODT+TD3, 5 methods x 12 tasks x 3 seeds
    finetuning runs, one report."""
    out = snakemake(wf, "-n", "--quiet", "rules")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout) == PAPER_JOBS
    # With the ablation overlay: 11 GRPO-DT variants x 3 ablation tasks x 3 seeds more runs, and for the one on
    # Reinformer its own pretraining per ablation task and seed, nothing else.
    out = snakemake(wf, "-n", "--quiet", "rules", "--configfile", "config/ablations.yaml")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout) == {**PAPER_JOBS, "finetune": 180 + 11 * 3 * 3, "pretrain": 72 + 3 * 3}


def test_a_reinformer_entry_is_pretrained_apart_with_its_backbone(wf):
    (wf / "rf.yaml").write_text("grid: {methods: [grpo, grpo_rf], tasks: [hopper-medium], seeds: [0]}\n"
                                "methods: {grpo_rf: {algo: grpo, backbone: reinformer}}\n")
    out = snakemake(wf, "-n", "-p", "--configfile", "rf.yaml")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout)["pretrain"] == 2
    assert "results/pretrain_reinformer/hopper-medium/seed0/summary.json" in out.stdout
    assert "--backbone reinformer" in out.stdout and "--backbone dt" in out.stdout


def test_deterministic_dt_is_pretrained_only_for_the_methods_that_need_it(wf):
    (wf / "no_td3.yaml").write_text("grid: {methods: [none, grpo, odt, iql]}\n")
    out = snakemake(wf, "-n", "-p", "--configfile", "no_td3.yaml")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout)["pretrain"] == 36 and "pretrain_det/" not in out.stdout
    (wf / "td3.yaml").write_text("grid: {methods: [odt_td3], tasks: [hopper-medium], seeds: [0]}\n")
    out = snakemake(wf, "-n", "-p", "--configfile", "td3.yaml")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout)["pretrain"] == 1
    assert "results/pretrain_det/hopper-medium/seed0/summary.json" in out.stdout
    assert "--set model.action_head=deterministic" in out.stdout
    assert "results/pretrain/hopper-medium" not in out.stdout
    # A diverged pretraining (exit 3, a summary.json and no model.pt) does not stop the grid before the report.
    pre = snakemake(wf, "-n", "-p", "--", "results/pretrain/hopper-medium/seed0/summary.json")
    assert pre.returncode == 0 and "case $rc in 0|3) exit 0" in pre.stdout, pre.stdout[-2000:]


def test_status_counts_the_jobs_of_the_dry_run(wf, tmp_path, capsys):
    """`dtrl status` on a grid nothing has run for counts as pending exactly the jobs Snakemake's dry run
    schedules: the quick grid pretrains 8 DTs (2 tasks x 2 seeds, the stochastic DT and ODT+TD3's
    deterministic one), the paper grid 72; with nothing running it gives no ETA."""
    from dtrl.cli import main
    from dtrl.config.experiment import load_config
    from dtrl.workflow.status import grid_status

    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(f"results: {tmp_path / 'results'}\n")
    out = snakemake(wf, "-n", "--quiet", "rules", "--configfile", "config/quick.yaml", str(fresh))
    assert out.returncode == 0, out.stderr
    dry = job_counts(out.stdout)
    assert dry["pretrain"] == 8
    files = [wf / "config/config.yaml", wf / "config/quick.yaml", fresh]
    st = grid_status(load_config(files))
    assert {rule: s.pending for rule, s in st.items()} == {rule: dry[rule] for rule in st}
    assert all(s.done == s.running == s.stopped == 0 for s in st.values())
    paper = grid_status(load_config([wf / "config/config.yaml", fresh]))
    assert paper["pretrain"].pending == PAPER_JOBS["pretrain"] == 72

    assert main(["status", *(a for f in files for a in ("-c", str(f)))]) == 0
    text = capsys.readouterr().out
    assert f"nothing is running now (0 job(s) stopped, {sum(dry[r] for r in st)} pending)" in text, text
    assert "ETA" not in text


def test_jobs_get_the_users_config_files_and_resources(wf):
    out = snakemake(wf, "-n", "-p", "--cores", "4", "--configfile", "config/quick.yaml", "--",
                    "results/quick/runs/iql/pendulum-random/seed1/summary.json")
    assert out.returncode == 0, out.stderr
    cmds = [line for line in out.stdout.splitlines() if "python -m dtrl.cli" in line]
    assert cmds and all("--config config/config.yaml --config config/quick.yaml" in c for c in cmds)
    assert any("finetune --method iql --task pendulum-random --seed 1" in c for c in cmds)
    assert not any(" pretrain " in c for c in cmds)  # IQL does not need the pretrained DT
    assert "behaviour" not in out.stdout  # a random dataset needs no behaviour policy
    # The quick grid's own resources (config/quick.yaml), not the paper grid's; device: cpu -> no gpu.
    finetune = out.stdout.split("rule finetune:", 1)[1]
    assert re.search(r"resources: .*runtime=30.*cpus_per_task=1.*mem_mb=2000", finetune), finetune
    assert "gpu=0" in finetune


BAD_CONFIGS = [
    ("grid: {tasks: [hopper-medum]}", "unknown task 'hopper-medum'"),
    ("grid: {methods: [none, grpoo]}", "unknown method 'grpoo'"),
    ("onlin: {env_steps: 5}", "unknown config key 'onlin'"),
    ("methods: {odt: {algo: odt, updates_per_iter: 3}}", "methods.odt.updates_per_iter"),
]


@pytest.mark.parametrize("bad, message", BAD_CONFIGS)
def test_invalid_config_is_rejected(tmp_path, bad, message):
    """What the workflow validates with before scheduling anything (in-process: fast)."""
    from dtrl.config import ConfigError
    from dtrl.config.experiment import load_config

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(bad + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config([REPO / "config" / "config.yaml", cfg])


@pytest.mark.parametrize("bad, message", [BAD_CONFIGS[0], BAD_CONFIGS[3]])
def test_invalid_config_stops_the_workflow_before_any_job(wf, tmp_path, bad, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"results: {tmp_path / 'results'}\n{bad}\n")
    out = snakemake(wf, "--cores", "1", "--configfile", str(cfg))
    assert out.returncode != 0
    assert "invalid experiment config" in out.stderr and message in out.stderr, out.stderr
    assert not (tmp_path / "results").exists()


def test_configs_validate_and_quick_runs_every_paper_method():
    from dtrl.config.experiment import load_config

    paper = load_config(REPO / "config" / "config.yaml")
    quick = load_config([REPO / "config" / "config.yaml", REPO / "config" / "quick.yaml"])
    abl = load_config([REPO / "config" / "config.yaml", REPO / "config" / "ablations.yaml"])
    assert len(paper.grid.tasks) == 12 and paper.grid.seeds == [0, 1, 2]
    assert sorted(paper.method(m).algo for m in paper.grid.methods) == ["grpo", "iql", "none", "odt", "odt_td3"]
    assert quick.grid.methods == paper.grid.methods and len(quick.grid.seeds) == 2
    assert quick.results == "results/quick"
    switches = {m: abl.method(m).params for m in abl.grid.ablations}
    # every GRPO-DT switch appears
    assert {p.relabel_mode for p in switches.values()} == {"none", "learner", "both"}
    assert {p.ratio for p in switches.values()} == {"sequence", "geometric", "token"}
    assert {p.reset_sampling for p in switches.values()} == {"variance", "squashed_variance", "uniform"}
    assert {(p.rtg, p.eval_at) for p in switches.values()} == {("eval", "train"), ("online", "train"),
                                                               ("online", "task")}
    assert len({p.eval_len for p in switches.values()}) >= 2


def test_config_readme_documents_every_key():
    from dtrl.config.experiment import describe
    from dtrl.config.registry import ALGORITHMS, get_algorithm

    readme = (REPO / "config" / "README.md").read_text()
    missing = [k for k, _, _ in describe() if f"`{k}`" not in readme]
    assert not missing, f"config/README.md lacks {missing}: run python workflow/scripts/config_readme.py"
    for algo in ALGORITHMS:
        section = readme.split(f"#### `algo: {algo}`", 1)
        assert len(section) == 2, f"config/README.md has no section for algo {algo}"
        body = section[1].split("####", 1)[0]
        missing = [k for k, _, _ in describe(get_algorithm(algo).Config) if f"`{k}`" not in body]
        assert not missing, f"config/README.md lacks {algo} parameters {missing}: run workflow/scripts/config_readme.py"


def test_conda_env_lists_the_package_dependencies():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = (REPO / "workflow" / "envs" / "dtrl.yaml").read_text()
    assert all(f"- {d}" in env for d in deps), [d for d in deps if f"- {d}" not in env]


TINY = """\
    # Smaller than the quick grid: one task, two methods, one seed, a few hundred steps.
    results: results
    device: cpu
    threads: 1
    grid:
      methods: [none, odt, toy]
      tasks: [pendulum-medium-replay]
      seeds: [0]
    data:
      generator: {transitions: 1000, sac_steps: 1200, sac_envs: 2, sac_start_steps: 400, sac_batch_size: 32,
                  sac_hidden: 16, eval_every: 400, eval_episodes: 2, rollout_envs: 2, device: cpu,
                  progress: false}
    model: {embed_dim: 16, n_layers: 1, n_heads: 1, context_len: 4, eval_context_len: 2}
    pretrain: {updates: 30, batch_size: 8, warmup_updates: 5, log_every: 10, checkpoint_every: 10, eval_episodes: 1}
    eval: {episodes: 1, final_episodes: 2}
    online: {env_steps: 200, eval_every_env_steps: 100, progress: false}
    methods:
      odt: {updates_per_iteration: 5, batch_size: 8, warmup_updates: 5}
      toy:                         # a baseline from another codebase: one config entry naming its command
        algo: external
        command: "python scripts/external_random_baseline.py --name {method} --task {task} --seed {seed} --out {out}
                  --env-steps {env_steps} --eval-episodes {eval_episodes} --eval-every 100"
"""


@pytest.mark.slow
def test_tiny_grid_end_to_end(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    (wf / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "external_random_baseline.py", wf / "scripts")
    (wf / "tiny.yaml").write_text(textwrap.dedent(TINY))
    out = snakemake(wf, "--cores", "2", "--configfile", "tiny.yaml")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = wf / "results"
    # The datasets' warnings (the tiny SAC run is far from the 'medium' return) reach the terminal.
    from dtrl.config.experiment import load_config
    from dtrl.report.runs import data_warnings

    warnings = data_warnings(load_config([wf / "config" / "config.yaml", wf / "tiny.yaml"], {"results": str(res)}))
    assert all(f"dtrl: warning: {w}" in out.stderr for w in warnings), out.stderr[-3000:]

    table = pd.read_csv(res / "tables" / "main.csv")
    assert list(table.columns[:4]) == ["task", "none_mean", "none_std", "none_seeds"]
    assert {"odt_mean", "odt_std", "odt_seeds"} <= set(table.columns)
    assert "odt_published" not in table  # no published number for any pendulum task: no empty column
    assert list(table["task"]) == ["pendulum-medium-replay", "average", "env_steps", "env_steps_eval",
                                   "policy_updates", "critic_updates", "wall_time", "pretrain_wall_time"]
    rows = table.set_index("task")
    assert rows.loc["pendulum-medium-replay", "odt_seeds"] == 1
    toy = json.loads((res / "runs/toy/pendulum-medium-replay/seed0/summary.json").read_text())
    assert rows.loc["pendulum-medium-replay", "toy_seeds"] == 1 and rows.loc["env_steps", "toy_mean"] >= 200
    assert rows.loc["pendulum-medium-replay", "toy_mean"] == pytest.approx(toy["final_norm_return"])
    assert rows.loc["env_steps", "none_mean"] == 0 and rows.loc["env_steps", "odt_mean"] >= 200
    assert (res / "tables" / "main.md").exists()
    assert list((res / "figures").glob("*.png")) and list((res / "figures").glob("*.pdf"))
    for log in ["behaviour/pendulum.log", "data/pendulum-medium-replay.log", "pretrain/pendulum-medium-replay/seed0.log",
                "finetune/odt/pendulum-medium-replay/seed0.log", "report.log"]:
        assert (res / "logs" / log).exists(), log

    # Snakemake's HTML report is one file holding the tables and the figures (marked with report()).
    out = snakemake(wf, "--configfile", "tiny.yaml", "--report", "results/report.html")
    assert out.returncode == 0, out.stderr[-3000:]
    page = (res / "report.html").read_text()
    embedded = [base64.b64decode(b).decode("utf-8", "replace")
                for b in re.findall(r"data:text/html;[^,]*base64,([A-Za-z0-9+/=]+)", page)]
    main_page = next((p for p in embedded if "<h1>Main results</h1>" in p), None)
    assert main_page and "<td>pendulum-medium-replay</td>" in main_page and "ODT" in main_page
    assert re.search(r"data:image/png;[^,]*base64,[A-Za-z0-9+/=]{1000}", page)  # at least one figure
    assert "learning_curves_pendulum-medium-replay" in page and "Learning curves" in page
    # It opens on REPORT.md (workflow/report/workflow.rst): its findings and tables on the landing page.
    landing = json.loads(re.search(r"workflow_desc = (\".*?(?<!\\)\")", page).group(1))
    assert 'class="dtrl-report"' in landing and "<h2>Findings</h2>" in landing and "<h2>Main results</h2>" in landing
    assert (res / "report" / "REPORT.html").exists()

    # A rerun after a completed run does nothing.
    out = snakemake(wf, "-n", "--configfile", "tiny.yaml")
    assert out.returncode == 0 and "Nothing to be done" in out.stdout + out.stderr, out.stdout

    # Deleting a run's output redoes only that run (then the report), and the run resumes from its
    # checkpoint: Snakemake never deletes the undeclared files beside a rule's declared output.
    odt = res / "runs" / "odt" / "pendulum-medium-replay" / "seed0"
    assert (odt / "checkpoint.pt").exists()
    (odt / "summary.json").unlink()
    out = snakemake(wf, "-n", "--quiet", "rules", "--configfile", "tiny.yaml")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout) == {"finetune": 1, "report": 1, "report_html": 1, "all": 1}
    out = snakemake(wf, "--cores", "2", "--configfile", "tiny.yaml")
    assert out.returncode == 0, out.stderr[-3000:]
    assert job_counts(out.stdout + out.stderr) == {"finetune": 1, "report": 1, "report_html": 1, "all": 1}
    log = (res / "logs" / "finetune" / "odt" / "pendulum-medium-replay" / "seed0.log").read_text()
    assert "resumed" in log
    assert log.count("== attempt ") == 2  # the first attempt's output survives the rerun (<log>.history)
    assert (odt / "summary.json").exists()

    # The same when the whole run directory is deleted.
    shutil.rmtree(odt)
    out = snakemake(wf, "-n", "--quiet", "rules", "--configfile", "tiny.yaml")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout) == {"finetune": 1, "report": 1, "report_html": 1, "all": 1}
