"""`dtrl report`: tables and rliable figures from finished runs.

Reads ``<runs>/<method>/<task>/seed<seed>/summary.json`` (final score, budgets) and ``progress.csv``
(learning curves) for the experiment's grid and writes, under ``<out>`` (default: ``exp.results``)::

    tables/main.csv, main.md         task rows x method columns: final normalised score, mean and
                                     std over seeds, an average row, the budgets each method used,
                                     and the published numbers beside ours where the tasks match
    tables/published.csv, .md        per benchmark family, ours and Yan et al. 2024's scores before and
                                     after finetuning, for ODT, ODT+TD3 and IQL (grid tasks they cover)
    tables/published_reference.csv, .md   every column of Yan et al. 2024 for the grid's tasks
    tables/aggregates.csv, .md       IQM / median / mean / optimality gap, stratified-bootstrap CIs
    tables/probability_of_improvement.csv   P(GRPO-DT > baseline) with CIs (grid has a grpo entry)
    tables/ablations.csv, .md        one row per GRPO-DT variant (grid.ablations), when present
    tables/not_scored.csv, .md       runs of the grid left out of every score: diverged, failed, invalid
                                     (files that break the run contract) and missing
    tables/html/<table>.html         each table as a page, for `snakemake --report`
    figures/aggregate_metrics.png|pdf, performance_profile.png|pdf,
    figures/probability_of_improvement.png|pdf, learning_curves_<task>.png|pdf
    figures/ratio_diagnostics_<task>.png|pdf   per ablation task, when an ablation changes relabel or ratio:
                                     log-ratio quantiles, first |ratio - 1|, clip fraction, KL over training
    tables/findings.csv, .md, REPORT.md   the grid's comparisons and the results page (dtrl/report/page.py)

The modules: :mod:`dtrl.report.runs` finds and judges the runs, :mod:`dtrl.report.stats` computes the
rliable estimates, :mod:`dtrl.report.tables` and :mod:`dtrl.report.figures` make the tables and figures,
:mod:`dtrl.report.page` the findings and REPORT.md, and this one puts them together.

Nothing is replaced unless everything could be built: the outputs are built in a staging directory
under ``<out>``, then moved into place file by file (``os.replace``: each file is whole, old or new); a
report that cannot be made (no runs directory, no run of the grid, a grid without runs, a cell mixing
method configs) exits 2 having written nothing. A manifest (``<out>/.dtrl-report-files``) lists what the
last report wrote, so outputs that no longer apply (the figure of a task taken out of the grid) are
removed and nothing else under ``<out>`` is touched.

Scores are normalised scores (0 = random, 100 = expert): D4RL's reference returns on D4RL's tasks,
dtrl's own on the others (`dtrl tasks`). Standard deviations over seeds are sample standard deviations
(ddof=1; 0 for a single seed). No interval is drawn from fewer than ``report.min_runs_for_ci`` runs.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from dtrl.config.experiment import ExperimentConfig
from dtrl.report.common import MAIN_ALGO, _md_table, _write_csv, _write_text, algo_of
from dtrl.report.figures import plot_aggregates, plot_learning_curves, plot_poi, plot_profiles, plot_ratio_diagnostics
from dtrl.report.runs import check_cells_share_config, data_warnings, expected_runs, load_runs, split_scored
from dtrl.report.stats import (CURVE_REPS, POI_REPS, PROFILE_REPS, REPS, aggregate_estimates, performance_profiles,
                               probability_of_improvement, score_matrices, withhold_small_cis)
from dtrl.report.tables import (_small_sample_note, ablation_markdown, ablation_table, eval_rtg_note, main_markdown,
                                main_table, markdown_html, not_scored_markdown, published_markdown, published_methods,
                                published_reference_markdown, published_reference_table, published_table,
                                with_labels)


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


def cmd_report(exp: ExperimentConfig, out_root: Path | None, runs_dir: Path | None) -> int:
    res = report(exp, out_root, runs_dir)
    bad = [r for r in res.get("not_scored", []) if r["status"] != "missing"]
    if bad:
        print(f"dtrl report: warning: {len(bad)} run(s) not scored (diverged, failed or invalid: see "
              "tables/not_scored.md): "
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
