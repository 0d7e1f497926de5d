"""The report's figures (matplotlib's object API: no pyplot, no display needed). A figure draws a
method's bootstrap interval only where it has ``report.min_runs_for_ci`` runs; each ``*_figure`` function
returns the figure, each ``plot_*`` saves it as PNG and PDF."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dtrl.config.experiment import ExperimentConfig
from dtrl.report.common import CI, COMPUTE_AXIS, MAIN_ALGO, UPDATE_AXIS, ablation_base, algo_of, method_label
from dtrl.report.runs import method_settings
from dtrl.report.stats import AGGREGATE_METRICS, CURVE_REPS, OPTIMALITY_GAMMA, learning_curve, series_mean
from dtrl.util.io import atomic_savefig


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
    """Evaluation return against env steps, policy updates and the run's process CPU-seconds (``cpu_s``:
    what each method gets for the same compute), mean over seeds; a method's bootstrap band only where it
    has ``report.min_runs_for_ci`` seeds. Runs that log no ``cpu_s`` (older or external ones) are left out
    of that panel only. None if no run has a curve."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    colors = _colors(list(exp.grid.methods))
    axes_keys = (("env_steps", "training env steps"), (UPDATE_AXIS, "policy (DT / actor) updates"),
                 (COMPUTE_AXIS, "finetuning CPU-seconds (process)"))
    fig = Figure(figsize=(16, 4))
    axes = fig.subplots(1, len(axes_keys))
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
            if x.size == 1:  # one evaluation (the offline DT): no curve to draw, a level to compare with
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
