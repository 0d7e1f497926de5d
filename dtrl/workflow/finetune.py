"""`dtrl finetune`: resolve a method entry, load what it needs, run it under the online harness."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from dtrl.config.experiment import ExperimentConfig
from dtrl.config.registry import get_algorithm
from dtrl.harness.online import build_context, resolve_device, run_online
from dtrl.util.io import read_json
from dtrl.util.lock import hold
from dtrl.tasks import get_task
from dtrl.envs.workers import set_default_workers


def run_dir(exp: ExperimentConfig, method: str, task: str, seed: int) -> Path:
    return Path(exp.results) / "runs" / method / task / f"seed{seed}"


def pretrained_path(exp: ExperimentConfig, task: str, seed: int, head: str = "gaussian", backbone: str = "dt") -> Path:
    """The model.pt of the (task, seed) pretraining with action head ``head`` and backbone ``backbone``."""
    from dtrl.harness.pretrain import default_out_dir

    return default_out_dir(exp.results, task, seed, head, backbone) / "model.pt"


def run_config(exp: ExperimentConfig, spec, task: str, seed: int, pretrained: Path | None) -> dict:
    """The resolved config of a finetuning run, recorded in its checkpoints and summary (dtrl.harness.provenance):
    the method entry resolved (algorithm, parameters, online harness), the evaluation protocol, and the
    model and pretraining config the starting DT was made with (as its model.pt records them)."""
    from dtrl.config import to_dict
    from dtrl.util.io import torch_load

    made_with = None
    if pretrained is not None:
        recorded = torch_load(pretrained, fix=f"delete it and rerun `dtrl pretrain --task {task} --seed {seed}`, "
                                              "or pass another --pretrained").get("config") or {}
        made_with = {"model": recorded.get("model"), "pretrain": recorded.get("pretrain")}
    return {"method": spec.name, "algo": spec.algo, "params": to_dict(spec.params), "online": to_dict(spec.online),
            "eval": to_dict(exp.eval), "task": task, "seed": seed, "pretrained_with": made_with}


def finetune(exp: ExperimentConfig, method: str, task_name: str, seed: int, pretrained: Path | None = None,
             out: Path | None = None, allow_config_change: bool = False, wait: bool = False,
             restart_diverged: bool = False) -> dict:
    """Run (or resume) the run of ``method`` on ``task_name`` with ``seed``; returns its summary. One process
    at a time trains a run directory (dtrl.util.lock): another raises LockHeld, or waits for it with ``wait``.
    A finished or diverged run is not redone; ``restart_diverged`` deletes a diverged one and starts it over."""
    exp = exp.for_task(task_name, method)  # the override entries matching (task, method)
    spec = exp.method(method)
    task = get_task(task_name)
    cls = get_algorithm(spec.algo)
    kind = exp.pretrained_kind(method)  # as the workflow decides (common.smk)
    if kind is not None:
        head, backbone = kind
        given = pretrained is not None
        pretrained = Path(pretrained) if pretrained else pretrained_path(exp, task_name, seed, head, backbone)
        if not pretrained.exists() and not given:
            failed = _diverged_pretraining(exp, spec, method, task_name, seed, pretrained, out)
            if failed is not None:
                return failed
        if not pretrained.exists():
            extra = "" if head == "gaussian" else f" --set model.action_head={head}"
            extra += "" if backbone == "dt" else f" --backbone {backbone}"
            raise FileNotFoundError(f"pretrained model {pretrained} not found; run `dtrl pretrain --task {task_name} "
                                    f"--seed {seed}{extra}` first (or pass --pretrained)")
    else:
        pretrained = None
    out = Path(out) if out else run_dir(exp, method, task_name, seed)
    done = _finished(out, restart_diverged)
    if done is not None:  # a finished (or diverged) run is not redone
        return done
    resolve_device(exp.device)  # before anything is written: a bad device leaves no directory behind
    with hold(out, f"run {method}/{task_name}/seed{seed}", wait):
        done = _finished(out, restart_diverged)  # finished by the process we waited for
        if done is not None:
            return done
        if restart_diverged and (out / "summary.json").exists():
            _start_over(out)
        return _run(exp, spec, cls, method, task_name, task, seed, pretrained, out, allow_config_change)


def _diverged_pretraining(exp: ExperimentConfig, spec, method: str, task: str, seed: int, model: Path,
                          out: Path | None) -> dict | None:
    """When the pretraining this run starts from diverged (its summary says so, and it left no model.pt): the
    run is recorded as diverged with that cause, so the report lists it as not scored and a workflow goes on
    to the report (its finetune rule accepts exit 3) instead of stopping at a missing model.pt."""
    path = model.parent / "summary.json"
    pre = read_json(path, fix=f"delete {model.parent} and pretrain again") if path.exists() else None
    if not isinstance(pre, dict) or pre.get("status") != "diverged":
        return None
    from dtrl.harness.online import Counters, diverged_summary
    from dtrl.util.io import atomic_write_json

    d = pre.get("divergence") or {}
    out = Path(out) if out else run_dir(exp, method, task, seed)
    msg = (f"{method} was not run: the pretraining it starts from ({model.parent}) diverged: "
           f"{d.get('message', 'see its summary.json')}")
    summary = diverged_summary({"method": method, "algo": spec.algo, "task": task, "seed": seed},
                               {"iteration": 0, "terms": d.get("terms", []), "config_key": d.get("config_key"),
                                "where": "the pretraining", "message": msg}, Counters(), spec.online.env_steps)
    if not (out / "summary.json").exists():
        with hold(out, f"run {method}/{task}/seed{seed}"):
            atomic_write_json(out / "summary.json", summary)
    return read_json(out / "summary.json")


def _finished(out: Path, restart_diverged: bool) -> dict | None:
    """The summary of a run that is not to be run again (None: run it)."""
    if not (out / "summary.json").exists():
        return None
    s = read_json(out / "summary.json", fix=f"delete {out} to run it again")
    if restart_diverged and isinstance(s, dict) and s.get("status") == "diverged":
        return None
    return s


def _start_over(out: Path) -> None:
    """Remove what a diverged run left (every file but the lock this process holds)."""
    import shutil

    from dtrl.util.lock import LOCK_NAME

    for p in out.iterdir():
        if p.name != LOCK_NAME:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    print(f"[dtrl] {out}: the diverged run was deleted (--restart-diverged); starting it over", file=sys.stderr)


def _run(exp: ExperimentConfig, spec, cls, method: str, task_name: str, task, seed: int, pretrained: Path | None,
         out: Path, allow_config_change: bool) -> dict:
    if spec.algo == "external":  # its own process: no harness config record, dataset or torch threads here
        from dtrl.methods.external import run_external

        return run_external(exp, spec, task_name, seed, pretrained, out)
    config = run_config(exp, spec, task_name, seed, pretrained)
    dataset = None
    if getattr(cls, "needs_dataset", False):
        from dtrl.data.sources import load_task_dataset

        keeps_tail = getattr(cls, "reference_keeps_unflagged_tail", False)  # IQL's loader keeps it
        dataset = load_task_dataset(exp, task, reference_keeps_tail=keeps_tail)
    if exp.threads > 0:
        torch.set_num_threads(exp.threads)
    ctx = build_context(task, seed, resolve_device(exp.device), dataset, pretrained, out, exp.eval)
    set_default_workers(exp.rollout_workers)  # every RolloutEngine of the run
    impl = cls(spec.params, ctx)
    meta = {"method": method, "algo": spec.algo, "task": task_name, "seed": seed}
    summary = run_online(impl, ctx, spec.online, meta, config, allow_config_change)
    return summary


def cmd_finetune(exp: ExperimentConfig, method: str, task: str, seed: int, pretrained: Path | None,
                 out: Path | None, allow_config_change: bool = False, wait: bool = False,
                 restart_diverged: bool = False) -> int:
    from dtrl.methods.external import ExternalRunError

    try:
        s = finetune(exp, method, task, seed, pretrained, out, allow_config_change, wait, restart_diverged)
    except ExternalRunError as e:
        print(f"dtrl finetune: error: {e}", file=sys.stderr)
        return 1
    if s.get("status", "completed") != "completed":
        from dtrl.util.guard import RecordedDivergence

        where = Path(out) if out else run_dir(exp, method, task, seed)
        raise RecordedDivergence((s.get("divergence") or {}).get("message", f"the run's status is {s.get('status')}")
                                 + f" [recorded in {where}/summary.json, so it is not run again: delete {where}, "
                                   "or pass --restart-diverged, to start it over]")
    print(f"{s['method']} {s['task']} seed {s['seed']}: normalised return {s['final_norm_return']:.2f} "
          f"(raw {s['final_return']:.1f}) after {s['env_steps']} env steps, {s['policy_updates']} policy and "
          f"{s['critic_updates']} critic updates, "
          f"{s['wall_time']:.0f}s")
    return 0
