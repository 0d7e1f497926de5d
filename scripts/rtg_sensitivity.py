"""How strongly a pretrained DT's actions depend on the return-to-go it is asked for, per initialisation.

For each seed, action head (ODT's stochastic one, ODT+TD3's deterministic one) and ``model.init``
('normal' = dtrl before issue 18, 'odt' = the reference's), pretrain a DT as ``dtrl pretrain`` does
(same config, same code), then feed 64 fixed contexts drawn from the dataset with an
evaluation-style RTG (``--rtg``, by default the task's evaluation target, decremented by the rewards inside the window)
scaled x0.25 and x4, and print the mean |action difference| of the evaluation action (tanh of the
mean) at each context's last step, beside the final pretraining loss and the offline score:

    python scripts/rtg_sensitivity.py -c config/config.yaml -c config/quick.yaml \\
        --task pendulum-medium-replay --seeds 0 1 --out /tmp/rtg_sensitivity

The task's dataset must exist (``dtrl data TASK`` with the same configs). Finished pretraining runs
under ``--out`` are reused, so a rerun only recomputes the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtrl.models.batching import ContextSampler  # noqa: E402
from dtrl.models.checkpoint import load_pretrained_dt  # noqa: E402
from dtrl.data.sources import load_task_dataset  # noqa: E402
from dtrl.config.experiment import load_config, parse_overrides  # noqa: E402
from dtrl.util.io import read_json  # noqa: E402
from dtrl.harness.evaluate import evaluate_dt  # noqa: E402
from dtrl.harness.online import eval_seed  # noqa: E402
from dtrl.harness.pretrain import pretrain  # noqa: E402
from dtrl.tasks import get_task  # noqa: E402

HEADS = ("gaussian", "deterministic")
INITS = ("normal", "odt")


def eval_style_contexts(dataset, context_len: int, eval_rtg: float, n: int = 64, seed: int = 12345):
    """``n`` end-anchored windows of the dataset whose RTG tokens start at ``eval_rtg`` and fall by each reward."""
    sampler = ContextSampler(dataset.trajectories, context_len, rng=np.random.default_rng(seed), anchor="end",
                             extra={"reward": [t.rewards.astype(np.float32) for t in dataset.trajectories]})
    b = sampler.sample(n)
    before = torch.cumsum(b.extra["reward"], dim=1) - b.extra["reward"]  # rewards received earlier in the window
    b.rtg = torch.where(b.mask, eval_rtg - before, torch.zeros_like(before))
    return b


@torch.no_grad()
def sensitivity(model, b) -> float:
    """Mean |a(RTG x 0.25) - a(RTG x 4)| of the evaluation action at each context's last step."""
    model.eval()
    lo, hi = (torch.tanh(model(b.states, b.actions, b.rtg * f, b.timesteps, b.mask).mean[:, -1]) for f in (0.25, 4.0))
    return float((lo - hi).abs().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", action="append", default=[], help="config files, merged in order")
    p.add_argument("--set", action="append", default=[], help="section.key=value overrides")
    p.add_argument("--task", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rtg", type=float, default=None,
                   help="the RTG the contexts start from before scaling (default: the evaluation target)")
    p.add_argument("--eval-at", type=float, default=None,
                   help="also score each pretrained DT (10 mean-action episodes) at this RTG target")
    p.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS), help="action heads to pretrain")
    p.add_argument("--out", type=Path, required=True, help="where the pretraining runs go")
    args = p.parse_args(argv)
    base = parse_overrides(args.set)
    task = get_task(args.task)
    extra = f"  norm_return@{args.eval_at:g}" if args.eval_at is not None else ""
    print("head           init    seed  final_loss  eval_norm_return  mean|a(x0.25)-a(x4)|" + extra)
    for head in args.heads:
        for init in INITS:
            over = {**base, "model": {**base.get("model", {}), "action_head": head, "init": init}}
            exp = load_config(args.config, over).for_task(task.name)
            dataset = load_task_dataset(exp, task)
            for seed in args.seeds:
                out = args.out / head / init / f"seed{seed}"
                pretrain(exp, task, seed, dataset, out)
                s = read_json(out / "summary.json")
                model = load_pretrained_dt(out / "model.pt")
                start = args.rtg if args.rtg is not None else exp.eval.rtg or task.eval_rtg
                ctx = eval_style_contexts(dataset, model.cfg.context_len, start)
                loss = s.get("final_loss")
                line = (f"{head:<14} {init:<7} {seed:>4}  {loss:10.4f}  {s.get('eval_norm_return', float('nan')):16.2f}"
                        f"  {sensitivity(model, ctx):20.3e}")
                if args.eval_at is not None:
                    returns = evaluate_dt(model, task, episodes=10, seed=eval_seed(exp.eval, seed, 0), rtg=args.eval_at)
                    line += f"  {np.mean(task.normalize(returns)):18.2f}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
