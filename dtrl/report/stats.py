"""The rliable estimates of the report: aggregate metrics, probability of improvement, performance
profiles and learning curves, with stratified-bootstrap CIs (withheld below ``report.min_runs_for_ci``).

The optimality gap is taken to the expert score, gamma = 100. The estimates use only the seeds a method
finished on every task of the grid, so its score matrix is complete (rliable needs runs x tasks without
holes).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd

from dtrl.config.experiment import ExperimentConfig
from dtrl.report.common import CI, _seeded
from dtrl.report.runs import Run


AGGREGATE_METRICS = ("IQM", "Median", "Mean", "Optimality Gap")


OPTIMALITY_GAMMA = 100.0  # D4RL normalised scores: the expert is 100


REPS = 2000  # bootstrap replications for the aggregate metrics


PROFILE_REPS = 1000


POI_REPS = 1000


CURVE_REPS = 1000


def _std(x: list[float]) -> float:
    x = [v for v in x if not math.isnan(v)]
    return float(np.std(x, ddof=1)) if len(x) > 1 else (0.0 if x else float("nan"))


def _mean(x: list[float]) -> float:
    x = [v for v in x if not math.isnan(v)]
    return float(np.mean(x)) if x else float("nan")


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
