"""An external baseline, as a method from another codebase would plug into dtrl: a uniformly random
policy that writes the run contract (docs/CONTRACTS.md). Use it as the template of your own script.

    methods:
      random_policy:
        algo: external
        command: "python scripts/external_random_baseline.py --name {method} --task {task} --seed {seed}
                  --out {out} --env-steps {env_steps} --eval-episodes {eval_episodes}"

It only needs Gymnasium for the env; dtrl.tasks is imported for the env id, the time limit and the
D4RL normalisation a summary must report (any codebase can compute the same from `dtrl tasks --json`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from dtrl.tasks import get_task

COLUMNS = ["iteration", "env_steps", "env_steps_eval", "policy_updates", "critic_updates", "grad_updates", "eval_return", "eval_norm_return",
           "wall_time", "env_steps_per_s", "updates_per_s"]


def episode(env, rng, max_steps: int, seed: int) -> tuple[float, int]:
    env.reset(seed=seed)
    total, steps = 0.0, 0
    while steps < max_steps:
        _, r, terminated, _, _ = env.step(rng.uniform(env.action_space.low, env.action_space.high))
        total, steps = total + float(r), steps + 1
        if terminated:
            break
    return total, steps


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--env-steps", type=int, default=2000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--name", default="random_policy", help="the method entry's name (summary.json 'method')")
    args = p.parse_args()

    task = get_task(args.task)
    env = gym.make(task.env_id).unwrapped  # the time limit is the task's, applied below
    rng = np.random.default_rng(args.seed)
    t0, steps, eval_steps, rows = time.perf_counter(), 0, 0, []

    def evaluate(n: int, first_seed: int) -> list[float]:
        nonlocal eval_steps
        out = []
        for k in range(n):
            ret, length = episode(env, rng, task.max_episode_steps, first_seed + k)
            out.append(ret)
            eval_steps += length
        return out

    next_eval = args.eval_every
    while steps < args.env_steps:  # "training": random episodes, counted against the budget
        steps += episode(env, rng, min(task.max_episode_steps, args.env_steps - steps), 1_000_000 + steps)[1]
        row = {"iteration": len(rows) + 1, "env_steps": steps, "env_steps_eval": eval_steps,
               "policy_updates": 0, "critic_updates": 0, "grad_updates": 0,
               "wall_time": round(time.perf_counter() - t0, 3)}
        if steps >= next_eval:
            r = evaluate(2, args.seed * 1000)
            row.update(eval_return=float(np.mean(r)), eval_norm_return=float(np.mean(task.normalize(np.array(r)))))
            next_eval += args.eval_every
        rows.append(row)
    final = evaluate(args.eval_episodes, args.seed * 1000 + 10_000)
    norm = task.normalize(np.array(final))
    rows.append({"iteration": len(rows), "env_steps": steps, "env_steps_eval": eval_steps,
               "policy_updates": 0, "critic_updates": 0, "grad_updates": 0,
                 "eval_return": float(np.mean(final)), "eval_norm_return": float(np.mean(norm)),
                 "wall_time": round(time.perf_counter() - t0, 3)})

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "progress.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows([{c: r.get(c, "") for c in COLUMNS} for r in rows])
    os.replace(args.out / "progress.csv.tmp", args.out / "progress.csv")
    summary = {"method": args.name, "algo": "external", "task": args.task, "seed": args.seed,
               "final_return": float(np.mean(final)), "final_norm_return": float(np.mean(norm)),
               "final_norm_return_std": float(np.std(norm)), "final_returns": final,
               "eval_episodes": args.eval_episodes, "env_steps": steps, "env_steps_eval": eval_steps,
               "policy_updates": 0, "critic_updates": 0, "grad_updates": 0, "wall_time": time.perf_counter() - t0, "iterations": len(rows) - 1,
               "budget_env_steps": args.env_steps}
    write_atomic(args.out / "summary.json", json.dumps(summary, indent=2))  # last: marks the run complete


if __name__ == "__main__":
    main()
