#!/usr/bin/env python
"""Time the full D4RL-recipe generation of one task: SAC behaviour run + dataset rollout.

    python scripts/bench_data.py --task hopper-medium --transitions 1000000 --sac-steps 1000000 --device cuda

Everything is written to a fresh folder (a temporary one unless --results is given), so nothing
cached is reused. Prints SAC env steps/s and updates/s, rollout env steps/s, the return SAC
reached, the dataset summary and the total wall time; the last line is the same as JSON.
Extra config keys go through --set (e.g. --set data.generator.sac_envs=16).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="hopper-medium")
    p.add_argument("--transitions", type=int, default=None, help="data.generator.transitions")
    p.add_argument("--sac-steps", type=int, default=None, help="data.generator.sac_steps")
    p.add_argument("--sac-envs", type=int, default=None, help="data.generator.sac_envs")
    p.add_argument("--device", default=None, help="data.generator.device (auto, cpu, cuda)")
    p.add_argument("--config", type=Path, default=None, help="experiment YAML to start from")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--results", type=Path, default=None, help="results root (default: a fresh temporary folder)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)

    from dtrl.data.cli import cmd_data
    from dtrl.data.generate import load_behaviour_metadata
    from dtrl.config.experiment import deep_merge, load_config, parse_overrides
    from dtrl.util.io import read_json
    from dtrl.tasks import get_task

    task = get_task(args.task)
    results = args.results or Path(tempfile.mkdtemp(prefix="dtrl-bench-data-"))
    gen: dict = {}
    for key, value in (("transitions", args.transitions), ("sac_steps", args.sac_steps),
                       ("sac_envs", args.sac_envs), ("device", args.device)):
        if value is not None:
            gen[key] = value
    if args.no_progress:
        gen["progress"] = False
    over = deep_merge(parse_overrides(args.overrides), {"results": str(results), "threads": args.threads,
                                                         "data": {"generator": gen}})
    exp = load_config(args.config, over)

    t0 = time.perf_counter()
    rc = cmd_data(exp, task.name, None)
    total = time.perf_counter() - t0
    if rc != 0:
        return rc
    summary = read_json(Path(exp.results) / "data" / f"{task.name}.json")
    beh = load_behaviour_metadata(exp, task.family.name) or {}
    out = {"task": task.name, "device": beh.get("device", "cpu"), "total_s": round(total, 1),
           "transitions": summary["transitions"], "episodes": summary["episodes"],
           "normalized_mean": summary["normalized_mean"], "generator": summary.get("generator")}
    if beh:
        out.update(sac_steps=beh["sac_steps_done"], sac_updates=beh["sac_updates"], sac_s=round(beh["wall_time_s"], 1),
                   sac_env_steps_per_s=round(beh["env_steps_per_s"] or 0), sac_updates_per_s=round(beh["updates_per_s"] or 0),
                   sac_env_time_s=round(beh["env_time_s"], 1), sac_update_time_s=round(beh["update_time_s"], 1),
                   medium_step=beh["medium"]["sac_steps"], medium_return=beh["medium"]["eval_return"],
                   medium_reached=beh["medium"]["reached"], eval_curve=beh["eval_curve"])
    rollout_s = total - out.get("sac_s", 0.0)
    out["rollout_and_io_s"] = round(rollout_s, 1)
    if task.quality != "medium-replay":
        out["rollout_env_steps_per_s"] = round(summary["transitions"] / max(rollout_s, 1e-9))
    print("\n== bench_data ==")
    if beh:
        print(f"SAC ({out['device']}): {out['sac_steps']} env steps, {out['sac_updates']} updates in {out['sac_s']} s "
              f"-> {out['sac_env_steps_per_s']} env steps/s, {out['sac_updates_per_s']} updates/s "
              f"(env {out['sac_env_time_s']} s, updates {out['sac_update_time_s']} s); medium at step "
              f"{out['medium_step']} (eval return {out['medium_return']:.1f}, reached: {out['medium_reached']})")
    print(f"rollout + writing: {out['rollout_and_io_s']} s"
          + (f" -> {out['rollout_env_steps_per_s']} env steps/s" if "rollout_env_steps_per_s" in out else ""))
    print(f"total: {out['total_s']} s for {task.name} ({out['transitions']} transitions, normalised mean "
          f"{out['normalized_mean']:.1f}); results in {results}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
