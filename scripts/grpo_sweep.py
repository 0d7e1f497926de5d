"""The GRPO-DT sweep's table and figure (docs/grpo-tuning.md), from the runs the workflow made.

    python scripts/grpo_sweep.py --configfile config/quick.yaml config/hopper_cpu.yaml config/grpo_sweep.yaml

Reads the same merged config the workflow ran (config/config.yaml first, as the Snakefile does),
and for the base entry and each ablation entry on the ablation tasks: the final normalised score
(mean ± sample std over seeds, every seed listed), the clip fraction of each update epoch and the
fraction of ratio units that carried a gradient (means over every iteration and seed of the
``clip_frac_epoch<e>`` / ``grad_frac`` columns of progress.csv), updates and wall time per run.
Writes <results>/tables/grpo_sweep.md and <results>/figures/grpo_sweep.png (``--figure`` copies it).
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np

from dtrl.config.experiment import load_config
from dtrl.report.common import method_label
from dtrl.report.figures import _save
from dtrl.report.runs import expected_runs, load_runs
from dtrl.report.tables import _fmt_score, ablation_table


def epoch_columns(df, prefix: str) -> list[str]:
    cols = [c for c in df.columns if c.startswith(prefix)]
    return sorted(cols, key=lambda c: int(c[len(prefix):]))


def sweep_rows(exp, runs: dict) -> list[dict]:
    table = ablation_table(exp, runs).set_index("method")
    rows = []
    for m in table.index:
        mine = [r for (mm, t, _s), r in sorted(runs.items()) if mm == m and t in exp.grid.ablation_tasks]
        clip: dict[int, list[float]] = {}
        grad, updates, wall = [], [], []
        for r in mine:
            df = r.progress()
            if df is None or "policy_updates" not in df:
                continue
            trained = df[df["policy_updates"].fillna(0) > 0]  # iterations that made updates (not eval rows)
            for c in epoch_columns(trained, "clip_frac_epoch"):
                clip.setdefault(int(c[len("clip_frac_epoch"):]), []).extend(trained[c].dropna().tolist())
            if "grad_frac" in trained:
                grad.extend(trained["grad_frac"].dropna().tolist())
            updates.append(float(r.summary["grad_updates"]))
            wall.append(float(r.summary["wall_time"]))
        rows.append({
            "method": m, "changes": table.loc[m, "changes"],
            "scores": [r.score for r in mine], "seeds": [r.seed for r in mine],
            "mean": table.loc[m, "average_mean"], "std": table.loc[m, "average_std"],
            "n": int(table.loc[m, "average_seeds"]),
            "clip": {e: float(np.mean(v)) for e, v in sorted(clip.items())},
            "grad_frac": float(np.mean(grad)) if grad else math.nan,
            "updates": float(np.mean(updates)) if updates else math.nan,
            "wall": float(np.mean(wall)) if wall else math.nan,
        })
    return rows


def markdown(exp, rows: list[dict]) -> str:
    lines = [f"Final D4RL normalised score on {', '.join(exp.grid.ablation_tasks)}, mean ± sample std over seeds "
             f"{list(exp.grid.seeds)} (each seed's score in brackets; seed k finetunes pretrained DT k); clip fraction = ratios outside the clip "
             "range in update epoch 1, 2, ... (mean over iterations and seeds); gradient = fraction of ratio units "
             "whose clipped surrogate passed a gradient.", "",
             "| setting | changes | score | seeds | clip fraction per epoch | gradient | updates / run | s / run |",
             "|---|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        seeds = ", ".join(f"s{k}: {s:.1f}" for k, s in zip(r["seeds"], r["scores"]))
        clip = " / ".join(f"{v:.2f}" for v in r["clip"].values()) or "–"
        lines.append(f"| {method_label(exp, r['method'])} | {r['changes'] or '–'} | "
                     f"{_fmt_score(r['mean'], r['std'], r['n'])} | [{seeds}] | {clip} | {r['grad_frac']:.2f} | "
                     f"{r['updates']:.0f} | {r['wall']:.0f} |")
    return "\n".join(lines) + "\n"


def figure(exp, rows: list[dict], stem: Path) -> list[Path]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 0.32 * len(rows) + 1.6))
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(rows))[::-1]
    base = rows[0]["mean"] if rows else math.nan
    for yi, r in zip(y, rows):
        ax.errorbar(r["mean"], yi, xerr=r["std"] if r["n"] > 1 else None, fmt="o", color="C0", capsize=3)
        ax.scatter(r["scores"], [yi] * len(r["scores"]), s=12, color="0.4", zorder=3)
    ax.axvline(base, color="C3", lw=0.8, ls="--", label="base mean")
    ax.set_yticks(y, [r["method"] for r in rows], fontsize=8)
    ax.set_xlabel("final normalised score (mean ± std; dots: seeds)")
    ax.legend(fontsize=8, loc="lower right")
    for i, r in enumerate(rows):
        if r["clip"]:
            e = list(r["clip"])
            ax2.plot(e, list(r["clip"].values()), marker=".", lw=1, color=f"C{i % 10}", label=r["method"])
    ax2.set_xlabel("update epoch")
    ax2.set_ylabel("clip fraction")
    ax2.legend(fontsize=6, ncol=2)
    fig.suptitle(f"GRPO-DT sweep on {', '.join(exp.grid.ablation_tasks)} ({len(exp.grid.seeds)} seeds)", fontsize=10)
    return _save(fig, stem)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", nargs="+", required=True, help="the config files given to snakemake, in order")
    ap.add_argument("--figure", type=Path, help="also copy the PNG figure here (e.g. docs/grpo_sweep.png)")
    args = ap.parse_args(argv)
    exp = load_config([Path(__file__).resolve().parents[1] / "config" / "config.yaml", *args.configfile])
    root = Path(exp.results)
    runs, missing = load_runs(root / "runs", expected_runs(exp))
    rows = sweep_rows(exp, runs)
    text = markdown(exp, rows)
    if missing:
        text += f"\n{len(missing)} run(s) missing: {', '.join(f'{m}/{t}/seed{s}' for m, t, s in missing)}\n"
    out = root / "tables" / "grpo_sweep.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    png = [p for p in figure(exp, rows, root / "figures" / "grpo_sweep") if p.suffix == ".png"][0]
    if args.figure:
        shutil.copyfile(png, args.figure)
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
