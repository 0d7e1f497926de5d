"""`dtrl report`: tables and rliable figures from finished runs.

Reads ``<runs>/<method>/<task>/seed<seed>/summary.json`` (final score, budgets) and ``progress.csv``
(learning curves) for the experiment's grid and writes, under ``<out>`` (default: ``exp.results``)::

    tables/main.csv, main.md         task rows x method columns: final normalised score, mean and
                                     std over seeds, an average row, the budgets each method used,
                                     and the published numbers beside ours where the tasks match
    tables/aggregates.csv, .md       IQM / median / mean / optimality gap, stratified-bootstrap CIs
    tables/probability_of_improvement.csv   P(GRPO-DT > baseline) with CIs (grid has a grpo entry)
    tables/ablations.csv, .md        one row per GRPO-DT variant (grid.ablations), when present
    tables/not_scored.csv, .md       runs of the grid left out of every score: diverged or failed
                                     (summary status other than completed, or no finite score) and missing
    figures/aggregate_metrics.png|pdf, performance_profile.png|pdf,
    figures/probability_of_improvement.png|pdf, learning_curves_<task>.png|pdf
    figures/ratio_diagnostics_<task>.png|pdf   per ablation task, when an ablation changes relabel or ratio:
                                     log-ratio quantiles, first |ratio - 1|, clip fraction, KL over training
    tables/findings.csv, .md, REPORT.md   the grid's comparisons and the results page (dtrl/report/page.py)

Scores are D4RL normalised scores (0 = random, 100 = expert). The optimality gap is taken to the
expert score, gamma = 100. Standard deviations over seeds are sample standard deviations (ddof=1;
0 for a single seed). The rliable estimates use only the seeds a method finished on every task of
the grid, so its score matrix is complete (rliable needs runs x tasks without holes).

Only completed runs are scored. The runs of one cell (method x task) must have been made under one
method config (as their summaries record it, :mod:`dtrl.harness.provenance`): the report refuses, naming the
runs and the keys that differ, to average runs made under different ones or made before dtrl
recorded configs together with runs that record one.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from dtrl.config.experiment import ExperimentConfig
from dtrl.util.io import atomic_savefig, read_json
from dtrl.report.common import (  # noqa: F401  (shared with page.py; re-exported)
    ALGO_LABELS, CI, _fmt_count, _md_table, _seeded, _write_csv, _write_text, ablation_base, algo_of, budgets_differ,
    method_label,
)
from dtrl.reference import PUBLISHED_METHODS, published_scores

MAIN_ALGO = "grpo"  # the method the probability-of-improvement figure compares against each baseline
AGGREGATE_METRICS = ("IQM", "Median", "Mean", "Optimality Gap")
OPTIMALITY_GAMMA = 100.0  # D4RL normalised scores: the expert is 100
# The update axis of every table and curve: optimizer steps of the acting policy (DT or actor),
# counted the same way for every method (dtrl.harness.online); critic steps are reported apart.
UPDATE_AXIS = "policy_updates"
WALL_ROW, PRETRAIN_WALL_ROW = "wall_time", "pretrain_wall_time"
BUDGET_ROWS = {"env_steps": "env steps / run", "env_steps_eval": "eval env steps / run",
               UPDATE_AXIS: "policy (DT / actor) updates / run", "critic_updates": "critic updates / run",
               WALL_ROW: "wall time / run (s)", PRETRAIN_WALL_ROW: "wall time of the pretraining it starts from (s)"}
AVERAGE_ROW = "average"
REPS = 2000  # bootstrap replications for the aggregate metrics
PROFILE_REPS = 1000
POI_REPS = 1000
CURVE_REPS = 1000


@dataclass
class Run:
    method: str
    task: str
    seed: int
    summary: dict[str, Any]
    run_dir: Path
    _progress: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def score(self) -> float:
        v = self.summary.get("final_norm_return")
        return float("nan") if v is None else float(v)

    def progress(self) -> pd.DataFrame | None:
        """progress.csv, or None where it is absent or unreadable (a scored run's was checked already)."""
        if self._progress is None:
            path = self.run_dir / "progress.csv"
            try:
                self._progress = pd.read_csv(path)
            except (OSError, ValueError, pd.errors.ParserError):  # EmptyDataError is a ValueError
                return None
        return self._progress


# ----------------------------------------------------------------------------------------------
# Collecting runs
# ----------------------------------------------------------------------------------------------

def expected_runs(exp: ExperimentConfig) -> list[tuple[str, str, int]]:
    """(method, task, seed) of every run the grid asks for: main grid, ablations and their bases."""
    out: list[tuple[str, str, int]] = []
    for m in exp.grid.methods:
        out += [(m, t, s) for t in exp.grid.tasks for s in exp.grid.seeds]
    for m in ablation_rows(exp):
        out += [(m, t, s) for t in exp.grid.ablation_tasks for s in exp.grid.seeds]
    seen: set = set()
    return [r for r in out if not (r in seen or seen.add(r))]


def ablation_rows(exp: ExperimentConfig) -> list[str]:
    """Rows of the ablation table: for each algorithm ablated, its base entry (the first grid method
    with that algorithm, if any) followed by its ablation entries."""
    rows: list[str] = []
    for a in exp.grid.ablations:
        base = ablation_base(exp, a)
        for m in ([base] if base else []) + [a]:
            if m not in rows:
                rows.append(m)
    return rows


def load_runs(runs_dir: Path, keys: list[tuple[str, str, int]]) -> tuple[dict[tuple[str, str, int], Run], list]:
    """The runs of ``keys`` that have a summary.json (whatever it holds: :func:`split_scored` judges it),
    and the keys that have none. A summary.json that is not JSON at all is an input error naming it."""
    runs, missing = {}, []
    for key in keys:
        method, task, seed = key
        d = Path(runs_dir) / method / task / f"seed{seed}"
        path = d / "summary.json"
        if not path.exists():
            missing.append(key)
            continue
        runs[key] = Run(method, task, seed, read_json(path, fix=f"delete {d} and rerun that run"), d)
    return runs, missing


def not_scored_reason(run: Run) -> str | None:
    """Why a run that has a summary is left out of the scores, or None if it is scored
    (:func:`dtrl.harness.run_schema.unscored_reason`, the rule `dtrl check-run` checks)."""
    from dtrl.harness.run_schema import unscored_reason

    return unscored_reason(run.run_dir, run.summary, run.task)


def split_scored(runs: dict) -> tuple[dict, list[dict[str, Any]]]:
    """(the runs to score, one row per run left out: method, task, seed, status, reason). Status: the
    summary's (diverged, failed), else 'invalid' (files that break the run contract)."""
    scored, left_out = {}, []
    for key, run in runs.items():
        reason = not_scored_reason(run)
        if reason is None:
            scored[key] = run
        else:
            status = run.summary.get("status", "completed") if isinstance(run.summary, dict) else "completed"
            left_out.append({"method": run.method, "task": run.task, "seed": run.seed,
                             "status": "invalid" if status == "completed" else str(status), "reason": reason})
    return scored, left_out


def check_cells_share_config(runs: dict) -> None:
    """Refuse (ConfigError) if the runs of a (method, task) cell were made under different method configs."""
    from dtrl.config import ConfigError
    from dtrl.harness.provenance import changed_keys, method_config

    cells: dict[tuple[str, str], list[Run]] = {}
    for (m, t, _), run in sorted(runs.items()):
        cells.setdefault((m, t), []).append(run)
    for (m, t), rs in cells.items():
        ref = rs[0]
        ref_cfg = method_config(ref.summary.get("config"))
        for r in rs[1:]:
            cfg = method_config(r.summary.get("config"))
            if (cfg is None) != (ref_cfg is None):
                old = ref if ref_cfg is None else r
                raise ConfigError(f"{m} on {t}: seed {old.seed} ({old.run_dir}) records no config (made before dtrl "
                                  "recorded configs) but other seeds do, so they cannot be shown to share one; rerun "
                                  f"it (delete {old.run_dir}) or leave it out of the grid")
            diff = [] if cfg is None else changed_keys(ref_cfg, cfg)
            if diff:
                shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
                raise ConfigError(f"{m} on {t}: seed {ref.seed} and seed {r.seed} were made under different method "
                                  f"configs ({shown}); rerun the runs made under the old config (delete their run "
                                  "directories) or give the variant its own method entry")


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

def _std(x: list[float]) -> float:
    x = [v for v in x if not math.isnan(v)]
    return float(np.std(x, ddof=1)) if len(x) > 1 else (0.0 if x else float("nan"))


def _mean(x: list[float]) -> float:
    x = [v for v in x if not math.isnan(v)]
    return float(np.mean(x)) if x else float("nan")


def score_cell(runs: dict, method: str, task: str, seeds: list[int]) -> tuple[float, float, int]:
    scores = [runs[(method, task, s)].score for s in seeds if (method, task, s) in runs]
    return _mean(scores), _std(scores), len(scores)


def average_cell(runs: dict, method: str, tasks: list[str], seeds: list[int]) -> tuple[float, float, int]:
    """Mean over tasks of the per-task means; std over seeds of each seed's task-average (seeds that
    finished every task); the number of such complete seeds."""
    task_means = [score_cell(runs, method, t, seeds)[0] for t in tasks]
    mean = float(np.mean(task_means)) if tasks and not any(math.isnan(v) for v in task_means) else float("nan")
    per_seed = [float(np.mean([runs[(method, t, s)].score for t in tasks])) for s in seeds
                if all((method, t, s) in runs for t in tasks)]
    return mean, _std(per_seed), len(per_seed)


def budget_cell(runs: dict, method: str, tasks: list[str], seeds: list[int], key: str) -> tuple[float, float, int]:
    vals = [float(r.summary[key]) for t in tasks for s in seeds
            if (r := runs.get((method, t, s))) is not None and r.summary.get(key) is not None]
    return _mean(vals), _std(vals), len(vals)


def task_groups(tasks: list[str]) -> list[tuple[str, list[str]]]:
    """The grid's tasks grouped by benchmark family (locomotion, adroit, antmaze), in grid order."""
    from dtrl.tasks import get_task

    groups: dict[str, list[str]] = {}
    for t in tasks:
        groups.setdefault(get_task(t).family.suite, []).append(t)
    return list(groups.items())


def group_average_row(suite: str) -> str:
    return f"{AVERAGE_ROW} ({suite})"


def _is_average(row: str) -> bool:
    return row == AVERAGE_ROW or row.startswith(AVERAGE_ROW + " (")


def main_table(exp: ExperimentConfig, runs: dict) -> pd.DataFrame:
    """The main table: the tasks grouped by family, each group followed by its ``average (<family>)``
    row when the grid has several families, then ``average`` over every task, then one row per budget.

    Columns: ``task``; per method ``<m>_mean``, ``<m>_std``, ``<m>_seeds`` (runs found; for budget
    rows, runs averaged over); ``<m>_success`` (mean success rate over seeds: AntMaze, Adroit);
    and ``<m>_published`` where the method's algorithm has published numbers for some task of the
    grid (Yan et al. 2024, final score after finetuning). Budget rows hold per-run means in ``_mean``
    and std over runs; the ``pretrain_wall_time`` row is the wall time of the pretraining each run
    started from (:func:`start_wall_time`).
    """
    tasks, seeds, pub = list(exp.grid.tasks), list(exp.grid.seeds), published_scores()
    groups = task_groups(tasks)
    order: list[tuple[str, list[str]]] = []  # (row, the tasks an average row averages)
    for suite, members in groups:
        order += [(t, [t]) for t in members]
        if len(groups) > 1:
            order.append((group_average_row(suite), members))
    order += [(AVERAGE_ROW, tasks)] + [(b, tasks) for b in BUDGET_ROWS]
    published = published_methods(exp)
    rows: list[dict[str, Any]] = []
    for task, members in order:
        row: dict[str, Any] = {"task": task}
        for m in exp.grid.methods:
            if _is_average(task):
                mean, std, n = average_cell(runs, m, members, seeds)
            elif task == PRETRAIN_WALL_ROW:
                vals = [w for t in tasks for s in seeds if (m, t, s) in runs
                        and not math.isnan(w := start_wall_time(exp, runs[(m, t, s)]))]
                mean, std, n = _mean(vals), _std(vals), len(vals)
            elif task in BUDGET_ROWS:
                mean, std, n = budget_cell(runs, m, tasks, seeds, task)
            else:
                mean, std, n = score_cell(runs, m, task, seeds)
            row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_seeds": n})
            rates = [r.summary["final_success_rate"] for s in seeds
                     if (r := runs.get((m, task, s))) is not None and "final_success_rate" in r.summary]
            row[f"{m}_success"] = float(np.mean(rates)) if rates else float("nan")
            if m in published:  # a column only where some task of the grid has a published number
                row[f"{m}_published"] = _published_cell(pub, algo_of(exp, m), task, members)
        rows.append(row)
    return pd.DataFrame(rows)


def published_methods(exp: ExperimentConfig) -> list[str]:
    """Grid methods whose algorithm has a published column with a number for some task of the grid."""
    pub = published_scores()
    return [m for m in exp.grid.methods if algo_of(exp, m) in PUBLISHED_METHODS
            and any(pub.score(algo_of(exp, m), t) is not None for t in exp.grid.tasks)]


def _published_cell(pub, algo: str, task: str, tasks: list[str]) -> float:
    if _is_average(task):  # only where every task averaged has a published number
        vals = [pub.score(algo, t) for t in tasks]
        return float(np.mean(vals)) if tasks and None not in vals else float("nan")
    if task in BUDGET_ROWS:
        return float("nan")
    v = pub.score(algo, task)
    return float("nan") if v is None else float(v)


def _fmt_score(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "–"
    return f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f}"


def _fmt_seconds(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.0f}" if x >= 10 else f"{x:.2g}"


def d4rl_tasks(tasks: list[str]) -> list[str]:
    """The tasks scored with D4RL's reference returns (the families D4RL has); the others (pendulum)
    use dtrl's own reference returns (`dtrl tasks`)."""
    from dtrl.tasks import get_task

    return [t for t in tasks if get_task(t).family.d4rl_prefix is not None]


def score_label(tasks: list[str]) -> str:
    """What a table of ``tasks`` holds: 'D4RL normalised score' only when every task is a D4RL task."""
    d4rl = d4rl_tasks(tasks)
    own = [t for t in tasks if t not in d4rl]
    if not own:
        return "D4RL normalised score (0 = random, 100 = expert: D4RL's reference returns)"
    if not d4rl:
        return ("normalised score (0 = random, 100 = expert) with dtrl's own reference returns, not D4RL's "
                "(these tasks are not in D4RL; `dtrl tasks`)")
    return (f"normalised score (0 = random, 100 = expert): D4RL's reference returns for {', '.join(d4rl)}; dtrl's "
            f"own for {', '.join(own)}, which D4RL does not have (`dtrl tasks`)")


def success_note(tasks: list[str]) -> str:
    """The success-rate sentence of a caption, naming only the families the table has ('' if none)."""
    from dtrl.tasks import get_task

    suites = {get_task(t).family.suite for t in tasks}
    parts = []
    if "antmaze" in suites:
        parts.append("AntMaze: goal reached")
    if "adroit" in suites:
        parts.append("Adroit: D4RL's rule, goal held on more than 20 steps for pen, 25 for door, hammer and relocate")
    if not parts:
        return ""
    names = " and ".join(n for n, s in (("AntMaze", "antmaze"), ("Adroit", "adroit")) if s in suites)
    return f" {names} cells add the success rate averaged over seeds ({'; '.join(parts)})."


def unmatched_budgets(exp: ExperimentConfig, table: pd.DataFrame) -> list[str]:
    """'GRPO-DT 40.3k vs ODT 4k' for every pair of main-grid methods whose mean env steps per run
    differ by more than ``report.budget_tolerance``, then each published column whose stated budget
    differs from ours."""
    tol = exp.report.budget_tolerance
    steps = table.set_index("task").loc["env_steps"]
    methods = list(exp.grid.methods)
    out = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            x, y = float(steps[f"{a}_mean"]), float(steps[f"{b}_mean"])
            if budgets_differ(x, y, tol):
                out.append(f"{method_label(exp, a)} {_fmt_count(x)} vs {method_label(exp, b)} {_fmt_count(y)}")
    from dtrl.reference import SUITE_BUDGETS

    pub = published_scores()
    for m in (m for m in methods if f"{m}_published" in table):
        ours = float(steps[f"{m}_mean"])
        for suite in dict.fromkeys(pub.suites[t] for t in exp.grid.tasks if pub.score(algo_of(exp, m), t) is not None):
            if budgets_differ(ours, SUITE_BUDGETS[suite], tol):
                out.append(f"{method_label(exp, m)} {_fmt_count(ours)} vs its published column "
                           f"{_fmt_count(SUITE_BUDGETS[suite])} ({suite})")
    return out


def published_header(exp: ExperimentConfig, method: str) -> str:
    """'ODT (published, D4RL v2, 500k env steps)': the datasets and the online budget of the published
    numbers the column holds, per family when the grid spans several."""
    from dtrl.reference import SUITE_DATASETS, budget_label

    pub = published_scores()
    suites = dict.fromkeys(pub.suites[t] for t in exp.grid.tasks if pub.score(algo_of(exp, method), t) is not None)
    parts = [f"{SUITE_DATASETS[s]}, {budget_label(s)}" for s in suites]
    if len(parts) > 1:
        parts = [f"{s}: {p}" for s, p in zip(suites, parts)]
    return f"{method_label(exp, method)} (published, {'; '.join(parts)})"

def eval_rtg_note(exp: ExperimentConfig, runs: dict) -> str:
    """One line naming the RTG rule (and targets) each main-grid method was evaluated under, from
    the runs' summaries; bold where two methods were evaluated at different RTGs on the same task,
    so no comparison across RTGs is silent."""
    per_method: dict[str, tuple[set, set]] = {}
    per_task: dict[str, set] = {}
    for (m, t, _s), r in runs.items():
        if m in exp.grid.methods:
            rules, targets = per_method.setdefault(m, (set(), set()))
            rules.add(str(r.summary.get("eval_rtg_rule", "unrecorded")))
            if r.summary.get("eval_rtg") is not None:
                targets.add(f"{float(r.summary['eval_rtg']):g}")
                per_task.setdefault(t, set()).add(float(r.summary["eval_rtg"]))
    if not per_method:
        return ""
    parts = []
    for m in (m for m in exp.grid.methods if m in per_method):
        rules, targets = per_method[m]
        parts.append(f"{method_label(exp, m)}: {', '.join(sorted(rules))}"
                     + (f" (RTG {', '.join(sorted(targets, key=float))})" if targets else ""))
    text = ("Evaluation RTG per method (train:<x> = the RTG target the method explored and was trained at; "
            "task:eval_rtg = the task's evaluation target; none = the policy takes no RTG): " + "; ".join(parts) + ".")
    mixed = [t for t, v in per_task.items() if len(v) > 1]
    return f"**Methods are evaluated at different RTGs on {', '.join(sorted(mixed))}.** {text}" if mixed else text


def main_markdown(exp: ExperimentConfig, table: pd.DataFrame, n_missing: int, rtg_note: str = "",
                  warnings: list[str] = ()) -> str:
    methods, tasks = list(exp.grid.methods), list(exp.grid.tasks)
    unmatched = unmatched_budgets(exp, table)
    marked = {m for m in methods if any(f"{method_label(exp, m)} " in u for u in unmatched)}
    header, align = ["task"], ["---"]
    for m in methods:
        header.append(method_label(exp, m))
        align.append("---:")
        if f"{m}_published" in table:
            header.append(published_header(exp, m))
            align.append("---:")
    lines = ["# Main results", "",
             f"Final {score_label(tasks)}, mean ± std over seeds {list(exp.grid.seeds)} (sample std, ddof 1). "
             "An **average** row is the mean over its tasks of the per-task means ± the sample std over seeds of "
             "each seed's average over those tasks (seeds that finished every one of them). Budget rows: mean per "
             "run; wall time: the finetuning run itself, and the pretraining it started from (the offline DT's "
             "cost is its pretraining)." + (" Tasks are grouped by benchmark family, each family with its average."
                                           if len(task_groups(tasks)) > 1 else "") + success_note(tasks), "",
             "| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for _, r in table.iterrows():
        task = r["task"]
        cells = [f"**{task}**" if _is_average(task) else BUDGET_ROWS.get(task, task)]
        for m in methods:
            if task in BUDGET_ROWS:
                v = r[f"{m}_mean"]
                cell = _fmt_seconds(v) if task in (WALL_ROW, PRETRAIN_WALL_ROW) else _fmt_count(v)
                cells.append(cell + (" †" if task == "env_steps" and m in marked else ""))
            else:
                cell = _fmt_score(r[f"{m}_mean"], r[f"{m}_std"], int(r[f"{m}_seeds"]))
                sr = r.get(f"{m}_success", float("nan"))
                cells.append(cell if math.isnan(sr) else f"{cell} (success {100 * sr:.0f}%)")
            if f"{m}_published" in table:
                v = r[f"{m}_published"]
                cells.append("" if task in BUDGET_ROWS or math.isnan(v) else f"*{v:.2f}*")
        lines.append("| " + " | ".join(cells) + " |")
    if unmatched:
        lines += ["", f"† **Env-step budgets not matched** (they differ by more than "
                      f"{100 * exp.report.budget_tolerance:g}%, env steps per run): " + "; ".join(unmatched)
                  + ". Scores compared across them say what each method reached at its own budget, not which "
                    "uses samples better."]
    if any(f"{m}_published" in table for m in methods):
        lines += ["", "Published columns (in *italics*): Yan et al. 2024 (\"RL gradients as vitamin\", Tables 1-3), "
                  "final D4RL normalised score after online finetuning, mean over 5 seeds, **on D4RL's datasets and "
                  "gym's v2 / Adroit v1 environments**; ours run on Gymnasium v5 with the datasets configured in "
                  "`data` (generated with the D4RL recipe unless D4RL files are given), so they are a reference "
                  "point, not a like-for-like comparison. Each published header names the datasets and the online "
                  "budget the paper states; ours is the env-steps row. Scores use D4RL's reference returns (ant: "
                  "-325.6, 3879.7), the normalisation of the published numbers. The published average is shown "
                  "only when every task it averages has a published number. The scores before finetuning and the "
                  "paper's other columns are in `published.md` and `published_reference.md`."]
    if n_missing:
        lines += ["", f"**{n_missing} run(s) of the grid are missing**; cells average the seeds found."]
    if rtg_note:
        lines += ["", rtg_note]
    if warnings:
        lines += ["", "## Warnings", "", "From the datasets' summaries (`<results>/data/<task>.json`):", ""]
        lines += [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# The published tables, before and after finetuning, beside ours
# ----------------------------------------------------------------------------------------------

OFFLINE_ALGO = "none"


def _pretraining(exp: ExperimentConfig, run: Run) -> tuple[str | None, Path | None]:
    """(action head, pretraining summary.json) of the DT ``run`` started from; (None, None) for a
    method that needs no pretrained DT (IQL pretrains itself inside its run)."""
    from dtrl.config.pretrain import HEAD_DIRS

    algo = algo_of(exp, run.method)
    try:
        from dtrl.config.registry import get_algorithm

        cls = get_algorithm(algo)
    except Exception:  # noqa: BLE001 - an algorithm not importable here (external): assume the default DT
        cls = None
    if cls is not None and not getattr(cls, "needs_pretrained_dt", True):
        return None, None
    head = getattr(cls, "pretrained_head", "gaussian")
    return head, Path(exp.results) / HEAD_DIRS[head] / run.task / f"seed{run.seed}" / "summary.json"


def _summary_value(path: Path | None, key: str) -> float:
    try:
        v = json.loads(path.read_text()).get(key) if path is not None and path.exists() else None
        return float(v) if v is not None else float("nan")
    except (OSError, ValueError, TypeError, AttributeError):
        return float("nan")


def start_wall_time(exp: ExperimentConfig, run: Run) -> float:
    """Seconds the pretraining ``run`` started from took (its summary), NaN for none (IQL)."""
    return _summary_value(_pretraining(exp, run)[1], "wall_time")


def start_score(exp: ExperimentConfig, runs: dict, run: Run) -> float:
    """The normalised score of the policy ``run`` started from, before any online step: IQL's evaluation
    at the end of its offline phase (``offline_eval_norm_return``); for a DT method with the Gaussian head,
    the offline DT's run of the same task and seed (its final evaluation protocol), else the evaluation
    its pretraining recorded (``eval_norm_return``). NaN where none was measured."""
    df = run.progress()
    if df is not None and "offline_eval_norm_return" in df:
        v = pd.to_numeric(df["offline_eval_norm_return"], errors="coerce").dropna()
        if len(v):
            return float(v.iloc[-1])
    head, summary = _pretraining(exp, run)
    if head is None:
        return float("nan")
    if head == "gaussian":
        offline = next((r for (m, t, s), r in runs.items() if t == run.task and s == run.seed
                        and algo_of(exp, m) == OFFLINE_ALGO), None)
        if offline is not None:
            return offline.score
    return _summary_value(summary, "eval_norm_return")


def _before_after(mean_before: float, mean_after: float, fmt: str) -> str:
    if math.isnan(mean_after):
        return "–"
    before = "–" if math.isnan(mean_before) else format(mean_before, fmt)
    inc = "" if math.isnan(mean_before) else f" ({mean_after - mean_before:+{fmt}})"
    return f"{before} → {format(mean_after, fmt)}{inc}"


def published_table(exp: ExperimentConfig, runs: dict) -> pd.DataFrame:
    """Per family of the grid with published numbers, per task that has them (then the family's average
    over those tasks): for every grid method whose algorithm Yan et al. 2024 ran (ODT, ODT+TD3, IQL), our
    score before (:func:`start_score`) and after finetuning, means over seeds, beside the published ones.
    Columns: suite, task, dataset, ``<m>_before``, ``<m>_after``, ``<m>_published_before``,
    ``<m>_published_after``."""
    pub, seeds = published_scores(), list(exp.grid.seeds)
    methods = published_methods(exp)
    rows = []
    for suite, members in task_groups(list(exp.grid.tasks)):
        shown = [t for t in members if any(pub.cell(algo_of(exp, m), t) for m in methods)]
        for task in shown:
            row: dict[str, Any] = {"suite": suite, "task": task, "dataset": pub.datasets[task]}
            for m in methods:
                rs = [runs[(m, task, s)] for s in seeds if (m, task, s) in runs]
                cell = pub.cell(algo_of(exp, m), task)
                row.update({f"{m}_before": _mean([start_score(exp, runs, r) for r in rs]),
                            f"{m}_after": _mean([r.score for r in rs]),
                            f"{m}_published_before": cell.before if cell else float("nan"),
                            f"{m}_published_after": cell.final if cell else float("nan")})
            rows.append(row)
        if len(shown) > 1:
            avg: dict[str, Any] = {"suite": suite, "task": group_average_row(suite), "dataset": ""}
            for col in (c for c in rows[-1] if c not in avg):
                vals = [r[col] for r in rows[-len(shown):]]
                avg[col] = float(np.mean(vals)) if not any(math.isnan(v) for v in vals) else float("nan")
            rows.append(avg)
    cols = ["suite", "task", "dataset"] + [f"{m}_{k}" for m in methods
                                           for k in ("before", "after", "published_before", "published_after")]
    return pd.DataFrame(rows, columns=cols)


def published_markdown(exp: ExperimentConfig, table: pd.DataFrame) -> str:
    from dtrl.reference import SUITE_DATASETS, SUITE_TABLES, budget_label

    methods = [c[:-len("_published_after")] for c in table.columns if c.endswith("_published_after")]
    lines = ["# Published scores before and after finetuning, beside ours", "",
             "Each cell: score before online finetuning → after (change). **Ours**: mean over seeds "
             f"{list(exp.grid.seeds)}; before = the policy the run started from (the offline DT's run for the "
             "DT methods with the Gaussian head, the evaluation recorded by the deterministic pretraining for "
             "ODT+TD3, IQL's evaluation at the end of its offline phase; – where none was measured). "
             "**Published**: Yan et al. 2024, printed as final(+increase), mean over 5 seeds; before = final − "
             "increase. Both are D4RL normalised scores; the published ones on D4RL's datasets and environments, "
             "ours on the datasets and Gymnasium environments configured (dtrl/reference/yan2024.md)."]
    for suite, rows in table.groupby("suite", sort=False):
        lines += ["", f"## {SUITE_TABLES[suite]}: {SUITE_DATASETS[suite]} datasets, published at "
                      f"{budget_label(suite)}", ""]
        header = ["task"] + [f"{method_label(exp, m)} {side}" for m in methods for side in ("(ours)", "(published)")]
        lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        for _, r in rows.iterrows():
            name = f"**{r['task']}**" if _is_average(r["task"]) else f"{r['task']} ({r['dataset']})"
            cells = [name]
            for m in methods:
                cells += [_before_after(r[f"{m}_before"], r[f"{m}_after"], ".1f"),
                          "*" + _before_after(r[f"{m}_published_before"], r[f"{m}_published_after"], ".2f") + "*"]
            lines.append("| " + " | ".join(cells).replace("*–*", "–") + " |")
    return "\n".join(lines) + "\n"


def published_reference_table(exp: ExperimentConfig) -> pd.DataFrame:
    """Every column of Yan et al. 2024 (TD3+BC, IQL, ODT, PDT, TD3, DDPG+ODT, ODT+TD3) for the grid's
    tasks that have them: final and increase per column."""
    from dtrl.reference import PUBLISHED_COLUMNS

    pub = published_scores()
    rows = []
    for suite, members in task_groups(list(exp.grid.tasks)):
        for task in (t for t in members if t in pub.suites):
            row: dict[str, Any] = {"suite": suite, "task": task, "dataset": pub.datasets[task]}
            for col in PUBLISHED_COLUMNS:
                c = pub.cell(col, task)
                row.update({f"{col}_final": c.final if c else float("nan"),
                            f"{col}_increase": c.increase if c else float("nan")})
            rows.append(row)
    cols = ["suite", "task", "dataset"] + [f"{c}_{k}" for c in PUBLISHED_COLUMNS for k in ("final", "increase")]
    return pd.DataFrame(rows, columns=cols)


def published_reference_markdown(table: pd.DataFrame) -> str:
    from dtrl.reference import PUBLISHED_COLUMNS, SUITE_DATASETS, SUITE_TABLES, budget_label

    lines = ["# Published reference: every column of Yan et al. 2024", "",
             "The paper's columns for the grid's tasks, printed as final(+increase over online finetuning), D4RL "
             "normalised score, mean over 5 seeds. TD3+BC and IQL from their own codebases; ODT and TD3 through "
             "the authors' code; PDT with its defaults; ODT+TD3 is the paper's \"TD3+ODT (ours)\". dtrl runs "
             "ODT, ODT+TD3 and IQL (their columns sit beside ours in `main.md` and `published.md`); the others "
             "are for reference. Source and known misprints: dtrl/reference/yan2024.md."]
    for suite, rows in table.groupby("suite", sort=False):
        lines += ["", f"## {SUITE_TABLES[suite]}: {SUITE_DATASETS[suite]} datasets, {budget_label(suite)}", "",
                  "| task | " + " | ".join(PUBLISHED_COLUMNS.values()) + " |",
                  "|---|" + "---:|" * len(PUBLISHED_COLUMNS)]
        for _, r in rows.iterrows():
            cells = [f"{r[f'{c}_final']:.2f}({r[f'{c}_increase']:+.2f})" if not math.isnan(r[f"{c}_final"]) else "–"
                     for c in PUBLISHED_COLUMNS]
            lines.append(f"| {r['dataset']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def data_warnings(exp: ExperimentConfig) -> list[str]:
    """The warnings recorded in the summaries of the grid's datasets (e.g. the SAC behaviour run never
    reached the 'medium' return, so 'medium' is its best checkpoint), each prefixed with its task."""
    out: list[str] = []
    for task in dict.fromkeys(list(exp.grid.tasks) + list(exp.grid.ablation_tasks)):
        path = Path(exp.results) / "data" / f"{task}.json"
        if path.exists():
            try:
                warnings = json.loads(path.read_text()).get("warnings") or []
            except (OSError, ValueError):
                continue
            out += [f"{task}: {w}" for w in warnings]
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def method_settings(exp: ExperimentConfig, method: str) -> dict[str, Any]:
    """Flat key -> value of a method entry's resolved parameters and online settings."""
    from dtrl.config import to_dict

    try:
        spec = exp.method(method)
        return {**_flat(to_dict(spec.params)), **_flat(to_dict(spec.online), "online.")}
    except Exception:  # noqa: BLE001 - an entry whose algorithm cannot be imported: show its raw keys
        entry = dict(exp.methods.get(method) or {})
        entry.pop("algo", None)
        return _flat(entry)


def default_settings(exp: ExperimentConfig, algo: str) -> dict[str, Any]:
    """Flat settings of an entry that sets nothing: the algorithm's defaults and the shared harness."""
    from dtrl.config import to_dict
    from dtrl.config.registry import get_algorithm

    try:
        params = to_dict(get_algorithm(algo).Config())
    except Exception:  # noqa: BLE001 - algorithm not importable here: compare with nothing
        return {}
    return {**_flat(params), **_flat(to_dict(exp.online), "online.")}


def ablation_table(exp: ExperimentConfig, runs: dict) -> pd.DataFrame:
    """One row per variant (a base entry first, then its ablations); ``changes`` lists the settings
    that differ from the base (or the algorithm's defaults when the grid has no base entry)."""
    tasks, seeds = list(exp.grid.ablation_tasks), list(exp.grid.seeds)
    rows = []
    for m in ablation_rows(exp):
        base = ablation_base(exp, m) if m in exp.grid.ablations else None
        if m in exp.grid.ablations:
            mine = method_settings(exp, m)
            ref = method_settings(exp, base) if base else default_settings(exp, algo_of(exp, m))
            changes = ", ".join(f"{k}={v}" for k, v in mine.items() if ref.get(k, object()) != v)
        else:
            changes = "(base)"
        row: dict[str, Any] = {"method": m, "algo": algo_of(exp, m), "base": base or "", "changes": changes}
        for t in tasks:
            mean, std, n = score_cell(runs, m, t, seeds)
            row.update({f"{t}_mean": mean, f"{t}_std": std, f"{t}_seeds": n})
        mean, std, n = average_cell(runs, m, tasks, seeds)
        row.update({"average_mean": mean, "average_std": std, "average_seeds": n})
        for key in ("env_steps", UPDATE_AXIS):
            row[key] = budget_cell(runs, m, tasks, seeds, key)[0]
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_markdown(exp: ExperimentConfig, table: pd.DataFrame) -> str:
    tasks = list(exp.grid.ablation_tasks)
    header = ["variant", "changes"] + tasks + ["average", "env steps / run", BUDGET_ROWS[UPDATE_AXIS]]
    lines = ["# Ablations", "",
             "GRPO-DT switches (relabel, ratio level, reset sampling, L_eval, ...): each row changes the listed "
             f"settings of its base entry. Final D4RL normalised score, mean ± std over seeds {list(exp.grid.seeds)}.",
             "", "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for _, r in table.iterrows():
        cells = [method_label(exp, r["method"]), r["changes"] or "–"]
        cells += [_fmt_score(r[f"{t}_mean"], r[f"{t}_std"], int(r[f"{t}_seeds"])) for t in tasks]
        cells.append(_fmt_score(r["average_mean"], r["average_std"], int(r["average_seeds"])))
        cells += [_fmt_count(r["env_steps"]), _fmt_count(r[UPDATE_AXIS])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# rliable estimates
# ----------------------------------------------------------------------------------------------

def score_matrices(exp: ExperimentConfig, runs: dict) -> dict[str, np.ndarray]:
    """Method -> (seeds x tasks) final scores over the seeds the method finished on every task."""
    out = {}
    tasks = list(exp.grid.tasks)
    for m in exp.grid.methods:
        seeds = [s for s in exp.grid.seeds if all((m, t, s) in runs for t in tasks)]
        if seeds and tasks:
            out[m] = np.array([[runs[(m, t, s)].score for t in tasks] for s in seeds], dtype=np.float64)
    return out


def aggregate_funcs() -> dict[str, Callable[[np.ndarray], float]]:
    from rliable import metrics

    return {"IQM": metrics.aggregate_iqm, "Median": metrics.aggregate_median, "Mean": metrics.aggregate_mean,
            "Optimality Gap": lambda s: metrics.aggregate_optimality_gap(s, gamma=OPTIMALITY_GAMMA)}


def aggregate_estimates(scores: dict[str, np.ndarray], reps: int = REPS, seed: int = 0) -> pd.DataFrame:
    """IQM, median, mean and optimality gap of each (runs x tasks) matrix with stratified-bootstrap CIs
    (rliable.library.get_interval_estimates). Rows: method, metric, estimate, ci_low, ci_high, runs, tasks."""
    funcs = aggregate_funcs()

    def all_metrics(s: np.ndarray) -> np.ndarray:
        return np.array([funcs[k](s) for k in AGGREGATE_METRICS])

    rows = []
    for m, s in scores.items():
        if np.isnan(s).any():
            continue
        with _seeded(seed):
            point, ci = _interval_estimates({m: s}, all_metrics, reps)
        for i, k in enumerate(AGGREGATE_METRICS):
            rows.append({"method": m, "metric": k, "estimate": float(point[m][i]), "ci_low": float(ci[m][0, i]),
                         "ci_high": float(ci[m][1, i]), "runs": s.shape[0], "tasks": s.shape[1]})
    return pd.DataFrame(rows, columns=["method", "metric", "estimate", "ci_low", "ci_high", "runs", "tasks"])


def _interval_estimates(score_dict: dict, func: Callable, reps: int):
    """rliable's interval estimates; with a single run there is nothing to resample: CI = point."""
    from rliable import library as rly

    single = {k: v for k, v in score_dict.items() if isinstance(v, np.ndarray) and v.shape[0] < 2}
    point, ci = {}, {}
    for k, v in single.items():
        p = np.asarray(func(v))
        point[k], ci[k] = p, np.stack([p, p])
    rest = {k: v for k, v in score_dict.items() if k not in single}
    if rest:
        p2, c2 = rly.get_interval_estimates(rest, func, reps=reps, confidence_interval_size=CI)
        point.update(p2)
        ci.update(c2)
    return point, ci


def probability_of_improvement(scores: dict[str, np.ndarray], main: str, reps: int = POI_REPS,
                               seed: int = 0) -> pd.DataFrame:
    """P(main > baseline) for every other method, averaged over tasks, with stratified independent
    bootstrap CIs (rliable)."""
    from rliable import library as rly
    from rliable import metrics

    rows = []
    for other, y in scores.items():
        if other == main:
            continue
        x = scores[main]
        with _seeded(seed):
            if x.shape[0] < 2 or y.shape[0] < 2:
                p = float(metrics.probability_of_improvement(x, y))
                lo = hi = p
            else:
                point, ci = rly.get_interval_estimates({"p": (x, y)}, metrics.probability_of_improvement, reps=reps,
                                                       confidence_interval_size=CI)
                p = float(np.ravel(point["p"])[0])
                lo, hi = (float(v) for v in np.ravel(ci["p"])[:2])
        rows.append({"method": main, "baseline": other, "probability": p, "ci_low": lo, "ci_high": hi,
                     "runs": x.shape[0], "baseline_runs": y.shape[0]})
    return pd.DataFrame(rows, columns=["method", "baseline", "probability", "ci_low", "ci_high", "runs",
                                       "baseline_runs"])


def with_labels(exp: ExperimentConfig, df: pd.DataFrame, keys: tuple[str, ...] = ("method",)) -> pd.DataFrame:
    """``df`` with each method-key column followed by its display name (``<key>_label``), so every CSV
    names methods as the markdown tables and figures do, config key included."""
    df = df.copy()
    for key in keys:
        df.insert(df.columns.get_loc(key) + 1, f"{key}_label", [method_label(exp, m) for m in df[key]])
    return df


def withhold_small_cis(df: pd.DataFrame, min_runs: int, run_cols: tuple[str, ...] = ("runs",)) -> pd.DataFrame:
    """CIs of estimates from fewer than ``min_runs`` runs blanked (NaN) with a ``ci_note`` saying why."""
    df = df.copy()
    small = np.zeros(len(df), dtype=bool)
    for c in run_cols:
        small |= df[c].to_numpy() < min_runs
    df.loc[small, ["ci_low", "ci_high"]] = np.nan
    df["ci_note"] = np.where(small, f"fewer than report.min_runs_for_ci={min_runs} runs: no CI", "")
    return df


def performance_profiles(scores: dict[str, np.ndarray], taus: np.ndarray, reps: int = PROFILE_REPS,
                         seed: int = 0) -> tuple[dict, dict]:
    def profile(s: np.ndarray) -> np.ndarray:  # rliable's score distribution, vectorised over taus
        return np.mean(s.reshape(1, -1) > np.asarray(taus).reshape(-1, 1), axis=1)

    with _seeded(seed):
        return _interval_estimates(scores, profile, reps)


# ----------------------------------------------------------------------------------------------
# Learning curves
# ----------------------------------------------------------------------------------------------

def curve_points(run: Run, x_key: str, col: str = "eval_norm_return") -> tuple[np.ndarray, np.ndarray] | None:
    """(x, y) of one progress.csv column against ``x_key``, rows without a number skipped, the last
    row kept where x repeats; None if the run has no such rows."""
    df = run.progress()
    if df is None or col not in df or x_key not in df:
        return None
    df = df[pd.to_numeric(df[col], errors="coerce").notna() & df[x_key].notna()]
    if df.empty:
        return None
    df = df.groupby(x_key, as_index=False)[col].last().sort_values(x_key)
    return df[x_key].to_numpy(np.float64), df[col].to_numpy(np.float64)


def common_grid(pts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, float]:
    """The union of the seeds' x points within the range every seed covers (empty when the ranges do
    not overlap), and the smallest last x."""
    lo, hi = max(x[0] for x, _ in pts), min(x[-1] for x, _ in pts)
    grid = np.unique(np.concatenate([x for x, _ in pts]))
    return grid[(grid >= lo) & (grid <= hi)], hi


def learning_curve(runs: list[Run], x_key: str, reps: int = CURVE_REPS, seed: int = 0):
    """Seeds interpolated onto the union of their evaluation points (within the range every seed
    covers); mean with a stratified-bootstrap CI over seeds. None if no run has a curve."""
    pts = [p for r in runs if (p := curve_points(r, x_key)) is not None]
    if not pts:
        return None
    grid, hi = common_grid(pts)
    if grid.size == 0:
        grid = np.array([hi])
    ys = np.stack([np.interp(grid, x, y) for x, y in pts])  # (seeds, points)
    with _seeded(seed):
        point, ci = _interval_estimates({"c": ys[:, None, :]}, lambda s: np.mean(s, axis=(0, 1)), reps)
    return grid, point["c"], ci["c"][0], ci["c"][1]


# ----------------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot, no display needed)
# ----------------------------------------------------------------------------------------------

def _save(fig, path_stem: Path) -> list[Path]:
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        p = path_stem.with_suffix(f".{ext}")
        atomic_savefig(fig, p, dpi=150, bbox_inches="tight")
        out.append(p)
    return out


def _colors(methods: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def plot_aggregates(exp: ExperimentConfig, agg: pd.DataFrame, stem: Path) -> list[Path]:
    return _save(aggregates_figure(exp, agg), stem)


def aggregates_figure(exp: ExperimentConfig, agg: pd.DataFrame):
    """Each metric's estimate per method, its CI as a bar where aggregates.csv has one (else a marker)."""
    from matplotlib.figure import Figure

    methods = [m for m in exp.grid.methods if m in set(agg["method"])]
    colors = _colors(list(exp.grid.methods))
    fig = Figure(figsize=(3.2 * len(AGGREGATE_METRICS), 0.45 * len(methods) + 1.4))
    axes = fig.subplots(1, len(AGGREGATE_METRICS), sharey=True)
    for ax, metric in zip(np.atleast_1d(axes), AGGREGATE_METRICS):
        for i, m in enumerate(methods):
            r = agg[(agg["method"] == m) & (agg["metric"] == metric)].iloc[0]
            if not (math.isnan(r["ci_low"]) or math.isnan(r["ci_high"])):
                ax.barh(i, r["ci_high"] - r["ci_low"], left=r["ci_low"], height=0.6, color=colors[m], alpha=0.75)
            else:  # too few runs for a CI: the estimate alone, marked as such
                ax.plot([r["estimate"]], [i], marker="D", color=colors[m], ms=6)
            ax.vlines(r["estimate"], i - 0.3, i + 0.3, color="k", lw=1.5)
        ax.set_title(metric)
        ax.set_xlabel("normalised score")
        ax.grid(axis="x", alpha=0.3)
        ax.set_yticks(range(len(methods)), [method_label(exp, m) for m in methods])
    title = (f"Aggregate final scores over {len(exp.grid.tasks)} task(s), {int(CI * 100)}% stratified-"
             f"bootstrap CIs (rliable; optimality gap to {OPTIMALITY_GAMMA:g})")
    if "ci_note" in agg and (agg["ci_note"] != "").any():
        title += f"\n◆ = estimate only: fewer than {exp.report.min_runs_for_ci} runs (report.min_runs_for_ci), no CI"
    fig.suptitle(title, fontsize=9, y=1.0 + 0.06 * title.count("\n"), va="bottom")
    return fig


def profile_figure(exp: ExperimentConfig, taus: np.ndarray, prof: dict, ci: dict, n_runs: dict[str, int]):
    """Score distributions; a method's bootstrap band only where it has ``report.min_runs_for_ci`` runs."""
    from matplotlib.figure import Figure

    colors, min_runs = _colors(list(exp.grid.methods)), exp.report.min_runs_for_ci
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for m in prof:
        banded = n_runs[m] >= min_runs
        ax.plot(taus, prof[m], color=colors[m], label=method_label(exp, m) + ("" if banded else f" (n={n_runs[m]})"))
        if banded:
            ax.fill_between(taus, ci[m][0], ci[m][1], color=colors[m], alpha=0.2)
    ax.set_xlabel(r"normalised score $\tau$")
    ax.set_ylabel(r"fraction of runs with score $> \tau$")
    title = "Performance profiles (score distributions, rliable)"
    if any(n < min_runs for n in n_runs.values()):
        title += f"\n{int(CI * 100)}% bootstrap bands only for methods with at least {min_runs} runs"
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_profiles(exp: ExperimentConfig, taus: np.ndarray, prof: dict, ci: dict, n_runs: dict[str, int],
                  stem: Path) -> list[Path]:
    return _save(profile_figure(exp, taus, prof, ci, n_runs), stem)


def plot_poi(exp: ExperimentConfig, poi: pd.DataFrame, stem: Path) -> list[Path]:
    return _save(poi_figure(exp, poi), stem)


def poi_figure(exp: ExperimentConfig, poi: pd.DataFrame):
    """One row per comparison: the CI as a bar with end caps (visible when degenerate, e.g. [1, 1]),
    the estimate as a marker drawn over the axes' edge, and the numbers written beside each row."""
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    fig = Figure(figsize=(7.5, 0.55 * len(poi) + 1.5))
    ax = fig.subplots()
    text_at = blended_transform_factory(ax.transAxes, ax.transData)
    for i, r in enumerate(poi.itertuples()):
        has_ci = not (math.isnan(r.ci_low) or math.isnan(r.ci_high))
        if has_ci:
            ax.barh(i, r.ci_high - r.ci_low, left=r.ci_low, height=0.5, color="tab:blue", alpha=0.35)
            ax.errorbar([r.probability], [i], xerr=[[r.probability - r.ci_low], [r.ci_high - r.probability]],
                        fmt="none", ecolor="tab:blue", capsize=11, capthick=2, elinewidth=2, clip_on=False)
            text = f"{r.probability:.2f}  [{r.ci_low:.2f}, {r.ci_high:.2f}]"
        else:
            text = f"{r.probability:.2f}  (no CI: < {exp.report.min_runs_for_ci} runs)"
        ax.plot([r.probability], [i], marker="D", color="k", ms=6, clip_on=False, zorder=3)
        ax.text(1.04, i, text, transform=text_at, va="center", fontsize=9)
    ax.axvline(0.5, color="gray", ls="--", lw=1)
    ax.set_yticks(range(len(poi)), [f"{method_label(exp, r.method)} > {method_label(exp, r.baseline)}"
                                    for r in poi.itertuples()])
    ax.set_ylim(-0.6, len(poi) - 0.4)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability of improvement")
    ax.set_title(f"P(X > Y) averaged over tasks: estimate ◆, {int(CI * 100)}% stratified-bootstrap CI "
                 "(rliable)", fontsize=10)
    return fig


def learning_curves_figure(exp: ExperimentConfig, task: str, runs: dict, reps: int = CURVE_REPS):
    """Evaluation return against env steps and against policy updates, mean over seeds; a method's
    bootstrap band only where it has ``report.min_runs_for_ci`` seeds. None if no run has a curve."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    colors = _colors(list(exp.grid.methods))
    axes_keys = (("env_steps", "training env steps"), (UPDATE_AXIS, "policy (DT / actor) updates"))
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    drawn = False
    for ax, (key, xlabel) in zip(axes, axes_keys):
        flat = []  # methods whose curve is a single point (the offline DT): drawn as a level line
        for m in exp.grid.methods:
            rs = [runs[(m, task, s)] for s in exp.grid.seeds if (m, task, s) in runs]
            c = learning_curve(rs, key, reps=reps)
            if c is None:
                continue
            x, y, lo, hi = c
            drawn = True
            band = len(rs) >= exp.report.min_runs_for_ci
            if x.size == 1 and x[0] <= 0:
                flat.append((m, y[0], lo[0], hi[0], band))
                continue
            keep = x > 0  # a log axis: an evaluation before any step or update is left out of the curve
            x, y, lo, hi = x[keep], y[keep], lo[keep], hi[keep]
            ax.plot(x, y, color=colors[m], marker=".", label=f"{method_label(exp, m)} (n={len(rs)})")
            if band:
                ax.fill_between(x, lo, hi, color=colors[m], alpha=0.2)
        for m, y, lo, hi, band in flat:
            ax.axhline(y, color=colors[m], ls="--", label=f"{method_label(exp, m)} (no online steps)")
            if band:
                ax.axhspan(lo, hi, color=colors[m], alpha=0.1)
        ax.set_xlabel(f"{xlabel} (log scale)")
        ax.set_ylabel("normalised return")
        # Methods' budgets differ by 10x-100x (GRPO-DT: many env steps, few updates; ODT: the reverse):
        # on a log axis each method's curve spans its own decade instead of crowding into a corner.
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 40k, 1M: raw step counts overlap
        ax.grid(alpha=0.3)
    if not drawn:
        return None
    axes[0].legend(fontsize=7)
    bands = (f"with {int(CI * 100)}% stratified-bootstrap CIs (rliable) where a method has at least "
             f"{exp.report.min_runs_for_ci} seeds")
    fig.suptitle(f"{task}: evaluation return during finetuning, mean over seeds {bands}", fontsize=10)
    return fig


def plot_learning_curves(exp: ExperimentConfig, task: str, runs: dict, stem: Path,
                         reps: int = CURVE_REPS) -> list[Path] | None:
    fig = learning_curves_figure(exp, task, runs, reps)
    return None if fig is None else _save(fig, stem)


# Ratio diagnostics over training (progress.csv columns of the ratio methods), one panel each.
RATIO_PANELS = (("log_ratio_q", "log ratio: median, 5-95% band"), ("ratio_first_absdev", "first-minibatch max |ratio - 1|"),
                ("clip_frac", "clip fraction"), ("approx_kl", "approximate KL"))
# Settings whose variants change the importance ratios themselves: those ablations share the figure.
RATIO_SETTINGS = ("relabel", "ratio")


def ratio_figure_methods(exp: ExperimentConfig) -> list[str]:
    """The main GRPO-DT entry and every ablation of it that changes how its ratios are formed
    (``relabel``, ``ratio``): the relabeling question's figure. Empty without such an ablation."""
    base = next((m for m in exp.grid.methods if algo_of(exp, m) == MAIN_ALGO), None)
    if base is None:
        return []
    ref = method_settings(exp, base)
    variants = [a for a in exp.grid.ablations if ablation_base(exp, a) == base
                and any(method_settings(exp, a).get(k) != ref.get(k) for k in RATIO_SETTINGS)]
    return [base, *variants] if variants else []


def series_mean(runs: list[Run], col: str, x_key: str = "env_steps") -> tuple[np.ndarray, np.ndarray] | None:
    """Mean over seeds of one progress.csv column, each seed interpolated onto the union of the
    iterations within the range every seed covers (rows without the column skipped)."""
    pts = [p for r in runs if (p := curve_points(r, x_key, col)) is not None]
    if not pts:
        return None
    grid, _ = common_grid(pts)
    if grid.size == 0:
        return None
    return grid, np.mean([np.interp(grid, x, y) for x, y in pts], axis=0)


def plot_ratio_diagnostics(exp: ExperimentConfig, task: str, runs: dict, stem: Path,
                           reps: int = CURVE_REPS) -> list[Path] | None:
    """Return curves next to the ratio diagnostics over training for ``ratio_figure_methods``: does
    relabeling make the ratios explode? Means over seeds; the return panel has its bootstrap CI."""
    from matplotlib.figure import Figure

    methods = ratio_figure_methods(exp)
    if not methods:
        return None
    colors = _colors(list(exp.grid.methods) + list(exp.grid.ablations))
    fig = Figure(figsize=(3.3 * (1 + len(RATIO_PANELS)), 3.6))
    axes = fig.subplots(1, 1 + len(RATIO_PANELS))
    drawn = False
    for m in methods:
        rs = [runs[(m, task, s)] for s in exp.grid.seeds if (m, task, s) in runs]
        label = f"{method_label(exp, m)} (n={len(rs)})"
        c = learning_curve(rs, "env_steps", reps=reps)
        if c is not None:
            x, y, lo, hi = c
            axes[0].plot(x, y, color=colors[m], marker=".", label=label)
            if len(rs) >= exp.report.min_runs_for_ci:
                axes[0].fill_between(x, lo, hi, color=colors[m], alpha=0.2)
        for ax, (col, _) in zip(axes[1:], RATIO_PANELS):
            if col == "log_ratio_q":
                mid, q05, q95 = (series_mean(rs, f"log_ratio_q{q}") for q in ("50", "05", "95"))
                if mid is None:
                    continue
                ax.plot(*mid, color=colors[m])
                if q05 is not None and q95 is not None and len(q05[0]) == len(q95[0]):
                    ax.fill_between(q05[0], q05[1], q95[1], color=colors[m], alpha=0.2)
                drawn = True
                continue
            sm = series_mean(rs, col)
            if sm is not None:
                ax.plot(*sm, color=colors[m], marker=".")
                drawn = True
    if not drawn:
        return None
    axes[0].set_ylabel("normalised return")
    axes[0].set_title("evaluation return", fontsize=9)
    for ax, (col, title) in zip(axes[1:], RATIO_PANELS):
        ax.set_title(title, fontsize=9)
        if col in ("ratio_first_absdev", "approx_kl"):
            ax.set_yscale("symlog", linthresh=1e-4)  # 0 on-policy, orders of magnitude more when relabeled
    for ax in axes:
        ax.set_xlabel("training env steps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{task}: importance ratios over training (means over seeds; per iteration, every epoch's "
                 f"minibatches) next to the return", fontsize=10)
    fig.tight_layout()
    return _save(fig, stem)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def markdown_html(md: str, title: str) -> str:
    """A standalone HTML page of the markdown the report writes (headings, pipe tables, lists,
    paragraphs, **bold**, *italic*, `code`): what Snakemake's HTML report shows for each table."""
    import html
    import re

    def inline(text: str) -> str:
        text = html.escape(text, quote=False)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [cells(r) for r in block if not re.fullmatch(r"[|\s:-]+", r)]
            out.append("<table>\n<tr>" + "".join(f"<th>{inline(c)}</th>" for c in rows[0]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:]]
            out.append("</table>")
            continue
        elif line.startswith("- "):
            out.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                out.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;font-size:14px} table{border-collapse:collapse} "
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} td:first-child,th:first-child"
             "{text-align:left}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def _small_sample_note(df: pd.DataFrame, min_runs: int) -> str:
    if not (df["ci_note"] != "").any():
        return ""
    return (f"\nCIs are left empty where a method has fewer than {min_runs} runs (seeds that finished every task; "
            "`report.min_runs_for_ci`): with so few runs the bootstrap interval says little (with 2 runs the median, "
            "mean and IQM of a task coincide), so only the point estimate is given.\n")


def report(exp: ExperimentConfig, out_root: Path | None = None, runs_dir: Path | None = None,
           reps: int | None = None, figures: bool = True) -> dict[str, Any]:
    """Write every table and (unless ``figures`` is false) every figure; ``reps`` bootstrap
    replications (default ``REPS``). Returns {"tables": [...], "figures": [...], "missing": [...]}."""
    reps = REPS if reps is None else int(reps)
    final_out = Path(out_root) if out_root is not None else Path(exp.results)
    runs_dir = Path(runs_dir) if runs_dir is not None else Path(exp.results) / "runs"
    runs, missing = collect(exp, runs_dir, final_out)
    runs, left_out = split_scored(runs)
    check_cells_share_config(runs)  # before anything is written
    with staging(final_out) as out:
        written = _build(exp, out, runs, missing, left_out, reps, figures)
        return publish(out, final_out, written)


def collect(exp: ExperimentConfig, runs_dir: Path, out: Path) -> tuple[dict, list]:
    """:func:`load_runs` of the grid, refusing (InputError / ConfigError, exit 2, nothing written) what
    cannot be a report: a runs directory that does not exist, a grid without runs, a grid none of whose
    runs has a summary.json, an output path that is a file."""
    from dtrl.config import ConfigError
    from dtrl.util.io import InputError

    if out.exists() and not out.is_dir():
        raise InputError(f"report output {out} is a file, not a directory; give --out a directory")
    keys = expected_runs(exp)
    if not keys:
        raise ConfigError("the grid has no runs to report (grid.methods, grid.tasks or grid.seeds is empty); "
                          "nothing written")
    if not Path(runs_dir).is_dir():
        raise InputError(f"runs directory {runs_dir} does not exist (a mistyped --runs or results?); nothing written")
    runs, missing = load_runs(runs_dir, keys)
    if not runs:
        m, t, s = keys[0]
        raise InputError(f"none of the grid's {len(keys)} runs has a summary.json under {runs_dir} (e.g. "
                         f"{Path(runs_dir) / m / t / f'seed{s}'}); wrong --runs or nothing finished yet? nothing "
                         "written")
    return runs, missing


MANIFEST = ".dtrl-report-files"  # under the output root: what the last report wrote, one relative path a line


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh directory beside the outputs (same filesystem, so moving files out of it is a rename),
    removed on the way out whatever happens; an output root made for it and left empty is removed too."""
    import shutil
    import tempfile

    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".dtrl-report-staging-", dir=out))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if made and not any(out.iterdir()):
            out.rmdir()


def publish(stage: Path, out: Path, written: dict[str, Any]) -> dict[str, Any]:
    """Move every file built under ``stage`` to the same place under ``out`` (os.replace: each file is
    the old one or the new one, never a part), then delete what the previous report wrote (its manifest)
    that this one did not, e.g. the figure of a task no longer in the grid. Nothing else under ``out``
    is touched. Returns ``written`` with its paths under ``out``."""
    import os

    new = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    old_manifest = out / MANIFEST
    old = old_manifest.read_text().split("\n") if old_manifest.exists() else []
    for rel in new:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / rel, out / rel)
    for rel in sorted(set(filter(None, old)) - set(new)):
        if ".." not in Path(rel).parts:
            (out / rel).unlink(missing_ok=True)
    _write_text(old_manifest, "\n".join(new) + "\n")

    def moved(v: Any) -> Any:
        if isinstance(v, Path) and v.is_relative_to(stage):
            return out / v.relative_to(stage)
        return [moved(x) for x in v] if isinstance(v, list) else v

    return {k: moved(v) for k, v in written.items()}


def _build(exp: ExperimentConfig, out: Path, runs: dict, missing: list, left_out: list, reps: int,
           figures: bool) -> dict[str, Any]:
    """Every table, figure and REPORT.md under ``out`` (the staging directory)."""
    tables_dir, fig_dir = out / "tables", out / "figures"
    warnings = data_warnings(exp)
    written: dict[str, list] = {"tables": [], "figures": [], "missing": missing, "not_scored": left_out,
                                "warnings": warnings}
    min_runs = exp.report.min_runs_for_ci

    def table(name: str, df: pd.DataFrame, md: str | None = None) -> None:
        md = md if md is not None else _md_table(df)
        _write_csv(tables_dir / f"{name}.csv", df)
        _write_text(tables_dir / f"{name}.md", md)
        _write_text(tables_dir / "html" / f"{name}.html", markdown_html(md, name))  # for `snakemake --report`
        written["tables"] += [tables_dir / f"{name}.csv", tables_dir / f"{name}.md", tables_dir / "html" / f"{name}.html"]

    main = main_table(exp, runs)
    n_missing_main = sum(1 for k in missing if k[0] in exp.grid.methods and k[1] in exp.grid.tasks)
    left_out += [{"method": m, "task": t, "seed": s, "status": "missing", "reason": "no summary.json"}
                 for m, t, s in missing]
    main_md = main_markdown(exp, main, n_missing_main, eval_rtg_note(exp, runs), warnings)
    if left_out:
        main_md += (f"\n**{len(left_out)} run(s) of the grid are not scored** (diverged, failed, invalid or "
                    "missing): "
                    "see not_scored.md.\n")
    table("main", main, main_md)
    table("not_scored", pd.DataFrame(left_out, columns=["method", "task", "seed", "status", "reason"]),
          not_scored_markdown(left_out))
    if published_methods(exp):
        pt = published_table(exp, runs)
        table("published", pt, published_markdown(exp, pt))
    ref = published_reference_table(exp)
    if not ref.empty:
        table("published_reference", ref, published_reference_markdown(ref))
    if exp.grid.ablations:
        abl = ablation_table(exp, runs)
        table("ablations", abl, ablation_markdown(exp, abl))

    scores = score_matrices(exp, runs)
    if scores:
        agg = with_labels(exp, withhold_small_cis(aggregate_estimates(scores, reps=reps), min_runs))
        table("aggregates", agg, _md_table(agg) + _small_sample_note(agg, min_runs))
        if figures and not agg.empty:
            written["figures"] += plot_aggregates(exp, agg, fig_dir / "aggregate_metrics")
        complete = {m: s for m, s in scores.items() if not np.isnan(s).any()}
        if figures and complete:
            finite = np.concatenate([s.ravel() for s in complete.values()])
            taus = np.linspace(min(0.0, float(finite.min())), max(100.0, float(finite.max()) * 1.05), 101)
            prof, prof_ci = performance_profiles(complete, taus, reps=min(reps, PROFILE_REPS))
            n_runs = {m: s.shape[0] for m, s in complete.items()}
            written["figures"] += plot_profiles(exp, taus, prof, prof_ci, n_runs, fig_dir / "performance_profile")
        main_m = next((m for m in exp.grid.methods if algo_of(exp, m) == MAIN_ALGO and m in scores), None)
        if main_m is not None and len(scores) > 1:
            poi = probability_of_improvement(scores, main_m, reps=min(reps, POI_REPS))
            poi = with_labels(exp, withhold_small_cis(poi, min_runs, ("runs", "baseline_runs")), ("method", "baseline"))
            table("probability_of_improvement", poi, _md_table(poi) + _small_sample_note(poi, min_runs))
            if figures:
                written["figures"] += plot_poi(exp, poi, fig_dir / "probability_of_improvement")
    for task in exp.grid.tasks if figures else []:
        figs = plot_learning_curves(exp, task, runs, fig_dir / f"learning_curves_{task}", reps=min(reps, CURVE_REPS))
        written["figures"] += figs or []
    for task in exp.grid.ablation_tasks if figures else []:
        figs = plot_ratio_diagnostics(exp, task, runs, fig_dir / f"ratio_diagnostics_{task}", reps=min(reps, CURVE_REPS))
        written["figures"] += figs or []
    from dtrl.report.page import write_report_page  # REPORT.md: findings, tables, figures, provenance

    written["report"] = write_report_page(exp, out, runs, written, reps)
    return written


def not_scored_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["# Runs not scored", "",
             "Runs of the grid left out of every table and figure: diverged (a non-finite loss or parameter "
             "stopped them), failed, invalid (files that break the run contract, e.g. an empty progress.csv, a "
             "score that is not a number, or a final_norm_return that is not final_return normalised: edited by "
             "hand; `dtrl check-run <run dir>` lists every problem), or missing (no summary.json).", ""]
    if not rows:
        return "\n".join(lines + ["None: every run of the grid is scored."]) + "\n"
    lines += ["| method | task | seed | status | reason |", "|---|---|---:|---|---|"]
    lines += [f"| {r['method']} | {r['task']} | {r['seed']} | {r['status']} | {r['reason']} |" for r in rows]
    return "\n".join(lines) + "\n"


def cmd_report(exp: ExperimentConfig, out_root: Path | None, runs_dir: Path | None) -> int:
    res = report(exp, out_root, runs_dir)
    bad = [r for r in res.get("not_scored", []) if r["status"] != "missing"]
    if bad:
        print(f"dtrl report: warning: {len(bad)} run(s) not scored (diverged or failed): "
              + ", ".join(f"{r['method']}/{r['task']}/seed{r['seed']}" for r in bad[:5])
              + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""), file=sys.stderr)
    if res["missing"]:
        shown = ", ".join(f"{m}/{t}/seed{s}" for m, t, s in res["missing"][:5])
        more = f" and {len(res['missing']) - 5} more" if len(res["missing"]) > 5 else ""
        print(f"dtrl report: warning: {len(res['missing'])} run(s) of the grid have no summary.json: "
              f"{shown}{more}", file=sys.stderr)
    for w in res["warnings"]:
        print(f"dtrl report: warning: {w}", file=sys.stderr)
    for p in res["tables"] + res["figures"] + res.get("report", []):
        print(p)
    return 0
