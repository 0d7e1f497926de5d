"""Grid throughput with k jobs sharing one GPU: what `jobs_per_gpu` (workflow/profiles/local-gpu) should be.

    python scripts/bench_jobs_per_gpu.py --k 1 2 4 8 -- --device cuda --layers 3 --embed 128 --batch 256 \
        --amp bf16 --updates 300
    python scripts/bench_jobs_per_gpu.py --k 1 2 4 --command "python -m dtrl.cli finetune --method odt \
        --task hopper-medium --seed {i} --out /tmp/jpg/k{k}/{i} --config config/quick.yaml --set device=cuda"

For each k, k copies of one job are started at once and the wall time until the last one ends is
taken; the grid's throughput is k jobs per that wall time. The default job is a DT pretraining of
`scripts/bench_pretrain.py` (synthetic data, so nothing has to be generated first; arguments after
`--` go to it) and each job's own `updates/s` is read from its output, so the table also shows the
updates/s summed over the k jobs. `--command` times any other job (a real `dtrl finetune` run, an
ODT run); `{i}` (job index) and `{k}` are filled in. With CUDA MPS running (nvidia-cuda-mps-control
-d) the jobs' kernels run concurrently; without it they are time-sliced; measure both if you can.
Each job gets `--threads` CPU threads (default: the cores divided by k, at least 1) through
OMP_NUM_THREADS and, for the default job, --threads.

Rows: k, wall seconds, jobs/hour, speedup over the first k given, summed and per-job updates/s (default job).
The best k is the one with the most jobs/hour; the last line is the table as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UPDATES = re.compile(r"^updates/s ([0-9.]+)", re.M)


def job_commands(args, k: int) -> list[list[str]]:
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // k)
    if args.command:
        return [shlex.split(args.command.format(i=i, k=k)) for i in range(k)]
    extra = list(args.job_args)
    if "--threads" not in extra:
        extra += ["--threads", str(threads)]
    return [[sys.executable, str(REPO / "scripts" / "bench_pretrain.py"), *extra] for _ in range(k)]


def run_k(args, k: int) -> dict:
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // k)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in job_commands(args, k)]
    outs = [p.communicate()[0] for p in procs]
    wall = round(time.perf_counter() - t0, 3)  # jobs/hour below is computed from the wall time as reported
    for i, (p, out) in enumerate(zip(procs, outs)):
        if p.returncode != 0:
            raise SystemExit(f"job {i} of k={k} failed (exit {p.returncode}):\n{out[-3000:]}")
    rates = [float(m.group(1)) for out in outs for m in [UPDATES.search(out)] if m]
    row = {"k": k, "threads_per_job": threads, "wall_s": wall, "jobs_per_hour": round(3600 * k / wall, 2)}
    if len(rates) == k:
        row["updates_per_s_sum"] = round(sum(rates), 2)
        row["updates_per_s_per_job"] = round(sum(rates) / k, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, job_args = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="jobs per GPU to time")
    p.add_argument("--command", default="", help="job command line ({i} = job index, {k}); default: bench_pretrain")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per job (0 = cores / k)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    args.job_args = job_args
    if any(k < 1 for k in args.k):
        p.error("--k values must be >= 1")
    rows = []
    print(f"job: {args.command or 'scripts/bench_pretrain.py ' + ' '.join(job_args)}; cores {len(os.sched_getaffinity(0))}",
          flush=True)
    print(f"{'k':>3} {'threads':>7} {'wall s':>8} {'jobs/h':>9} {'speedup':>7} {'upd/s sum':>10} {'upd/s job':>10}")
    for k in args.k:
        row = run_k(args, k)
        rows.append(row)
        row["speedup"] = round(row["jobs_per_hour"] / rows[0]["jobs_per_hour"], 2)  # over the first k
        print(f"{k:>3} {row['threads_per_job']:>7} {row['wall_s']:>8.2f} {row['jobs_per_hour']:>9.1f} "
              f"{row['speedup']:>7.2f} {row.get('updates_per_s_sum', float('nan')):>10.2f} "
              f"{row.get('updates_per_s_per_job', float('nan')):>10.2f}", flush=True)
    best = max(rows, key=lambda r: r["jobs_per_hour"])
    print(f"best k = {best['k']} ({best['jobs_per_hour']:.1f} jobs/h)")
    if args.json:
        from dtrl.util.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
