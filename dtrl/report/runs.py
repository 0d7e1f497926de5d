"""The runs a grid asks for and what their directories hold: which to score, which to leave out and why.

A run is scored only when its summary says it completed and its files follow the run contract
(:func:`dtrl.harness.run_schema.unscored_reason`, the rule `dtrl check-run` checks). The runs of one cell
(method x task) must have been made under one method config (as their summaries record it,
:mod:`dtrl.harness.provenance`): the report refuses, naming the runs and the keys that differ, to average
runs made under different ones or made before dtrl recorded configs together with runs that record one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dtrl.config.experiment import ExperimentConfig
from dtrl.report.common import ablation_base
from dtrl.util.io import read_json


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
