"""Online update throughput of ODT and ODT+TD3 beside DT pretraining at the same model size and batch.

    python scripts/bench_online_updates.py --device cuda --layers 4 --embed 512 --heads 4 --batch 256 \
        --updates 300 --warmup 30

Each method is built as `dtrl finetune` builds it (its Config defaults: LAMB, bf16 and compile on
CUDA, ODT+TD3's critic and target DT), with a replay buffer seeded from a synthetic hopper-sized
dataset and a freshly initialised DT standing in for the pretrained one; its `_update_many`
(one iteration's gradient updates, no env steps) is timed after warm-up updates, with the device
synchronised around the timed call. The pretraining row is scripts/bench_pretrain.py run with the
same size and batch (bf16, pretrain.compile's default), and the last lines give each online rate as
a fraction of it. Issue 13's target: ODT at >= 90% of the pretraining updates/s. ODT+TD3 counts its
DT updates; each also makes policy_delay critic minibatches (a critic step with a target-DT
forward), so its minibatches/s are printed beside them.

On CPU, with a tiny model (compile and bf16 are CUDA-only, so CPU rows time the eager loop):

    python scripts/bench_online_updates.py --device cpu --layers 1 --embed 32 --heads 1 --batch 32 \
        --updates 300 --warmup 20 --trajectories 50 --length 200 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_pretrain  # noqa: E402
from dtrl.models.checkpoint import dt_payload  # noqa: E402
from dtrl.config import from_dict  # noqa: E402
from dtrl.util.io import atomic_torch_save  # noqa: E402
from dtrl.config.registry import get_algorithm  # noqa: E402
from dtrl.models.dt import ModelConfig  # noqa: E402
from dtrl.harness.online import build_context  # noqa: E402
from dtrl.config.online import EvalConfig  # noqa: E402
from dtrl.harness.pretrain import build_dt  # noqa: E402
from dtrl.tasks import get_task  # noqa: E402

HEADS = {"odt": "gaussian", "odt_td3": "deterministic"}


def time_method(algo: str, args, ds, tmp: Path) -> tuple[float, dict]:
    task = get_task(args.task)
    device = torch.device(args.device)
    cfg = ModelConfig(embed_dim=args.embed, n_layers=args.layers, n_heads=args.heads, dropout=0.1,
                      context_len=args.context, eval_context_len=min(5, args.context), action_head=HEADS[algo])
    torch.manual_seed(0)
    path = atomic_torch_save(tmp / f"{algo}.pt", {"dt": dt_payload(build_dt(cfg, task, ds)), "task": task.name,
                                                  "seed": 0, "updates": 0})
    ctx = build_context(task, 0, device, ds, path, tmp / algo, EvalConfig())
    cls = get_algorithm(algo)
    params = {"batch_size": args.batch, "continue_pretrain_optimizer": False}
    if args.compile is not None:
        params["compile"] = args.compile
    if args.sampler is not None:
        params["sampler"] = args.sampler
    if algo == "odt_td3":
        params["critic_warmup_updates"] = 0
    method = cls(from_dict(cls.Config, params), ctx)
    method._update_many(args.warmup)
    bench_pretrain.sync(device)
    before = ctx.counters.policy_updates, ctx.counters.critic_updates
    t = time.perf_counter()
    method._update_many(args.updates)
    bench_pretrain.sync(device)
    dt = time.perf_counter() - t
    return args.updates / dt, {"critic minibatches/s": (ctx.counters.critic_updates - before[1]) / dt}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--task", default="hopper-medium", help="task whose dims, reward scale and RTG the DT uses")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--embed", type=int, default=512)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=20)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--updates", type=int, default=50, help="timed DT updates per method")
    p.add_argument("--warmup", type=int, default=10, help="untimed DT updates first (compilation)")
    p.add_argument("--methods", nargs="+", default=["odt", "odt_td3"], choices=sorted(HEADS))
    p.add_argument("--trajectories", type=int, default=200)
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--no-pretrain", action="store_true", help="skip the pretraining row")
    p.add_argument("--compile", choices=["off", "default", "reduce-overhead"], default=None,
                   help="the methods' `compile` (default: their config default, pretrain.compile's)")
    p.add_argument("--sampler", choices=["device", "host"], default=None,
                   help="the methods' `sampler` (default: their config default, device)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cuda":
        torch.set_float32_matmul_precision("high")  # as dtrl pretrain and finetune set it
    task = get_task(args.task)
    from dtrl.envs.make import env_dims

    obs_dim, act_dim = env_dims(task)
    ds = bench_pretrain.synthetic_dataset(args.trajectories, args.length, obs_dim, act_dim)
    print(f"device {args.device}; {args.layers}x{args.embed} heads {args.heads} K {args.context} batch {args.batch}; "
          f"{args.updates} timed updates after {args.warmup}; compile {args.compile or 'config default'}; "
          f"sampler {args.sampler or 'config default'}; torch threads {torch.get_num_threads()}", flush=True)
    rates: dict[str, tuple[float, float | None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.methods:
            ups, extra = time_method(algo, args, ds, Path(tmp))
            mb = None if algo == "odt" else extra["critic minibatches/s"]
            rates[algo] = ups, mb
            more = "" if mb is None else f"  ({mb:.2f} critic minibatches/s)"
            print(f"{algo:<8} DT updates/s {ups:.2f}{more}", flush=True)
    if not args.no_pretrain:
        print("pretraining (scripts/bench_pretrain.py, same size and batch, bf16 and its default compile on CUDA):")
        pre = bench_pretrain.run(["--device", args.device, "--threads", str(args.threads), "--layers", str(args.layers), "--embed", str(args.embed),
                             "--heads", str(args.heads), "--context", str(args.context), "--batch", str(args.batch),
                             "--updates", str(args.updates), "--warmup", str(args.warmup), "--obs-dim", str(obs_dim),
                             "--act-dim", str(act_dim), "--amp", "bf16", "--trajectories", str(args.trajectories),
                             "--length", str(args.length)])
        for algo, (ups, mb) in rates.items():
            more = "" if mb is None else f", critic minibatches {mb / pre:.1%}"
            print(f"{algo:<8} vs pretraining: DT updates {ups / pre:.1%}{more}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
