"""Learning curves of GRPO-DT against the pretrained DT, with and without hindsight relabeling.

    python scripts/grpo_curve.py --pretrained results/pretrain/hopper-medium/seed0/model.pt \\
        --task hopper-medium --budget 2000000 --eval-every 100000 --device cuda --out results/curves/hopper-medium

Runs, on one pretrained checkpoint and task, each variant under the real online harness
(``dtrl.workflow.finetune.finetune``; resumable, one run dir per variant and seed under ``--out``):

  pretrained     the checkpoint evaluated without finetuning (method ``none``)
  grpo           GRPO-DT, the paper's method (relabel: false)
  grpo_relabel   the same with ODT's hindsight RTG relabeling in the learner (relabel: true)

and prints a table of training env steps vs D4RL-normalised evaluation return (mean over seeds),
then each variant's budget (env steps, gradient updates) and the ratio diagnostics that show the
relabeling pathology. ``--param key=value`` sets a GRPO config field for both GRPO variants;
``--config``/``--set`` work as for the ``dtrl`` CLI. ``--task-override key=value`` derives a task
(e.g. ``max_episode_steps=100``) registered as ``--task-name`` for this process.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import yaml

from dtrl.config.experiment import deep_merge, load_config, parse_overrides
from dtrl.workflow.finetune import finetune
from dtrl.tasks import get_task, register_task, with_overrides

VARIANTS = {"pretrained": ("none", {}), "grpo": ("grpo", {"relabel": False}),
            "grpo_relabel": ("grpo", {"relabel": True})}


def parse_kv(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"'{item}' must look like key=value")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def read_curve(run: Path, key: str) -> tuple[list[tuple[int, float]], list[dict]]:
    with open(run / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    evals = [(int(r["env_steps"]), float(r[key])) for r in rows if r.get(key) and not r.get("final")]
    return evals, [r for r in rows if not r.get("final")]


def at_milestone(evals: list[tuple[int, float]], m: int) -> float:
    """The evaluation the harness made for milestone ``m``: the first one at or after ``m`` env steps."""
    later = [v for s, v in evals if s >= m]
    return later[0] if later else float("nan")


def col(rows: list[dict], key: str) -> np.ndarray:
    vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return np.array([v for v in vals if math.isfinite(v)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", type=Path, required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budget", type=int, default=1_000_000, help="training env steps per run")
    p.add_argument("--eval-every", type=int, default=100_000, help="env steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--raw", action="store_true", help="tabulate raw returns instead of normalised ones")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--device", default="auto")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="GRPO config field")
    p.add_argument("--config", "-c", type=Path, action="append", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--task-override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the task's env family (max_episode_steps, eval_rtg, online_rtg, ...)")
    p.add_argument("--task-name", default=None, help="name of the derived task (default: TASK-custom)")
    args = p.parse_args()

    task_name = args.task
    if args.task_override:
        name = args.task_name or f"{args.task}-custom"
        register_task(dataclasses.replace(with_overrides(get_task(args.task), **parse_kv(args.task_override)),
                                          name=name))
        task_name = name
    task = get_task(task_name)
    params = parse_kv(args.param)
    key, final_key = ("eval_return", "final_return") if args.raw else ("eval_norm_return", "final_norm_return")
    base = {"device": args.device, "grid": {"methods": ["none"], "tasks": [args.task]},
            "eval": {"episodes": args.eval_episodes, "final_episodes": args.eval_episodes},
            "online": {"env_steps": args.budget, "eval_every_env_steps": args.eval_every, "progress": False},
            "methods": {v: {"algo": algo, **({**params, **extra} if algo == "grpo" else {})}
                        for v, (algo, extra) in VARIANTS.items()}}
    exp = load_config(args.config, deep_merge(base, parse_overrides(args.overrides)))

    summaries: dict[str, list[dict]] = {v: [] for v in args.variants}
    curves: dict[str, list] = {v: [] for v in args.variants}
    rows_of: dict[str, list] = {v: [] for v in args.variants}
    for seed in args.seeds:
        for v in args.variants:
            out = args.out / v / f"seed{seed}"
            print(f"[grpo_curve] {v} seed {seed} -> {out}", file=sys.stderr, flush=True)
            s = finetune(exp, v, task_name, seed, pretrained=args.pretrained, out=out)
            summaries[v].append(s)
            if v != "pretrained":
                evals, rows = read_curve(out, key)
                curves[v].append(evals)
                rows_of[v] += rows

    milestones = list(range(0, args.budget + 1, args.eval_every))
    print(f"\n{task.name}: {'raw' if args.raw else 'normalised'} return vs training env steps (mean over seeds "
          f"{args.seeds}; {args.eval_episodes} eval episodes each). Row m shows the first evaluation at or after m "
          f"steps (the harness evaluates after the first iteration, so row 0 is one iteration in).")
    print(f"{'env_steps':>10} " + " ".join(f"{v:>13}" for v in args.variants))
    pre = np.mean([s[final_key] for s in summaries["pretrained"]]) if "pretrained" in summaries else float("nan")
    for m in milestones:
        cells = []
        for v in args.variants:
            val = pre if v == "pretrained" else np.mean([at_milestone(c, m) for c in curves[v]])
            cells.append(f"{val:>13.2f}")
        print(f"{m:>10} " + " ".join(cells))
    print(f"{'final':>10} " + " ".join(f"{np.mean([s[final_key] for s in summaries[v]]):>13.2f}"
                                       for v in args.variants))

    print(f"\n{'variant':<13} {'final':>7} {'env_steps':>10} {'updates':>8} {'ratio_dev0':>10} {'clip_frac':>9} "
          f"{'|logr|max':>9} {'approx_kl':>9}")
    for v in args.variants:
        ss, rows = summaries[v], rows_of[v]
        line = (f"{v:<13} {np.mean([s[final_key] for s in ss]):>7.2f} "
                f"{int(np.mean([s['env_steps'] for s in ss])):>10} {int(np.mean([s['grad_updates'] for s in ss])):>8}")
        if rows:
            line += (f" {col(rows, 'ratio_first_absdev').mean():>10.3g} {col(rows, 'clip_frac').mean():>9.3f} "
                     f"{col(rows, 'log_ratio_absmax').max():>9.3g} {col(rows, 'approx_kl').mean():>9.3g}")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
