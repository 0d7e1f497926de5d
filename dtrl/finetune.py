"""`dtrl finetune`: resolve a method entry, load what it needs, run it under the online harness."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from dtrl.experiment import ExperimentConfig
from dtrl.methods import get_algorithm
from dtrl.online import build_context, resolve_device, run_online
from dtrl.tasks import get_task


def run_dir(exp: ExperimentConfig, method: str, task: str, seed: int) -> Path:
    return Path(exp.results) / "runs" / method / task / f"seed{seed}"


def pretrained_path(exp: ExperimentConfig, task: str, seed: int) -> Path:
    return Path(exp.results) / "pretrain" / task / f"seed{seed}" / "model.pt"


def finetune(exp: ExperimentConfig, method: str, task_name: str, seed: int, pretrained: Path | None = None,
             out: Path | None = None) -> dict:
    spec = exp.method(method)
    task = get_task(task_name)
    cls = get_algorithm(spec.algo)
    if getattr(spec.params, "needs_pretrained_dt", cls.needs_pretrained_dt):
        pretrained = Path(pretrained) if pretrained else pretrained_path(exp, task_name, seed)
        if not pretrained.exists():
            raise FileNotFoundError(f"pretrained model {pretrained} not found; run `dtrl pretrain --task {task_name} "
                                    f"--seed {seed}` first (or pass --pretrained)")
    else:
        pretrained = None
    dataset = None
    if getattr(cls, "needs_dataset", False):
        from dtrl.data.sources import load_task_dataset

        dataset = load_task_dataset(exp, task)
    if exp.threads > 0:
        torch.set_num_threads(exp.threads)
    out = Path(out) if out else run_dir(exp, method, task_name, seed)
    if spec.algo == "external":
        from dtrl.external import run_external

        return run_external(exp, spec, task_name, seed, pretrained, out)
    ctx = build_context(task, seed, resolve_device(exp.device), dataset, pretrained, out, exp.eval)
    impl = cls(spec.params, ctx)
    meta = {"method": method, "algo": spec.algo, "task": task_name, "seed": seed}
    summary = run_online(impl, ctx, spec.online, meta)
    return summary


def cmd_finetune(exp: ExperimentConfig, method: str, task: str, seed: int, pretrained: Path | None,
                 out: Path | None) -> int:
    from dtrl.external import ExternalRunError

    try:
        s = finetune(exp, method, task, seed, pretrained, out)
    except ExternalRunError as e:
        print(f"dtrl finetune: error: {e}", file=sys.stderr)
        return 1
    print(f"{s['method']} {s['task']} seed {s['seed']}: normalised return {s['final_norm_return']:.2f} "
          f"(raw {s['final_return']:.1f}) after {s['env_steps']} env steps, {s['grad_updates']} updates, "
          f"{s['wall_time']:.0f}s")
    return 0
