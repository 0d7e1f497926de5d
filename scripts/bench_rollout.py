"""Rollout throughput: the batched RolloutEngine vs one env at a time, with the same DT policy.

    python scripts/bench_rollout.py --device cpu --layers 3 --embed 128 --context-len 20 --envs 64 128
    python scripts/bench_rollout.py --device cuda --layers 4 --embed 512 --envs 64 128 256 512
    python scripts/bench_rollout.py --device cuda --envs 256 --workers 7 15 --no-record   # 16 cores

Rows (env steps per second, sampled actions from env resets at the task's online RTG):
  sequential      one env at a time (RolloutEngine with 1 env, episode after episode)
  batched N       N envs stepped together, one batched DT forward per step
  batched+rec N   the same, also recording simulator states and contexts (what GRPO-DT's rollouts do)
  env-only N      the N envs stepped with random actions and no model: the Python/MuJoCo ceiling
  batched+rec wW N  batched+rec with the envs stepped in W worker processes (--workers; dtrl.envs.workers)
  env-only xC N   the all-cores ceiling: C processes (--ceiling-procs, default every core) each step
                  N/C envs with random actions at the same time, no model; steps/s is their sum
The task defaults to halfcheetah, which never terminates early, so every env runs all --steps.
MuJoCo's compile-time warnings (halfcheetah's deprecated 'settotalmass') are silenced while envs are made.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import time

import numpy as np
import torch

from dtrl.envs.make import env_dims, make_env
from dtrl.models.dt import DecisionTransformer, ModelConfig
from dtrl.harness.rollout import RolloutEngine, Start
from dtrl.tasks import get_task


@contextlib.contextmanager
def quiet_stderr():
    """Silence C-level stderr (MuJoCo prints a compiler warning per halfcheetah env)."""
    fd = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)


def build(args, task) -> DecisionTransformer:
    with quiet_stderr():
        obs_dim, act_dim = env_dims(task)
    cfg = ModelConfig(embed_dim=args.embed, n_layers=args.layers, n_heads=args.heads, dropout=0.0,
                      context_len=args.context_len, eval_context_len=args.act_context or args.context_len)
    torch.manual_seed(0)
    return DecisionTransformer(obs_dim, act_dim, cfg, reward_scale=task.reward_scale).to(args.device).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_engine(model, task, n_envs: int, episodes: int, steps: int, args, record: bool,
                workers: int = 0) -> tuple[int, float]:
    with quiet_stderr():
        eng = RolloutEngine(task, n_envs, model.cfg.context_len, args.device, seed=0, workers=workers)
    k = model.cfg.eval_context_len
    starts = [Start(target_rtg=task.online_rtg, seed=i) for i in range(n_envs)]
    eng.run(model, starts, 0, max_steps=min(steps, 5), sample_all=True, context_len=k)  # warm-up
    total, t0 = 0, None
    sync(args.device)
    t0 = time.perf_counter()
    for lo in range(0, episodes, n_envs):
        batch = [Start(target_rtg=task.online_rtg, seed=1000 + i) for i in range(lo, min(episodes, lo + n_envs))]
        out = eng.run(model, batch, 0, max_steps=steps, sample_all=True, context_len=k,
                      record_sim_states=record, record_contexts=record)
        total += sum(len(t) for t in out)
    sync(args.device)
    dt = time.perf_counter() - t0
    eng.env_set.close()
    return total, dt


def time_env_only(task, n_envs: int, steps: int, start_at: float = 0.0) -> tuple[int, float]:
    with quiet_stderr():
        envs = [make_env(task, seed=i) for i in range(n_envs)]
    rng = np.random.default_rng(0)
    act_dim = envs[0].action_space.shape[0]
    for i, e in enumerate(envs):
        e.reset(seed=i)
    total = 0
    time.sleep(max(0.0, start_at - time.time()))  # the all-cores ceiling starts every process together
    t0 = time.perf_counter()
    for _ in range(steps):
        acts = rng.uniform(-1, 1, size=(n_envs, act_dim))
        for e, a in zip(envs, acts):
            _, _, term, _, _ = e.step(a)
            total += 1
            if term:
                e.reset()
    return total, time.perf_counter() - t0


def time_env_only_all_cores(task, n_envs: int, steps: int, procs: int) -> tuple[int, float]:
    """(steps, seconds) such that steps / seconds is the summed rate of ``procs`` processes stepping at once."""
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    sizes = [n_envs * (k + 1) // procs - n_envs * k // procs for k in range(procs)]
    start_at = time.time() + 2.0 + 0.2 * procs  # after every process has made its envs
    with ctx.Pool(procs) as pool:
        res = pool.starmap(time_env_only, [(task, m, steps, start_at) for m in sizes if m > 0])
    total = sum(n for n, _ in res)
    rate = sum(n / dt for n, dt in res)
    return total, total / rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="halfcheetah-medium")
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--context-len", type=int, default=20, help="model context K")
    p.add_argument("--act-context", type=int, default=0, help="context the policy acts with (0 = K)")
    p.add_argument("--envs", type=int, nargs="+", default=[64, 128], help="batched env counts to time")
    p.add_argument("--steps", type=int, default=200, help="steps per episode (max_steps)")
    p.add_argument("--sequential-episodes", type=int, default=4, help="episodes of the one-env loop")
    p.add_argument("--no-record", action="store_true", help="skip the batched+rec rows")
    p.add_argument("--no-env-only", action="store_true", help="skip the env-only rows")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--workers", type=int, nargs="*", default=[],
                   help="env worker process counts to time (batched+rec rows with dtrl.envs.workers)")
    p.add_argument("--ceiling-procs", type=int, default=0,
                   help="processes of the all-cores env-only ceiling (0 = the cores this process may use)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task = get_task(args.task)
    model = build(args, task)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"task {task.name}  device {args.device}  model {args.layers}x{args.embed} (heads {args.heads}, "
          f"K {args.context_len}, acting context {model.cfg.eval_context_len}, {n_params / 1e6:.2f}M params)  "
          f"{args.steps} steps/episode  torch threads {torch.get_num_threads()}")
    procs = args.ceiling_procs or len(os.sched_getaffinity(0))
    rows = []
    n, dt = time_engine(model, task, 1, args.sequential_episodes, args.steps, args, record=False)
    base = n / dt
    rows.append(("sequential", 1, n, dt))
    for N in args.envs:
        rows.append(("batched", N, *time_engine(model, task, N, N, args.steps, args, record=False)))
        if not args.no_record:
            rows.append(("batched+rec", N, *time_engine(model, task, N, N, args.steps, args, record=True)))
        for W in args.workers:
            rows.append((f"batched+rec w{W}", N, *time_engine(model, task, N, N, args.steps, args, record=True,
                                                             workers=W)))
        if not args.no_env_only:
            rows.append(("env-only", N, *time_env_only(task, N, args.steps)))
            rows.append((f"env-only x{procs}", N, *time_env_only_all_cores(task, N, args.steps, procs)))
    print(f"{'mode':<16} {'envs':>5} {'steps':>8} {'seconds':>8} {'steps/s':>9} {'x seq':>6}")
    for mode, N, n, dt in rows:
        print(f"{mode:<16} {N:>5} {n:>8} {dt:>8.2f} {n / dt:>9.0f} {n / dt / base:>6.1f}")


if __name__ == "__main__":
    main()
