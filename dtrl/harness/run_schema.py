"""The run-directory contract: what every finetuning run leaves in its directory, whoever wrote it.

The online harness writes it for every built-in method; an external command (``algo: external``)
must write the same, and ``dtrl check-run DIR`` checks a directory against it. The report reads
nothing else. docs/CONTRACTS.md documents the same schema for people.

    <runs>/<method>/<task>/seed<seed>/
      progress.csv    one row per iteration (or evaluation); columns PROGRESS_COLUMNS first (any
                      order; OPTIONAL_COLUMNS may be left out), then the method's own diagnostics. PROGRESS_FILLED must be filled in
                      every row, eval_norm_return in at least one; the MONOTONE counters (env
                      steps, updates, CPU-seconds) never decrease, and the last row's equal summary.json's.
      summary.json    SUMMARY_TYPES keys (more are allowed); written last: its presence marks the
                      run complete. final_norm_return is the task's D4RL normalisation of
                      final_return (mean over the final evaluation's episodes).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from dtrl.util.logger import CORE_COLUMNS, SUMMARY_KEYS

# Columns the harness writes that an external command may leave out (added after external commands
# existed); where present they are checked like the others.
OPTIONAL_COLUMNS = ["cpu_s"]
PROGRESS_COLUMNS = list(CORE_COLUMNS)  # every column the contract describes (docs/CONTRACTS.md's table)
REQUIRED_COLUMNS = [c for c in PROGRESS_COLUMNS if c not in OPTIONAL_COLUMNS]
PROGRESS_FILLED = ["iteration", "env_steps", "env_steps_eval", "policy_updates", "critic_updates", "grad_updates"]
MONOTONE = ["env_steps", "env_steps_eval", "policy_updates", "critic_updates", "grad_updates", "cpu_s"]

# summary.json key -> (type, meaning). SUMMARY_KEYS of dtrl.util.logger is the same key list.
SUMMARY_TYPES: dict[str, tuple[type, str]] = {
    "method": (str, "method entry name (the run directory's <method>)"),
    "algo": (str, "algorithm (`external` for an external command)"),
    "task": (str, "task name (`dtrl tasks`)"),
    "seed": (int, "run seed"),
    "final_return": (float, "mean raw return of the final evaluation episodes"),
    "final_norm_return": (float, "the same as a D4RL normalised score (0 = random, 100 = expert): the reported score"),
    "final_norm_return_std": (float, "std over the final evaluation episodes of the normalised return"),
    "eval_episodes": (int, "episodes in the final evaluation"),
    "env_steps": (int, "training env steps taken (exploration + scoring; the budget counts these)"),
    "env_steps_eval": (int, "env steps spent in evaluation, counted apart"),
    "policy_updates": (int, "optimizer steps of the acting policy (the DT, or an actor): the update axis of tables and curves"),
    "critic_updates": (int, "optimizer steps of critics / value functions (0 for a method without)"),
    "grad_updates": (int, "= policy_updates (kept for older readers)"),
    "wall_time": (float, "seconds the run took, summed over resumes"),
    "iterations": (int, "online iterations (rows of progress.csv that are not the final evaluation)"),
}
OPTIONAL_SUMMARY = {
    "final_returns": "list of the final evaluation's raw returns (length eval_episodes)",
    "budget_env_steps": "the configured env-step budget",
    "step_counts": "method-specific step counts",
    "cpu_s": "process CPU-seconds the run took, summed over resumes (progress.csv's last cpu_s)",
}
assert list(SUMMARY_TYPES) == list(SUMMARY_KEYS), "dtrl.util.logger.SUMMARY_KEYS and the schema must list the same keys"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# The score keys: a run that did not complete (diverged) records them as null.
SCORE_KEYS = ("final_return", "final_norm_return", "final_norm_return_std")


def completed(summary: Any) -> bool:
    """A run that completed (a summary from before dtrl recorded a status counts as one); a diverged run's
    summary holds no score but follows the rest of the contract, and is never scored (:func:`unscored_reason`)."""
    return isinstance(summary, dict) and summary.get("status", "completed") == "completed"


def check_summary(summary: Any, task: str | None = None) -> list[str]:
    if not isinstance(summary, dict):
        return ["summary.json must hold a JSON object"]
    errors = [f"summary.json lacks required key '{k}' ({SUMMARY_TYPES[k][1]})" for k in SUMMARY_TYPES if k not in summary]
    if not completed(summary):  # diverged: no score, but the rest of the contract holds
        errors += [f"summary.json '{k}' must be null in a run that did not complete (status "
                   f"{summary.get('status')!r}), got {summary[k]!r}" for k in SCORE_KEYS if summary.get(k) is not None]
        if not isinstance(summary.get("divergence"), dict):
            errors.append(f"summary.json of a run with status {summary.get('status')!r} lacks 'divergence' (what "
                          "broke, the config key at fault, the message)")
    for k, (tp, meaning) in SUMMARY_TYPES.items():
        if k not in summary or (k in SCORE_KEYS and not completed(summary)):
            continue
        v = summary[k]
        if tp is str and not isinstance(v, str):
            errors.append(f"summary.json '{k}' must be a string ({meaning}), got {v!r}")
        elif tp is int and not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            errors.append(f"summary.json '{k}' must be an integer >= 0 ({meaning}), got {v!r}")
        elif tp is float and not _number(v):
            errors.append(f"summary.json '{k}' must be a finite number ({meaning}), got {v!r}")
    if errors:
        return errors
    if task is not None and summary["task"] != task:
        errors.append(f"summary.json 'task' is '{summary['task']}' but the run is of task '{task}'")
    if not completed(summary):
        return errors
    try:
        from dtrl.tasks import get_task

        t = get_task(summary["task"])
    except KeyError as e:
        return errors + [f"summary.json 'task': {e}"]
    want = float(t.normalize(summary["final_return"]))
    if abs(want - summary["final_norm_return"]) > 1e-6 * max(1.0, abs(want)):
        errors.append(f"summary.json 'final_norm_return' is {summary['final_norm_return']} but final_return "
                      f"{summary['final_return']} normalises to {want:.6g} on {t.name} (dtrl.tasks.get_task(task)."
                      "normalize)")
    returns = summary.get("final_returns")
    if returns is not None:
        if not (isinstance(returns, list) and all(_number(r) for r in returns)) or len(returns) != summary["eval_episodes"]:
            errors.append(f"summary.json 'final_returns' must list eval_episodes={summary['eval_episodes']} numbers")
        elif returns and abs(sum(returns) / len(returns) - summary["final_return"]) > 1e-6 * max(1.0, abs(summary["final_return"])):
            errors.append("summary.json 'final_return' is not the mean of 'final_returns'")
    return errors


def _float(v: str) -> float | None:
    try:
        return float(v) if v not in ("", None) else None
    except ValueError:
        return float("nan")


def check_progress(path: Path, summary: dict | None) -> list[str]:
    """The progress.csv rules. Of a run that did not complete (diverged) only the columns and counts are
    checked: it may have stopped before its first evaluation, and its summary counts the iteration it broke in."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        return [f"progress.csv lacks required column '{c}'" for c in missing] + \
               [f"progress.csv must have the columns {', '.join(REQUIRED_COLUMNS)} (then any diagnostics)"]
    present = [c for c in PROGRESS_COLUMNS if c in columns]
    if not rows:
        return ["progress.csv has no rows"]
    errors = []
    for c in present:
        bad = [i + 2 for i, r in enumerate(rows) if (v := _float(r[c])) is not None and not math.isfinite(v)]
        if bad:
            errors.append(f"progress.csv column '{c}' is not numeric on line(s) {bad[:5]}")
    for c in PROGRESS_FILLED:
        empty = [i + 2 for i, r in enumerate(rows) if _float(r[c]) is None]
        if empty:
            errors.append(f"progress.csv column '{c}' is empty on line(s) {empty[:5]}; it must be filled in every row")
    done = summary is None or completed(summary)
    if done and not any(_float(r["eval_norm_return"]) is not None for r in rows):
        errors.append("progress.csv has no evaluation: column 'eval_norm_return' is empty in every row")
    if errors:
        return errors
    for c in (m for m in MONOTONE if m in columns):
        vals = [v for r in rows if (v := _float(r[c])) is not None]  # optional columns may be empty
        if any(b < a for a, b in zip(vals, vals[1:])):
            errors.append(f"progress.csv column '{c}' decreases; it counts totals so far and never goes down")
    if summary is not None and done and not errors:
        for c in ("env_steps", "policy_updates", "critic_updates", "grad_updates"):
            last = _float(rows[-1][c])
            if isinstance(summary.get(c), (int, float)) and last != summary[c]:
                errors.append(f"progress.csv's last row has {c}={last:g} but summary.json says {summary[c]}")
    return errors


def check_run(run_dir: str | Path, task: str | None = None) -> list[str]:
    """Every way ``run_dir`` breaks the contract, as messages naming the file, key or column; [] if none.
    The task comes from ``task``, else from a ``.../<task>/seed<s>`` directory layout, else summary.json."""
    d = Path(run_dir)
    if not d.is_dir():
        return [f"{d} is not a directory"]
    # runs/<method>/<task>/seed<s>: the directories name the run (as the report finds it)
    parents = d.resolve().parents
    layout = re.fullmatch(r"seed(\d+)", d.name) if len(parents) > 2 and parents[2].name == "runs" else None
    if task is None and layout:
        task = d.parent.name
    summary = None
    errors: list[str] = []
    if not (d / "summary.json").exists():
        errors.append("summary.json is missing (a run writes it last, when it is complete)")
    else:
        try:
            summary = json.loads((d / "summary.json").read_text())
        except ValueError as e:
            errors.append(f"summary.json is not valid JSON: {e}")
        if summary is not None:
            from dtrl.tasks import get_task

            if task is not None:
                try:
                    get_task(task)
                except KeyError:
                    task = None  # the directory is not named after a task: judge the task the summary names
            errors += check_summary(summary, task)
            if layout and isinstance(summary, dict):
                if summary.get("seed") != int(layout.group(1)) and "seed" in summary:
                    errors.append(f"summary.json 'seed' is {summary.get('seed')!r} but the directory is {d.name}")
                if summary.get("method") not in (None, d.parent.parent.name):
                    errors.append(f"summary.json 'method' is {summary.get('method')!r} but the directory is of "
                                  f"method '{d.parent.parent.name}'")
    if not (d / "progress.csv").exists():
        if not completed(summary) and summary is not None:
            return errors  # diverged before its first row
        errors.append(f"progress.csv is missing (one row per iteration, columns {', '.join(PROGRESS_COLUMNS)})")
    else:
        errors += check_progress(d / "progress.csv", summary if isinstance(summary, dict) else None)
    return errors


def unscored_reason(run_dir: str | Path, summary: Any, task: str) -> str | None:
    """Why the run in ``run_dir`` (whose summary.json parsed to ``summary``) must not be scored, or None.

    The one rule `dtrl report` scores by: a run that did not complete (its summary's ``status``: diverged,
    failed; summaries from before dtrl recorded one count as completed), or whose files break the
    contract :func:`check_run` checks (a summary that is not an object, a score that is a string or not
    finite, a ``final_norm_return`` that is not ``final_return`` normalised -- edited by hand --, a progress.csv
    that is empty or disagrees with the summary). The first problem is the reason; more are counted."""
    if not isinstance(summary, dict):
        return f"summary.json holds a JSON {type(summary).__name__}, not an object"
    status = summary.get("status", "completed")
    if status != "completed":
        return str((summary.get("divergence") or {}).get("message") or f"status {status}")
    errors = check_summary(summary, task)
    path = Path(run_dir) / "progress.csv"
    if not errors:
        try:
            if not path.exists() or path.stat().st_size == 0:
                errors = [f"progress.csv is {'missing' if not path.exists() else 'empty (0 bytes)'}"]
            else:
                errors = check_progress(path, summary)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            errors = [f"progress.csv cannot be read ({e})"]
    if not errors:
        return None
    more = f" (and {len(errors) - 1} more problem(s): dtrl check-run {run_dir})" if len(errors) > 1 else ""
    return errors[0] + more


def cmd_check_run(run_dir: Path, task: str | None) -> int:
    errors = check_run(run_dir, task)
    if errors:
        print(f"dtrl check-run: {run_dir} does not follow the run contract (docs/CONTRACTS.md):", flush=True)
        for e in errors:
            print(f"  - {e}")
        return 1
    s = json.loads((Path(run_dir) / "summary.json").read_text())
    if not completed(s):  # the report's rule (unscored_reason): listed apart, never scored
        reason = unscored_reason(run_dir, s, s.get("task", ""))
        print(f"{run_dir}: follows the run contract but is not scored ({s.get('status')}): {reason}")
        return 3
    print(f"{run_dir}: ok ({s['method']} {s['task']} seed {s['seed']}: normalised return {s['final_norm_return']:.2f}, "
          f"{s['env_steps']} env steps, {s['grad_updates']} updates)")
    return 0
