"""Throughput of DT pretraining updates (sampling + forward + backward + optimizer), as `dtrl pretrain` runs them.

    python scripts/bench_pretrain.py --device cuda --layers 4 --embed 512 --context 20 --batch 256 \
        --updates 200 --amp bf16

Uses a synthetic hopper-sized dataset (obs 11, act 3 by default; 1000 trajectories of 1000 steps
would be D4RL's size, 200 x 1000 is plenty for timing). Warm-up updates run first and the device is
synchronised around the timed loop, so the number is steady-state updates/s. Also prints the
sampler alone and the update alone (one batch reused), which shows which of the two limits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtrl.models.batching import ContextSampler  # noqa: E402
from dtrl.data.trajectories import Trajectory, TrajectoryDataset  # noqa: E402
from dtrl.models.dt import ModelConfig  # noqa: E402
from dtrl.harness.pretrain import SupervisedTrainer, build_dt  # noqa: E402
from dtrl.config.pretrain import PretrainConfig  # noqa: E402
from dtrl.tasks import get_task  # noqa: E402


def synthetic_dataset(n_traj: int, length: int, obs_dim: int, act_dim: int, seed: int = 0) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    trajs = []
    for _ in range(n_traj):
        obs = rng.normal(size=(length, obs_dim)).astype(np.float32)
        act = rng.uniform(-1, 1, size=(length, act_dim)).astype(np.float32)
        trajs.append(Trajectory(obs, act, rng.random(length).astype(np.float32), np.zeros(length, bool),
                                np.zeros(length, bool)))
    return TrajectoryDataset(trajs, source="synthetic")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn, n: int, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return n / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> float:
    """Parse ``argv``, time, print the two lines; return the steady-state updates/s."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--embed", type=int, default=512)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=20)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--updates", type=int, default=50, help="timed updates")
    p.add_argument("--warmup", type=int, default=10, help="untimed updates first")
    p.add_argument("--amp", choices=["off", "bf16"], default="off")
    p.add_argument("--optimizer", choices=["lamb", "adamw"], default="lamb")
    p.add_argument("--compile", choices=["off", "default", "reduce-overhead"], default=PretrainConfig().compile,
                   help="torch.compile mode of forward+loss on CUDA (pretrain.compile; default: its default)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--obs-dim", type=int, default=11)
    p.add_argument("--act-dim", type=int, default=3)
    p.add_argument("--trajectories", type=int, default=200)
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile N updates (one batch reused) and print the self CPU ms per update of the "
                        "matmuls, the random draws (dropout masks) and the 12 costliest ops")
    args = p.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    ds = synthetic_dataset(args.trajectories, args.length, args.obs_dim, args.act_dim)
    cfg = ModelConfig(embed_dim=args.embed, n_layers=args.layers, n_heads=args.heads, dropout=args.dropout,
                      context_len=args.context, eval_context_len=min(5, args.context))
    model = build_dt(cfg, get_task("hopper-medium"), ds).to(device).train()
    trainer = SupervisedTrainer(model, optimizer=args.optimizer, warmup_updates=100,
                                amp_dtype=torch.bfloat16 if args.amp == "bf16" else None, compile=args.compile)
    sampler = ContextSampler(ds.trajectories, args.context, device=device, rng=np.random.default_rng(0))
    n_params = sum(p.numel() for p in model.parameters())

    def full_step():
        trainer.update(sampler.sample(args.batch))

    t = time.perf_counter()
    for _ in range(args.warmup):
        full_step()
    sync(device)
    warm_s = time.perf_counter() - t
    ups = rate(full_step, args.updates, device)
    batch = sampler.sample(args.batch)
    step_only = rate(lambda: trainer.update(batch), max(args.updates // 2, 1), device)
    samples = rate(lambda: sampler.sample(args.batch), 200, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"device {name}; torch {torch.__version__}; {n_params / 1e6:.2f}M params; layers {args.layers} "
          f"embed {args.embed} heads {args.heads} K {args.context} batch {args.batch} amp {args.amp} "
          f"optimizer {args.optimizer} compile {trainer.compile}")
    print(f"updates/s {ups:.2f}  (update alone {step_only:.2f}/s, sampler alone {samples:.0f} batches/s; "
          f"{args.updates} timed updates after {args.warmup} warm-up updates "
          f"taking {warm_s:.1f}s)")
    if args.profile > 0:
        profile_update(lambda: trainer.update(batch), args.profile)
    return ups


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
RANDOM_OPS = ("aten::random_", "aten::bernoulli_", "aten::uniform_", "aten::normal_")


def profile_update(step, n: int) -> None:
    """Self CPU time per update by op (torch.profiler): what an update's time goes to, on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    ms = {e.key: e.self_cpu_time_total / n / 1e3 for e in prof.key_averages()}
    total = sum(ms.values())
    mm, rnd = sum(ms.get(k, 0.0) for k in MATMUL_OPS), sum(ms.get(k, 0.0) for k in RANDOM_OPS)
    print(f"profile ({n} updates, self CPU ms per update): total {total:.2f}; matmuls {mm:.2f}; random draws "
          f"{rnd:.2f}; everything else {total - mm - rnd:.2f}")
    for key, v in sorted(ms.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {key:44s} {v:7.3f}")


if __name__ == "__main__":
    sys.exit(main())
