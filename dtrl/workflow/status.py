"""`dtrl status`: how far a grid has got, read from its output files (safe while Snakemake runs).

Per rule: jobs done (their completion file exists), running (partial outputs written in the last
``RUNNING_WINDOW_S`` seconds), stopped (partial outputs, older: a killed job that resumes when rerun)
and pending (nothing yet). For finetuning, env steps done vs planned; an ETA from the runs' own
throughput: each unfinished run's remaining env steps at its method's measured env steps per second
(pretraining: remaining updates at the measured updates per second), summed and divided by the
number of jobs running now. With nothing running there is no ETA, only the compute left.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUNNING_WINDOW_S = 600


@dataclass
class RuleStatus:
    done: int = 0
    running: int = 0
    stopped: int = 0
    pending: int = 0
    work_done: float = 0.0  # env steps (finetune) or updates (pretrain)
    work_planned: float = 0.0
    remaining_s: float = 0.0
    unknown_eta: int = 0  # unfinished jobs whose method has no measured throughput yet
    rates: dict[str, list[float]] = field(default_factory=dict)

    def add(self, state: str) -> None:
        setattr(self, state, getattr(self, state) + 1)


def _state(done: Path, partial: list[Path], now: float) -> str:
    if done.exists():
        return "done"
    times = [p.stat().st_mtime for p in partial if p.exists()]
    if not times:
        return "pending"
    return "running" if now - max(times) < RUNNING_WINDOW_S else "stopped"


def _last_row(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    return rows[-1] if rows else {}


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def grid_status(exp: Any, now: float | None = None) -> dict[str, RuleStatus]:
    from dtrl.data.generate import behaviour_dir
    from dtrl.workflow.finetune import pretrained_path, run_dir
    from dtrl.report.runs import expected_runs
    from dtrl.tasks import get_task

    now = time.time() if now is None else now
    res = Path(exp.results)
    runs = expected_runs(exp)
    out = {k: RuleStatus() for k in ("behaviour", "data", "pretrain", "finetune")}
    tasks = sorted({t for _, t, _ in runs})

    generated = [t for t in tasks if t not in exp.data.sources]
    families = sorted({get_task(t).family.name for t in generated if get_task(t).quality != "random"})
    for fam in families:
        d = behaviour_dir(exp, fam)
        out["behaviour"].add(_state(d / "complete.flag", list(d.glob("*")), now))
    for t in tasks:
        out["data"].add(_state(res / "data" / f"{t}.json", [res / "data" / f"{t}.hdf5"], now))

    # (action head, backbone) of the model each method finetunes, None when it needs none: each kind is its
    # own pretraining (pretrain/, pretrain_det/, pretrain_<backbone>/), as the workflow schedules them
    kinds = {m: exp.pretrained_kind(m) for m in {m for m, _, _ in runs}}
    pre = out["pretrain"]
    pre_runs = sorted({(t, s, kinds[m]) for m, t, s in runs if kinds[m] is not None})
    pending_pre = []
    for t, s, kind in pre_runs:
        model = pretrained_path(exp, t, s, *kind)
        planned = exp.for_task(t, backbone=kind[1]).pretrain.updates  # with the overrides that apply to it
        d = model.parent
        state = _state(model, [d / "checkpoint.pt", d / "pretrain.csv"], now)
        pre.add(state)
        pre.work_planned += planned
        if state == "done":
            summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
            pre.work_done += _num(summary.get("updates", planned))
            if _num(summary.get("wall_time")) > 0:
                pre.rates.setdefault("pretrain", []).append(_num(summary.get("updates")) / _num(summary["wall_time"]))
        else:
            row = _last_row(d / "pretrain.csv")
            pre.work_done += _num(row.get("updates"))
            pending_pre.append(planned - _num(row.get("updates")))

    fin = out["finetune"]
    pending_fin = []
    for m, t, s in runs:
        d = run_dir(exp, m, t, s)
        planned = 0 if exp.method(m).algo == "none" else exp.method(m).online.env_steps
        state = _state(d / "summary.json", [d / "progress.csv", d / "checkpoint.pt"], now)
        fin.add(state)
        fin.work_planned += planned
        if state == "done":
            summary = json.loads((d / "summary.json").read_text())
            fin.work_done += _num(summary.get("env_steps"))
            if _num(summary.get("wall_time")) > 0 and planned:
                fin.rates.setdefault(m, []).append(_num(summary.get("env_steps")) / _num(summary["wall_time"]))
        else:
            row = _last_row(d / "progress.csv")
            fin.work_done += _num(row.get("env_steps"))
            if _num(row.get("wall_time")) > 0 and _num(row.get("env_steps")) > 0:
                fin.rates.setdefault(m, []).append(_num(row.get("env_steps")) / _num(row.get("wall_time")))
            pending_fin.append((m, max(planned - _num(row.get("env_steps")), 0.0)))

    def rate(st: RuleStatus, key: str) -> float | None:
        r = st.rates.get(key)
        return sum(r) / len(r) if r else None

    for left in pending_pre:
        r = rate(pre, "pretrain")
        if r:
            pre.remaining_s += left / r
        else:
            pre.unknown_eta += 1
    for m, left in pending_fin:
        r = rate(fin, m)
        if left == 0:
            continue
        if r:
            fin.remaining_s += left / r
        else:
            fin.unknown_eta += 1
    return out


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_status(exp: Any, st: dict[str, RuleStatus]) -> str:
    lines = [f"grid {exp.results}: jobs per rule (running = partial outputs written in the last "
             f"{RUNNING_WINDOW_S // 60} min; stopped = partial outputs, older: resumes when rerun)",
             f"{'rule':<10} {'done':>5} {'running':>8} {'stopped':>8} {'pending':>8}  progress"]
    for name, r in st.items():
        total = r.done + r.running + r.stopped + r.pending
        progress = ""
        if name in ("pretrain", "finetune") and r.work_planned:
            unit = "updates" if name == "pretrain" else "env steps"
            progress = (f"{r.work_done:,.0f} / {r.work_planned:,.0f} {unit} "
                        f"({100 * r.work_done / r.work_planned:.0f}%)")
        elif total:
            progress = f"{100 * r.done / total:.0f}% of {total} jobs"
        lines.append(f"{name:<10} {r.done:>5} {r.running:>8} {r.stopped:>8} {r.pending:>8}  {progress}")
    running = sum(r.running for r in st.values())
    waiting = {k: sum(getattr(r, k) for r in st.values()) for k in ("stopped", "pending")}
    remaining = sum(r.remaining_s for r in st.values())
    unknown = sum(r.unknown_eta for r in st.values())
    if not running and not any(waiting.values()):
        lines.append("every job of the grid is done")
        return "\n".join(lines)
    measured = "of compute for pretraining and finetuning at the measured throughput"
    if not running:  # no ETA: nothing progresses until Snakemake runs again
        line = (f"nothing is running now ({waiting['stopped']} job(s) stopped, {waiting['pending']} pending): start "
                "snakemake to continue" + (f"; left: about {_duration(remaining)} {measured}" if remaining else ""))
    elif remaining:
        line = f"ETA about {_duration(remaining / running)} {measured}, over {running} job(s) running now"
    elif unknown:
        line = f"{running} job(s) running; no ETA yet: no measured throughput for the methods of {unknown} job(s)"
    else:
        line = f"{running} job(s) running, with no pretraining or finetuning work left"
    if unknown and remaining:
        line += f"; {unknown} job(s) of methods with no measured throughput yet are not counted"
    lines.append(line + (" (behaviour and data jobs not included)" if remaining else ""))
    return "\n".join(lines)


def cmd_status(exp: Any) -> int:
    print(format_status(exp, grid_status(exp)))
    return 0
