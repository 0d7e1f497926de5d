"""The report's tables: the main table, the published tables beside ours, the ablations, the runs not
scored, and each table as markdown and HTML (for `snakemake --report`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dtrl.config.experiment import ExperimentConfig, backbone_of
from dtrl.reference import PUBLISHED_METHODS, published_scores
from dtrl.report.common import (
    UPDATE_AXIS, _fmt_count, ablation_base, algo_of, budgets_differ, markdown_to_html, method_label,
)
from dtrl.report.runs import Run, ablation_rows, default_settings, method_settings
from dtrl.report.stats import _mean, _std


WALL_ROW, PRETRAIN_WALL_ROW = "wall_time", "pretrain_wall_time"


BUDGET_ROWS = {"env_steps": "env steps / run", "env_steps_eval": "eval env steps / run",
               UPDATE_AXIS: "policy (DT / actor) updates / run", "critic_updates": "critic updates / run",
               WALL_ROW: "wall time / run (s)", PRETRAIN_WALL_ROW: "wall time of the pretraining it starts from (s)"}


AVERAGE_ROW = "average"


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

    for m in (m for m in methods if f"{m}_published" in table):
        ours = float(steps[f"{m}_mean"])
        far = [f"{_fmt_count(SUITE_BUDGETS[s])} ({s})" for s in published_suites(exp, m)
               if budgets_differ(ours, SUITE_BUDGETS[s], tol)]
        if far:
            out.append(f"{method_label(exp, m)} {_fmt_count(ours)} vs its published column {', '.join(far)}")
    return out


def published_suites(exp: ExperimentConfig, method: str) -> list[str]:
    """The benchmark families of the grid's tasks that have a published number for ``method``."""
    pub = published_scores()
    return list(dict.fromkeys(pub.suites[t] for t in exp.grid.tasks if pub.score(algo_of(exp, method), t) is not None))


def published_header(exp: ExperimentConfig, method: str) -> str:
    """'ODT (published, D4RL v2, 500k env steps)': the datasets and the online budget of the published
    numbers the column holds; 'ODT (published)' when they span several families (the note under the
    table lists each family's, :func:`published_families_note`)."""
    from dtrl.reference import SUITE_DATASETS, budget_label

    suites = published_suites(exp, method)
    if len(suites) > 1:
        return f"{method_label(exp, method)} (published)"
    return f"{method_label(exp, method)} (published, {SUITE_DATASETS[suites[0]]}, {budget_label(suites[0])})"


def published_families_note(exp: ExperimentConfig, methods: list[str]) -> str:
    """'MuJoCo: D4RL v2 datasets, 500k env steps; Adroit: ...' for the families of the published columns."""
    from dtrl.reference import SUITE_DATASETS, SUITE_TABLES, budget_label

    suites = dict.fromkeys(s for m in methods for s in published_suites(exp, m))
    return "; ".join(f"{SUITE_TABLES[s]}: {SUITE_DATASETS[s]} datasets, {budget_label(s)}" for s in suites)


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
    # the sequence model each entry runs on (dt, reinformer; mlp for IQL), first row of the table
    lines.append("| *backbone* | " + " | ".join(
        backbone_of(exp, m) + (" | " if f"{m}_published" in table else "") for m in methods) + " |")
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
                  "point, not a like-for-like comparison. The datasets and online budget the paper states: "
                  + published_families_note(exp, [m for m in methods if f"{m}_published" in table])
                  + "; ours is the env-steps row. Scores use D4RL's reference returns (ant: "
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


def with_labels(exp: ExperimentConfig, df: pd.DataFrame, keys: tuple[str, ...] = ("method",)) -> pd.DataFrame:
    """``df`` with each method-key column followed by its display name (``<key>_label``), so every CSV
    names methods as the markdown tables and figures do, config key included."""
    df = df.copy()
    for key in keys:
        df.insert(df.columns.get_loc(key) + 1, f"{key}_label", [method_label(exp, m) for m in df[key]])
    return df


def _small_sample_note(df: pd.DataFrame, min_runs: int) -> str:
    if not (df["ci_note"] != "").any():
        return ""
    return (f"\nCIs are left empty where a method has fewer than {min_runs} runs (seeds that finished every task; "
            "`report.min_runs_for_ci`): with so few runs the bootstrap interval says little (with 2 runs the median, "
            "mean and IQM of a task coincide), so only the point estimate is given.\n")


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


def markdown_html(md: str, title: str) -> str:
    """A standalone HTML page of the markdown the report writes: what Snakemake's HTML report shows for each
    table (the same converter as REPORT.html, :func:`dtrl.report.common.markdown_to_html`)."""
    import html

    style = ("body{font-family:sans-serif;font-size:14px} table{border-collapse:collapse} "
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} td:first-child,th:first-child"
             "{text-align:left}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + markdown_to_html(md) + "</body></html>\n")
