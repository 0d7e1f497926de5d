# Shared definitions of the dtrl workflow: the validated experiment config, the job grid derived
# from it, and the helpers of data.smk, train.smk and report.smk (which hold the rules).
#
# The experiment config is the same YAML the user gave Snakemake: config/config.yaml (the
# `configfile:` of the Snakefile) with every `--configfile` merged on top in order, and every
# `--config KEY=VALUE` on top of that, exactly as Snakemake merges them. It is loaded and
# validated here with dtrl's typed config before any job is scheduled (an unknown method, task or
# key stops the workflow with dtrl's one-line message), and each job gets the same files as
# repeated `--config` options (`--set KEY=VALUE` for command-line values), so a job sees exactly
# what was validated.

import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

try:
    import dtrl  # noqa: F401
except ImportError:  # not installed: use the checkout the workflow lives in
    sys.path.insert(0, str(Path(workflow.basedir).resolve().parents[1]))

from dtrl.config import ConfigError
from dtrl.config.pretrain import pretrain_dir, pretrain_dirs
from dtrl.tasks import get_task


def _display_path(path):
    """A config file as the jobs are given it: relative to the working directory when inside it,
    so the command (and Snakemake's params record) does not change when the checkout moves."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p.resolve())


def _experiment_files():
    """Config files in Snakemake's merge order: the workflow's configfile, then --configfile ones."""
    settings = workflow.config_settings
    cli = [Path(p) for p in settings.configfiles]
    cli_abs = {p.resolve() for p in cli}
    files = [] if settings.replace_workflow_config else [
        Path(p) for p in workflow.configfiles if Path(p).resolve() not in cli_abs]
    return [_display_path(p) for p in files + cli]


def _typed(value):
    """Snakemake reads nested --config values as strings only (`online={"env_steps": 3000}` gives
    '3000'); read their leaves as YAML scalars, as a config file would have them."""
    import yaml

    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return value if isinstance(parsed, (dict, list)) else parsed
    return value


def _experiment_overrides():
    """`snakemake --config KEY=VALUE` values, as a nested mapping for dtrl's load_config."""
    top = dict(workflow.config_settings.config or {})
    return {str(k): (_typed(v) if isinstance(v, (dict, list)) else v) for k, v in top.items()}


def _load_experiment():
    from dtrl.config.experiment import load_config

    try:
        return load_config(EXPERIMENT_FILES, EXPERIMENT_OVERRIDES)
    except ConfigError as e:
        raise WorkflowError(f"invalid experiment config: {e}") from None


def _put_python_on_path():
    """Jobs run `python -m dtrl.cli`: make `python` the interpreter running Snakemake (the one dtrl
    is installed in), unless a conda env of the rule (--sdm conda) puts its own first."""
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[:1] != [bindir]:
        os.environ.update(PATH=os.pathsep.join([bindir, path]) if path else bindir)


EXPERIMENT_FILES = _experiment_files()
EXPERIMENT_OVERRIDES = _experiment_overrides()
EXP = _load_experiment()
_put_python_on_path()

# What every dtrl call of the workflow is given: the experiment's files (and command-line values).
DTRL_CONFIG_ARGS = " ".join(
    [f"--config {shlex.quote(f)}" for f in EXPERIMENT_FILES]
    + [f"--set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in EXPERIMENT_OVERRIDES.items()])

R = Path(EXP.results).as_posix()  # every output lives under the experiment's results root


def data_root():
    from dtrl.data.generate import data_root as root

    return Path(root(EXP)).as_posix()


DATA_ROOT = data_root()


# -- the job grid ------------------------------------------------------------------------------------

def _runs():
    """(method, task, seed) of every finetuning run: the same list `dtrl report` reads."""
    from dtrl.report.runs import expected_runs

    return expected_runs(EXP)


def _needs_pretrained_dt(method):
    from dtrl.config.registry import get_algorithm

    spec = EXP.method(method)  # an external command's entry decides per entry (a {pretrained} placeholder)
    return bool(getattr(spec.params, "needs_pretrained_dt", getattr(get_algorithm(spec.algo), "needs_pretrained_dt", True)))


def _pretrained_dir(method):
    """The pretraining directory of the model a method finetunes, by its action head and backbone
    (ODT+TD3's deterministic DT and a Reinformer entry each have their own pretraining)."""
    kind = EXP.pretrained_kind(method)
    return pretrain_dir(*kind) if kind else None


RUNS = _runs()
NEEDS_DT = {m: _needs_pretrained_dt(m) for m in sorted({m for m, _, _ in RUNS})}
DT_DIR = {m: _pretrained_dir(m) for m in NEEDS_DT}
# (task, seed, dir) of every pretraining the grid needs: a deterministic DT or another backbone only where a
# method needs one.
PRETRAIN = sorted({(t, s, DT_DIR[m]) for m, t, s in RUNS if NEEDS_DT[m]})
# (head, backbone) of each pretraining directory the pretrain rule can make
KIND_OF_DIR = pretrain_dirs()
TASKS = sorted({t for _, t, _ in RUNS})


def is_generated(task):
    """A task without an entry in data.sources is generated by the D4RL recipe (as `dtrl data` decides)."""
    return task not in EXP.data.sources


def needs_behaviour(task):
    """Generated tasks other than `random` roll out (or replay) the family's SAC behaviour run."""
    return is_generated(task) and get_task(task).quality != "random"


FAMILIES = sorted({get_task(t).family.name for t in TASKS if needs_behaviour(t)})


def behaviour_until(wildcards):
    """How far the family's SAC run must go: to 'expert' only if an expert dataset of it is in the grid."""
    qualities = {get_task(t).quality for t in TASKS if needs_behaviour(t) and get_task(t).family.name == wildcards.family}
    return "expert" if qualities & {"expert", "medium-expert"} else "medium"


# -- paths -------------------------------------------------------------------------------------------

def behaviour_done(family):
    # A flag Snakemake touches when `dtrl behaviour` succeeds. Not metadata.json: the behaviour run
    # writes that at 'medium' already and needs it to resume, and Snakemake deletes the declared
    # outputs of a failed job.
    return f"{DATA_ROOT}/behaviour/{family}/complete.flag"


def data_done(task):
    return f"{R}/data/{task}.json"


def pretrain_done(task, seed, pdir="pretrain"):
    # summary.json, not model.pt: a pretraining that diverged writes its summary (status: diverged) and no
    # model.pt; its finetuning runs then record themselves as diverged and the grid still reaches the report.
    return f"{R}/{pdir}/{task}/seed{seed}/summary.json"


def run_done(method, task, seed):
    return f"{R}/runs/{method}/{task}/seed{seed}/summary.json"


REPORT_MAIN = f"{R}/tables/main.csv"
REPORT_MAIN_MD = f"{R}/tables/main.md"
REPORT_PAGE = f"{R}/REPORT.md"  # dtrl report's results page (dtrl/report/page.py)
REPORT_HTML = f"{R}/report/REPORT.html"  # it as HTML, in Snakemake's report
REPORT_FRONT = f"{R}/report/front.html"  # and as the report's landing page (workflow/report/workflow.rst)


# Categories of Snakemake's HTML report (--report), in menu order (it sorts them by name), and the
# subcategories tables and figures are filed under by name.
REPORT_CATEGORIES = {"page": "1. REPORT.md", "tables": "2. Tables", "figures": "3. Figures"}
TABLE_SUBCATEGORIES = {"main": "Scores", "published": "Scores", "published_reference": "Scores",
                       "aggregates": "Aggregates and comparisons", "probability_of_improvement": "Aggregates and comparisons",
                       "findings": "Aggregates and comparisons", "ablations": "Ablations",
                       "not_scored": "Runs not scored"}
FIGURE_SUBCATEGORIES = {"learning_curves_": "Learning curves", "ratio_diagnostics_": "Ratio diagnostics"}


def table_subcategory(wildcards):
    return TABLE_SUBCATEGORIES.get(wildcards.name, "Other tables")


def figure_subcategory(wildcards):
    """Learning curves and ratio diagnostics (one figure per task) apart from the aggregate figures."""
    return next((sub for prefix, sub in FIGURE_SUBCATEGORIES.items() if wildcards.name.startswith(prefix)),
                "Aggregates")


# -- input functions ---------------------------------------------------------------------------------

def data_inputs(wildcards):
    task = wildcards.task
    return {"behaviour": behaviour_done(get_task(task).family.name)} if needs_behaviour(task) else {}


def finetune_inputs(wildcards):
    inputs = {"data": data_done(wildcards.task)}
    if NEEDS_DT.get(wildcards.method, True):
        inputs["model"] = pretrain_done(wildcards.task, wildcards.seed, DT_DIR[wildcards.method])
    return inputs


def report_inputs(wildcards):
    return [run_done(m, t, s) for m, t, s in RUNS]


# -- resources ---------------------------------------------------------------------------------------
# Threads, memory and time limits per rule come from the experiment config (`resources`, see
# config/README.md): the paper grid's defaults are large, config/quick.yaml declares small ones, so
# what a scheduler is asked for follows the grid. runtime is in minutes. Every job runs torch with
# exactly its Snakemake threads (`--set threads={threads}`). A profile's set-resources still wins.

RES = EXP.resources
THREADS = {rule: RES.threads(rule, EXP.threads) for rule in ("behaviour", "data", "pretrain", "finetune", "report")}


def _gpus(device):
    """GPUs a DT or SAC job asks for: resources.gpus when set, else none on a cpu device, else one."""
    return RES.gpus if RES.gpus is not None else (0 if device == "cpu" else 1)


GPU = _gpus(EXP.device)
SAC_GPU = _gpus(EXP.data.generator.device)


def gpu_milli(gpus):
    """Thousandths of a GPU a job asks for: 1000 / jobs_per_gpu per GPU. The local-gpu profile provides
    1000 per GPU of the machine, so `jobs_per_gpu` jobs share each GPU (SLURM ignores it: --gpus=gpu)."""
    return gpus * 1000 // EXP.jobs_per_gpu


def cpus(wildcards, threads):
    return threads


# -- job logs ----------------------------------------------------------------------------------------
# Snakemake deletes a job's declared log before it reruns the job, which would lose the output of a
# killed attempt. Every dtrl job therefore appends its output to `<log>.history` (undeclared, so
# never deleted), each attempt headed by its start time and host, and copies that file to the
# declared log when it ends: the log holds every attempt, and `<log>.history` is the live one.
# dtrl finetune's and dtrl pretrain's exit code 3 (it diverged; its summary.json records status: diverged, and
# the report lists the runs as not scored) counts as success, so one diverged run does not stop the grid.

EXIT_DIVERGED = 3


def logged(command, ok_codes=(0,)):
    ok = "|".join(str(c) for c in ok_codes)
    return (f'echo "== attempt $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) ==" >> {{log}}.history; rc=0; '
            f"{command} >> {{log}}.history 2>&1 || rc=$?; cp {{log}}.history {{log}}; "
            f"case $rc in {ok}) exit 0;; *) exit $rc;; esac")
