"""Per-run progress CSV and summary JSON, identical in form for every method.

The CSV is rewritten atomically on every log call (runs log at most a few thousand rows), so a
killed run never leaves a torn file, and a resumed run continues the same file: rows logged after
the checkpoint it resumes from are dropped, so the CSV never holds an iteration twice.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

from dtrl.util.io import atomic_write_json, atomic_write_text

# Columns every method writes, first and in this order; methods add their own diagnostics after.
CORE_COLUMNS = [
    "iteration",
    "env_steps",  # training env steps: exploration + group scoring (everything but evaluation)
    "env_steps_eval",  # env steps spent in evaluation episodes, counted apart
    "policy_updates",  # optimizer steps of the acting policy (DT or actor): the update axis of tables and curves
    "critic_updates",  # optimizer steps of critics / value functions (0 for methods without)
    "grad_updates",  # = policy_updates, kept for older readers
    "eval_return",
    "eval_norm_return",
    "wall_time",
    "cpu_s",  # process CPU-seconds (all threads of the run's process), summed over resumes: the compute axis
    "env_steps_per_s",
    "updates_per_s",
]

SUMMARY_KEYS = [
    "method", "algo", "task", "seed", "final_return", "final_norm_return", "final_norm_return_std",
    "eval_episodes", "env_steps", "env_steps_eval", "policy_updates", "critic_updates", "grad_updates", "wall_time",
    "iterations",
]


class RunLogger:
    def __init__(self, path: str | Path, echo: bool = False):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = list(CORE_COLUMNS)
        self.echo = echo
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                for name in reader.fieldnames or []:
                    if name not in self.columns:
                        self.columns.append(name)
                self.rows = [{k: _parse(v) for k, v in row.items()} for row in reader]

    def truncate_after(self, iteration: int) -> None:
        """Drop rows newer than a resumed checkpoint's iteration, and any final-evaluation row."""
        self.rows = [r for r in self.rows
                     if not r.get("final") and (r.get("iteration") is None or r["iteration"] <= iteration)]

    def log(self, row: dict[str, Any]) -> None:
        row = {k: _plain(v) for k, v in row.items()}
        for k in row:
            if k not in self.columns:
                self.columns.append(k)
        self.rows.append(row)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in self.columns})
        atomic_write_text(self.path, buf.getvalue())
        if self.echo:
            print(" ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)


def write_summary(path: str | Path, summary: dict[str, Any]) -> None:
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise ValueError(f"summary is missing {missing}")
    atomic_write_json(path, summary)


class CpuClock:
    """Cumulative process CPU-seconds of a run, continued across resumes.

    ``time.process_time`` counts every thread of this process (torch's intra-op pool included), not
    the wall time a shared machine stretches; env worker processes (``rollout_workers`` > 0) are
    separate processes and not counted. ``start`` is what earlier sessions of the run used."""

    def __init__(self, start: float = 0.0) -> None:
        self.offset = float(start) - time.process_time()

    def __call__(self) -> float:
        return self.offset + time.process_time()


class Throughput:
    """Env steps/s and updates/s between two log calls."""

    def __init__(self) -> None:
        self.t, self.steps, self.updates = time.perf_counter(), 0, 0

    def rates(self, env_steps: int, updates: int) -> tuple[float, float]:
        now = time.perf_counter()
        dt = max(now - self.t, 1e-9)
        out = ((env_steps - self.steps) / dt, (updates - self.updates) / dt)
        self.t, self.steps, self.updates = now, env_steps, updates
        return out


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        try:
            return v.item()
        except (ValueError, RuntimeError):
            pass
    return v


def _parse(v: str) -> Any:
    if v == "" or v is None:
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)
