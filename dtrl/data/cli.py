"""`dtrl behaviour FAMILY` and `dtrl data TASK`: thin commands over the dataset layer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dtrl.data.generate import behaviour_dir, generate_task_dataset, train_behaviour
from dtrl.data.sources import dataset_summary_path, describe_source, load_task_dataset
from dtrl.reference import d4rl_dataset_stats
from dtrl.tasks import get_family, get_task
from dtrl.util.io import atomic_write_json


def cmd_behaviour(exp: Any, family: str, until: str = "expert") -> int:
    """Train (or finish) the SAC behaviour run of an env family and print what it reached.

    ``until='medium'`` is enough for random, medium and medium-replay datasets; an expert dataset
    made later resumes the same run.
    """
    fam = get_family(family)
    meta = train_behaviour(exp, fam.name, until=until)
    out = behaviour_dir(exp, fam.name)
    med, exp_ = meta["medium"], meta["expert"]
    print(f"behaviour policies of {fam.name} ({fam.env_id}) in {out}")
    print(f"  SAC: {meta['sac_steps_done']} env steps, {meta['sac_updates']} updates, seed {meta['seed']}, "
          f"{meta['wall_time_s']:.0f} s wall, {_num(meta.get('cpu_time_s'), 0)} process CPU-s "
          f"({_rate(meta['env_steps_per_s'])} env steps/s, "
          f"{_rate(meta['updates_per_s'])} updates/s) on {meta['device']}")
    print(f"  random: eval return {_num(meta['random']['eval_return'])}")
    print(f"  medium: step {med['sac_steps']}, eval return {_num(med['eval_return'])} "
          f"(target {meta['medium_threshold']:.1f}{'' if med['reached'] else ', NOT reached: best checkpoint'}); "
          f"replay {med['replay_transitions']} transitions in {med['replay_episodes']} episodes{_took(med)}")
    if exp_:
        print(f"  expert: step {exp_['sac_steps']}, eval return {_num(exp_['eval_return'])}")
    else:
        print("  expert: not trained yet (--until medium); an expert dataset resumes this run")
    print("  eval curve: " + ", ".join(f"{int(s)}:{r:.0f}" for s, r in meta["eval_curve"]))
    return 0


def cmd_data(exp: Any, task_name: str, out_path: Path | str | None) -> int:
    """Make (generate, when no source is configured) or check TASK's dataset; write and print its summary."""
    task = get_task(task_name)
    if task.name not in exp.data.sources:
        generate_task_dataset(exp, task)
    dataset = load_task_dataset(exp, task)
    summary = dataset.summary(task)
    meta = dataset.metadata
    summary.update({
        "task": task.name, "env_id": task.env_id, "source_kind": describe_source(exp, task),
        "obs_dim": dataset.obs_dim, "act_dim": dataset.act_dim,
        "terminals": int(sum(int(t.terminals.sum()) for t in dataset)),
        "timeouts": int(sum(int(t.timeouts.sum()) for t in dataset)),
        "ref_min_score": task.ref_min_score, "ref_max_score": task.ref_max_score,
    })
    for key in ("seed", "policies", "behaviour", "warnings", "generator", "format", "dataset_id", "conversions"):
        if key in meta:
            summary[key] = meta[key]
    ref = d4rl_dataset_stats(task.d4rl_name)
    line, gap = compare_with_d4rl(summary, ref)
    if ref is not None:
        summary["d4rl_reference"] = {"dataset": ref.dataset, "size": ref.size, "normalized_mean": ref.normalized_mean,
                                     "normalized_std": ref.normalized_std, "source": ref.source}
    if gap is not None:
        summary["warnings"] = [*(summary.get("warnings") or []), gap]
    path = Path(out_path) if out_path is not None else dataset_summary_path(exp, task)
    atomic_write_json(path, summary)
    _print_summary(summary)
    if line is not None:
        print(line)
    print(f"  summary: {path}")
    for w in summary.get("warnings") or []:
        print(f"dtrl: warning: {w}", file=sys.stderr)
    return 0


def compare_with_d4rl(summary: dict[str, Any], ref: Any) -> tuple[str | None, str | None]:
    """D4RL's row for the same task as a printable line, and a warning when our dataset's mean normalised
    return lies more than D4RL's std away from D4RL's mean (a dataset that does not follow the recipe)."""
    if ref is None or summary.get("normalized_mean") is None:
        return None, None
    line = (f"  D4RL {ref.dataset}: {ref.size} transitions, normalised return {ref.normalized_mean:.2f} "
            f"± {ref.normalized_std:.2f} (ours {summary['transitions']} transitions, "
            f"{summary['normalized_mean']:.2f} ± {summary['normalized_std']:.2f})")
    diff = summary["normalized_mean"] - ref.normalized_mean
    if abs(diff) <= ref.normalized_std:
        return line, None
    return line, (f"{summary['task']}: the dataset's mean normalised return {summary['normalized_mean']:.2f} is "
                  f"{abs(diff):.2f} {'above' if diff > 0 else 'below'} D4RL's {ref.dataset} "
                  f"({ref.normalized_mean:.2f} ± {ref.normalized_std:.2f}), more than its std")


def _print_summary(s: dict[str, Any]) -> None:
    print(f"{s['task']}: {s['source_kind']}")
    print(f"  {s['episodes']} episodes, {s['transitions']} transitions "
          f"({s['terminals']} terminals, {s['timeouts']} timeouts); obs {s['obs_dim']}-d, action {s['act_dim']}-d; "
          f"sim states: {'yes' if s['has_sim_states'] else 'no'}")
    print(f"  return mean {s['return_mean']:.1f} (std {s['return_std']:.1f}, min {s['return_min']:.1f}, "
          f"max {s['return_max']:.1f}); normalised mean {s['normalized_mean']:.2f} ± {s['normalized_std']:.2f} "
          f"(min {s['normalized_min']:.2f}, max {s['normalized_max']:.2f})")
    for c in s.get("conversions") or []:  # what the reader changed so the data fits the task's env
        print(f"  converted: {c}")
    med = (s.get("behaviour") or {}).get("medium")
    if med:
        print(f"  SAC 'medium': step {med['sac_steps']}, eval return {_num(med['eval_return'])}"
              f"{'' if med['reached'] else ' (NOT reached: best checkpoint)'}{_took(med)}")
    for p in s.get("policies") or []:
        bits = [f"policy {p['policy']}", f"{p['transitions']} transitions"]
        if p.get("sac_steps") is not None:
            bits.append(f"SAC step {p['sac_steps']}")
        if p.get("eval_return") is not None:
            bits.append(f"eval return {p['eval_return']:.1f}")
        if p.get("dataset_return_mean") is not None:
            bits.append(f"return of its {p['dataset_episodes']} whole episodes {p['dataset_return_mean']:.1f}")
        print("  " + ", ".join(bits))


def _num(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _took(med: dict[str, Any]) -> str:
    """', after W s wall / C process CPU-s' for a medium record that kept its times (older ones did not)."""
    if med.get("cpu_time_s") is None:
        return ""
    return f", after {med['wall_time_s']:.0f} s wall / {med['cpu_time_s']:.0f} process CPU-s"


def _rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"
