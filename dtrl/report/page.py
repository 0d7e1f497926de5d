"""``REPORT.md``: one self-contained results page per grid, written by `dtrl report`.

The page lives in the grid's results root (``<out>/REPORT.md``, beside ``tables/`` and ``figures/``,
so its links are relative and the folder can be copied as it is, e.g. to ``docs/results/<grid>/``).
It holds, in order: how it was made (command, dtrl commit, machine, wall time of the runs), the
findings, every table `dtrl report` wrote, every figure inline, and the grid's resolved config.

The findings are comparisons the grid's methods define, never claims written in code:

* ``vs_offline``: each method of ``grid.methods`` against the offline DT (algorithm ``none``);
* ``vs_baseline``: each GRPO-DT entry of ``grid.methods`` against each other method that is neither
  GRPO-DT nor the offline DT (ODT, ODT+TD3, IQL, ...);
* ``ablation``: each entry of ``grid.ablations`` against its parent (``dtrl.report.common.ablation_base``)
  on ``grid.ablation_tasks``.

For each: the IQM difference of the final normalised scores with a stratified (independent)
bootstrap CI (rliable), each side's IQM, the probability of improvement with its CI, the budgets
per run (env steps, gradient updates), and, where the runs logged them, the ratio diagnostics
(first-minibatch |ratio - 1|, largest |log ratio|, clip fraction, approximate KL; means over
iterations, then over runs). The numbers go to ``tables/findings.csv``; each paragraph is a template
filled from that row, and its verdict follows from the CI alone (above 0, below 0, or contains 0).
No interval without the runs for it: where either side has fewer than ``report.min_runs_for_ci`` runs
(seeds that finished every task) the finding gives point estimates only and no verdict, as every table
and figure of the report does. A comparison whose env-step budgets per run differ by more than
``report.budget_tolerance`` opens with both budgets, in bold.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dtrl.config.experiment import ExperimentConfig

REPORT_FILE = "REPORT.md"
FINDINGS_TABLE = "findings"
# progress.csv columns read as ratio diagnostics (where a method logs them), with how a run's rows
# are summarised: the mean over iterations, or the largest value.
DIAGNOSTICS = {"ratio_first_absdev": "mean", "log_ratio_absmax": "max", "log_ratio_q05": "mean", "log_ratio_q95": "mean",
               "clip_frac": "mean", "approx_kl": "mean"}
DIAGNOSTIC_LABELS = {"ratio_first_absdev": "first-minibatch max |ratio - 1|", "log_ratio_absmax": "largest |log ratio|",
                     "log_ratio_q05": "log-ratio 5% quantile", "log_ratio_q95": "log-ratio 95% quantile",
                     "clip_frac": "clip fraction", "approx_kl": "approx. KL"}
KIND_TITLES = {"vs_offline": "Each method against the offline DT it starts from",
               "vs_baseline": "GRPO-DT against each baseline",
               "ablation": "Each ablation against its parent entry"}
TABLE_ORDER = ("main", "published", "published_reference", "ablations", "aggregates", "probability_of_improvement",
               FINDINGS_TABLE)


# ----------------------------------------------------------------------------------------------
# The comparisons and their numbers
# ----------------------------------------------------------------------------------------------

def comparisons(exp: ExperimentConfig) -> list[tuple[str, str, str, list[str]]]:
    """(kind, method, baseline, tasks) of every finding the grid defines."""
    from dtrl.report.common import ablation_base, algo_of

    methods = list(exp.grid.methods)
    offline = next((m for m in methods if algo_of(exp, m) == "none"), None)
    tasks = list(exp.grid.tasks)
    out = []
    if offline:
        out += [("vs_offline", m, offline, tasks) for m in methods if m != offline]
    grpo = [m for m in methods if algo_of(exp, m) == "grpo"]
    baselines = [m for m in methods if algo_of(exp, m) not in ("grpo", "none")]
    out += [("vs_baseline", g, b, tasks) for g in grpo for b in baselines]
    for a in exp.grid.ablations:
        base = ablation_base(exp, a)
        if base:
            out.append(("ablation", a, base, list(exp.grid.ablation_tasks)))
    return out


def score_matrix(runs: dict, method: str, tasks: list[str], seeds: list[int]) -> np.ndarray | None:
    """(seeds x tasks) final scores over the seeds ``method`` finished on every task; None if none."""
    ok = [s for s in seeds if all((method, t, s) in runs for t in tasks)]
    if not ok or not tasks:
        return None
    return np.array([[runs[(method, t, s)].score for t in tasks] for s in ok], dtype=np.float64)


def run_diagnostics(run) -> dict[str, float]:
    df = run.progress()
    out: dict[str, float] = {}
    if df is None:
        return out
    for col, how in DIAGNOSTICS.items():
        if col in df:
            v = pd.to_numeric(df[col], errors="coerce").dropna()
            if len(v):
                out[col] = float(v.max() if how == "max" else v.mean())
    return out


def _side_stats(runs: dict, method: str, tasks: list[str], seeds: list[int]) -> dict[str, float]:
    rs = [r for t in tasks for s in seeds if (r := runs.get((method, t, s))) is not None]

    def mean_of(key: str) -> float:
        v = [float(r.summary[key]) for r in rs if r.summary.get(key) is not None]
        return float(np.mean(v)) if v else float("nan")

    # grad_updates: the update axis (policy updates where the runs count critic updates apart)
    stats: dict[str, Any] = {"env_steps": mean_of("env_steps"), "grad_updates": mean_of("grad_updates"),
                             "critic_updates": mean_of("critic_updates")}
    # the method's own split of its steps and updates (GRPO-DT: explore/sampled/scoring env steps;
    # ODT+TD3: critic/DT updates; IQL: offline/online updates), means per run
    keys = dict.fromkeys(k for r in rs for k in (r.summary.get("step_counts") or {}))
    stats["step_counts"] = ", ".join(
        f"{k} {_steps(float(np.mean([float((r.summary.get('step_counts') or {}).get(k, 0)) for r in rs])))}"
        for k in keys)
    diags = [run_diagnostics(r) for r in rs]
    for col in DIAGNOSTICS:
        v = [d[col] for d in diags if col in d]
        stats[col] = float(np.mean(v)) if v else float("nan")
    return stats


def finding_rows(exp: ExperimentConfig, runs: dict, reps: int, seed: int = 0) -> pd.DataFrame:
    """One row per comparison: IQMs, the IQM difference with its CI, P(method > baseline), budgets and
    ratio diagnostics of both sides. Comparisons without complete runs on both sides are left out.

    A side with fewer than ``report.min_runs_for_ci`` runs (seeds that finished every task) gets point
    estimates only: the CI columns are empty (NaN) and ``ci_note`` says why, as in aggregates.csv.
    ``budgets_matched`` is false where the env steps per run differ by more than ``report.budget_tolerance``."""
    from rliable import metrics

    from dtrl.report.common import CI, _seeded, budgets_differ

    seeds, min_runs = list(exp.grid.seeds), exp.report.min_runs_for_ci
    rows = []

    def iqm_diff(x: np.ndarray, y: np.ndarray) -> float:
        return float(metrics.aggregate_iqm(x) - metrics.aggregate_iqm(y))

    for kind, m, b, tasks in comparisons(exp):
        x, y = score_matrix(runs, m, tasks, seeds), score_matrix(runs, b, tasks, seeds)
        if x is None or y is None or np.isnan(x).any() or np.isnan(y).any():
            continue
        d, p = iqm_diff(x, y), float(metrics.probability_of_improvement(x, y))
        lo = hi = plo = phi = float("nan")
        few = min(x.shape[0], y.shape[0]) < min_runs
        if not few:
            from rliable import library as rly

            with _seeded(seed):
                _, ci = rly.get_interval_estimates({"d": (x, y)}, iqm_diff, reps=reps, confidence_interval_size=CI)
                lo, hi = (float(v) for v in np.ravel(ci["d"])[:2])
                _, ci = rly.get_interval_estimates({"p": (x, y)}, metrics.probability_of_improvement, reps=reps,
                                                   confidence_interval_size=CI)
                plo, phi = (float(v) for v in np.ravel(ci["p"])[:2])
        ix, iy = float(metrics.aggregate_iqm(x)), float(metrics.aggregate_iqm(y))  # as aggregates.csv's IQM
        row: dict[str, Any] = {"kind": kind, "method": m, "baseline": b, "tasks": " ".join(tasks),
                               "runs_method": int(x.size), "runs_baseline": int(y.size),
                               "seeds_method": int(x.shape[0]), "seeds_baseline": int(y.shape[0]),
                               "iqm_method": ix, "iqm_baseline": iy, "iqm_diff": d, "ci_low": lo, "ci_high": hi,
                               "poi": p, "poi_low": plo, "poi_high": phi,
                               "ci_note": f"fewer than report.min_runs_for_ci={min_runs} runs: no CI" if few else ""}
        for side, name in (("method", m), ("baseline", b)):
            row.update({f"{k}_{side}": v for k, v in _side_stats(runs, name, tasks, seeds).items()})
        row["budgets_matched"] = not budgets_differ(row["env_steps_method"], row["env_steps_baseline"],
                                                    exp.report.budget_tolerance)
        rows.append(row)
    cols = ["kind", "method", "baseline", "tasks", "runs_method", "runs_baseline", "seeds_method", "seeds_baseline",
            "iqm_method", "iqm_baseline", "iqm_diff", "ci_low", "ci_high", "poi", "poi_low", "poi_high", "ci_note",
            "budgets_matched"]
    cols += [f"{k}_{s}" for k in ("env_steps", "grad_updates", "critic_updates", "step_counts", *DIAGNOSTICS)
             for s in ("method", "baseline")]
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------------------------
# Paragraphs (templates filled from a findings row)
# ----------------------------------------------------------------------------------------------

def verdict(lo: float, hi: float, a: str) -> str:
    if math.isnan(lo) or math.isnan(hi):
        return "No CI, so no verdict."
    if lo > 0:
        return f"The CI lies above 0: {a} scores higher in this grid."
    if hi < 0:
        return f"The CI lies below 0: {a} scores lower in this grid."
    return "The CI contains 0: this grid does not resolve a difference."


def _num(x: float, fmt: str = ".1f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _steps(x: float) -> str:
    from dtrl.report.common import _fmt_count

    return _fmt_count(x)


def _critic(n: Any) -> str:
    return f" + {_steps(float(n))} critic updates" if isinstance(n, (int, float)) and n > 0 else ""


def _split(counts: Any) -> str:
    return f" ({counts})" if isinstance(counts, str) and counts else ""


def _interval(est: float, lo: float, hi: float, fmt: str) -> str:
    """'+1.2 [-0.3, +2.0]', or the estimate alone when there is no CI."""
    if math.isnan(lo) or math.isnan(hi):
        return _num(est, fmt)
    return f"{_num(est, fmt)} [{_num(lo, fmt)}, {_num(hi, fmt)}]"


def paragraph(exp: ExperimentConfig, r: dict[str, Any]) -> str:
    from dtrl.report.common import CI, method_label

    a, b = method_label(exp, r["method"]), method_label(exp, r["baseline"])
    n_tasks = len(str(r["tasks"]).split())
    no_ci = math.isnan(r["ci_low"]) or math.isnan(r["ci_high"])
    ci_text = (f"no CI: {min(r['seeds_method'], r['seeds_baseline'])} run(s) per task on a side, fewer than "
               f"report.min_runs_for_ci={exp.report.min_runs_for_ci}" if no_ci
               else f"{int(CI * 100)}% stratified-bootstrap CI")
    text = ""
    if not r["budgets_matched"]:
        text = (f"**Unmatched env-step budgets: {a} {_steps(r['env_steps_method'])} vs {b} "
                f"{_steps(r['env_steps_baseline'])} per run** (they differ by more than "
                f"{100 * exp.report.budget_tolerance:g}%): the scores compare what each reached at its own budget. ")
    text += (f"**{a} − {b}** IQM difference: {_interval(r['iqm_diff'], r['ci_low'], r['ci_high'], '+.1f')} "
             f"({ci_text}; final normalised score over "
             f"{n_tasks} task(s): {r['tasks']}; IQM {a} {_num(r['iqm_method'])} from {r['runs_method']} run(s), "
             f"{b} {_num(r['iqm_baseline'])} from {r['runs_baseline']} run(s)). "
             f"P({a} > {b}) = {_interval(r['poi'], r['poi_low'], r['poi_high'], '.2f')}. "
             f"{verdict(r['ci_low'], r['ci_high'], a)} "
             f"Budgets per run: {a} {_steps(r['env_steps_method'])} env steps and {_steps(r['grad_updates_method'])} "
             f"gradient updates{_critic(r['critic_updates_method'])}{_split(r['step_counts_method'])}; "
             f"{b} {_steps(r['env_steps_baseline'])} and {_steps(r['grad_updates_baseline'])}"
             f"{_critic(r['critic_updates_baseline'])}{_split(r['step_counts_baseline'])}.")
    diag = [f"{DIAGNOSTIC_LABELS[k]} {_num(r[f'{k}_method'], '.3g')} vs {_num(r[f'{k}_baseline'], '.3g')}"
            for k in DIAGNOSTICS if not (math.isnan(r[f"{k}_method"]) or math.isnan(r[f"{k}_baseline"]))]
    if diag:
        text += f" Ratio diagnostics ({a} vs {b}, mean over runs): " + "; ".join(diag) + "."
    return text


# ----------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------

def dtrl_commit() -> str:
    """``git describe --always --dirty`` of the checkout dtrl is imported from; 'unknown' outside one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=here, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def machine() -> dict[str, str]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - a broken CUDA setup must not stop the report
        gpu = "unknown"
    return {"cpu": cpu or "unknown", "cores": str(cores), "gpu": gpu, "platform": platform.platform()}


def wall_times(exp: ExperimentConfig, runs: dict) -> dict[str, float]:
    """Summed wall time of the finetuning runs and of the pretraining runs they start from (from their
    summaries), and the span from the earliest start (summary mtime - wall time) to the last finish."""
    from dtrl.util.io import read_json

    ends, starts, fin, pre = [], [], 0.0, 0.0
    for r in runs.values():
        w = float(r.summary.get("wall_time") or 0.0)
        fin += w
        t = (r.run_dir / "summary.json").stat().st_mtime
        ends.append(t)
        starts.append(t - w)
    for task, seed in sorted({(k[1], k[2]) for k in runs}):
        p = Path(exp.results) / "pretrain" / task / f"seed{seed}" / "summary.json"
        if p.exists():
            w = float(read_json(p).get("wall_time") or 0.0)
            pre += w
            starts.append(p.stat().st_mtime - w)
    span = (max(ends) - min(starts)) if ends else float("nan")
    return {"finetune_s": fin, "pretrain_s": pre, "span_s": span}


def _dur(s: float) -> str:
    if math.isnan(s):
        return "–"
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min"


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------

def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def render(exp: ExperimentConfig, out: Path, runs: dict, written: dict[str, list], findings: pd.DataFrame,
           config_files: list[str] | None = None) -> str:
    import yaml

    from dtrl.config import to_dict

    m, w = machine(), wall_times(exp, runs)
    files = config_files or []
    cmd = "snakemake --cores all" + ("".join(f" --configfile {f}" for f in files) if files else "")
    lines = [f"# Results: {Path(exp.results).name}", "",
             f"Made by `dtrl report` from {len(runs)} finished run(s) of the grid "
             f"({len(written.get('missing', []))} missing). Remake: `{cmd}` (the grid) or "
             f"`dtrl report{''.join(f' -c {f}' for f in files)}` (this page from finished runs).", "",
             f"- dtrl commit: `{dtrl_commit()}`",
             f"- machine that wrote this page: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu']} ({m['platform']})",
             f"- devices the runs report: {', '.join(sorted(_devices(exp, runs))) or 'not recorded'}",
             f"- wall time: finetuning runs {_dur(w['finetune_s'])} summed, pretraining {_dur(w['pretrain_s'])} "
             f"summed; first start to last finish {_dur(w['span_s'])}",
             f"- written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    if written.get("missing"):
        shown = ", ".join(f"{a}/{t}/seed{s}" for a, t, s in written["missing"][:20])
        lines += [f"**Missing runs** (no summary.json; left out of every number): {shown}"
                  + (" ..." if len(written["missing"]) > 20 else ""), ""]
    lines += ["## Findings", "",
              "Each paragraph is filled from one row of `tables/findings.csv`; comparisons come from the grid "
              "(see `dtrl/report/page.py`), verdicts from the CI alone: none where a side has fewer than "
              f"`report.min_runs_for_ci` = {exp.report.min_runs_for_ci} runs (point estimates only). Comparisons "
              f"whose env-step budgets differ by more than {100 * exp.report.budget_tolerance:g}% say so first.", ""]
    if findings.empty:
        lines += ["No comparison has complete runs on both sides yet.", ""]
    for kind, title in KIND_TITLES.items():
        rows = findings[findings["kind"] == kind]
        if rows.empty:
            continue
        lines += [f"### {title}", ""]
        for _, r in rows.iterrows():
            lines += [paragraph(exp, r.to_dict()), ""]
    lines += ["## Tables", ""]
    tables = {Path(p).stem: Path(p) for p in written.get("tables", []) if Path(p).suffix == ".md"}
    for name in [n for n in TABLE_ORDER if n in tables] + sorted(set(tables) - set(TABLE_ORDER)):
        body = tables[name].read_text().strip()
        if not body.startswith("#"):
            body = f"### {name}\n\n{body}"
        body = "\n".join(("##" + ln) if ln.startswith("# ") else ln for ln in body.splitlines())
        lines += [body, "", f"(`{_rel(tables[name].with_suffix('.csv'), out)}`)", ""]
    figs = [Path(p) for p in written.get("figures", []) if Path(p).suffix == ".png"]
    if figs:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}]({_rel(p, out)})\n" for p in figs]
    lines += ["## Resolved config", "", "```yaml", yaml.safe_dump(to_dict(exp), sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def _devices(exp: ExperimentConfig, runs: dict) -> set[str]:
    from dtrl.util.io import read_json

    out = {str(r.summary["device"]) for r in runs.values() if r.summary.get("device")}
    for task, seed in {(k[1], k[2]) for k in runs}:
        p = Path(exp.results) / "pretrain" / task / f"seed{seed}" / "summary.json"
        if p.exists() and (d := read_json(p).get("device")):
            out.add(str(d))
    return out


def write_report_page(exp: ExperimentConfig, out: Path, runs: dict, written: dict[str, list], reps: int,
                      config_files: list[str] | None = None) -> list[Path]:
    """Write ``tables/findings.csv|md`` and ``<out>/REPORT.md``; returns the paths written."""
    from dtrl.report.common import _md_table, _write_csv, _write_text

    out = Path(out)
    findings = finding_rows(exp, runs, reps)
    csv_path, md_path = out / "tables" / f"{FINDINGS_TABLE}.csv", out / "tables" / f"{FINDINGS_TABLE}.md"
    _write_csv(csv_path, findings)
    _write_text(md_path, _md_table(findings) if not findings.empty else "(no comparison with complete runs)\n")
    written["tables"] += [csv_path, md_path]
    page = out / REPORT_FILE
    files = config_files_from_argv() if config_files is None else config_files
    _write_text(page, render(exp, out, runs, written, findings, files))
    return [page]


def config_files_from_argv() -> list[str]:
    """The ``-c/--config`` files of the running `dtrl report` command (for the page's remake line);
    none when the report is made from another program (a test, a notebook)."""
    if not (sys.argv and (Path(sys.argv[0]).name == "dtrl" or sys.argv[0].endswith(os.path.join("dtrl", "cli.py")))):
        return []
    argv, files = sys.argv[1:], []
    for i, a in enumerate(argv):
        if a in ("-c", "--config") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif a.startswith("--config="):
            files.append(a.split("=", 1)[1])
    return files
