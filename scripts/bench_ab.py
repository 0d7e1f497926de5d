"""Paired A/B throughput of two checkouts: run the same benchmark command in each, alternating A B A B.

    python scripts/bench_ab.py --a ../base --b . --pairs 3 -- scripts/bench_pretrain.py --layers 2 --embed 64 \\
        --heads 2 --context 10 --batch 64 --threads 1 --updates 300 --warmup 20 --trajectories 50 --length 1000

Each run is ``python <command>`` with the checkout as working directory and first on PYTHONPATH, so each
side times its own code with its own copy of the script. ``--clock cpu`` runs the script with
``time.perf_counter`` replaced by ``time.process_time`` (both sides alike), so its rates are per second of the
process's CPU time: on a machine shared with other jobs that removes the time spent waiting for a core,
which wall-clock rates include (the scripts time one torch thread, so CPU time is the compute the update took). The first number after ``--metric`` (default
``updates/s``; ``odt DT updates/s`` for bench_online_updates.py) in each run's output is taken. On a
shared machine the alternation spreads other load over both sides; the medians and their ratio are printed
with every pair.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path


CPU_CLOCK = ("import runpy, sys, time; time.perf_counter = time.process_time; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_once(checkout: Path, command: list[str], metric: str, clock: str = "wall") -> float:
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS="1")
    argv = [sys.executable, *command] if clock == "wall" else [sys.executable, "-c", CPU_CLOCK, *command]
    out = subprocess.run(argv, cwd=checkout, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{checkout}: {' '.join(command)} failed:\n{out.stderr[-2000:]}")
    m = re.search(re.escape(metric) + r"\s+([0-9.]+)", out.stdout)
    if m is None:
        raise SystemExit(f"{checkout}: no '{metric} <number>' in the output:\n{out.stdout[-2000:]}")
    return float(m.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, type=Path, help="checkout A (the baseline)")
    p.add_argument("--b", required=True, type=Path, help="checkout B (the change)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--metric", default="updates/s")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="the scripts' timer: wall clock, or the process's CPU time (see above)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- script.py args... (run in each checkout)")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.pairs < 1:
        p.error("give --pairs >= 1 and a command after --")
    a_rates, b_rates = [], []
    for i in range(args.pairs):
        a_rates.append(run_once(args.a.resolve(), command, args.metric, args.clock))
        b_rates.append(run_once(args.b.resolve(), command, args.metric, args.clock))
        print(f"pair {i + 1}: A {a_rates[-1]:.2f}  B {b_rates[-1]:.2f}  B/A {b_rates[-1] / a_rates[-1]:.2f}", flush=True)
    ma, mb = statistics.median(a_rates), statistics.median(b_rates)
    print(f"median {args.metric}: A {ma:.2f}  B {mb:.2f}  B/A {mb / ma:.2f}  ({args.pairs} pairs, A B alternating, {args.clock} clock)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
