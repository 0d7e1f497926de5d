"""A baseline that lives in another codebase: a method entry naming a command (``algo: external``).

    methods:
      my_method:
        algo: external
        command: "python ../my_repo/train.py --name {method} --env {task} --seed {seed} --data {dataset} --out {out}"
    grid: {methods: [none, grpo, my_method]}

``dtrl finetune --method my_method`` (and so the workflow's finetune rule, once per task and seed)
runs the command with the placeholders filled in, then checks the run directory ``{out}`` against
the run contract (:mod:`dtrl.harness.run_schema`, ``dtrl check-run``). The report picks the run up like any
other. The command owns its budget and its resuming; it is run again until it leaves a valid
``summary.json``, and a finished run (summary.json present) is never rerun.
"""

from __future__ import annotations

import shlex
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtrl.config import ConfigError, doc

PLACEHOLDERS = {
    "method": "the method entry's name (summary.json 'method')",
    "task": "task name (`dtrl tasks`)",
    "seed": "run seed",
    "out": "run directory to write progress.csv and summary.json into",
    "dataset": "the task's dataset: a D4RL-format HDF5 path (generated or data.sources.<task>.d4rl), or the Minari id",
    "pretrained": "the pretrained DT model.pt of this task and seed (the workflow then pretrains it first)",
    "env_steps": "the entry's online.env_steps budget",
    "eval_episodes": "eval.final_episodes, the episodes of the final evaluation",
}


class ExternalRunError(RuntimeError):
    """The external command failed or left a run directory that breaks the contract."""


class ExternalCommand:
    """Runs a command per (task, seed); registered as algorithm ``external`` (not an OnlineMethod:
    the command runs its own loop and writes the run contract itself)."""

    needs_pretrained_dt = False  # per entry: Config.needs_pretrained_dt

    @dataclass
    class Config:
        command: str = doc("", "Shell command run once per (task, seed), from the directory Snakemake (or dtrl) runs "
                               "in. Placeholders: " + "; ".join(f"{{{k}}} {v}" for k, v in PLACEHOLDERS.items())
                               + ". Values are shell-quoted; write a literal brace as {{ or }}. It must leave "
                               "progress.csv and summary.json in {out} as docs/CONTRACTS.md says (`dtrl check-run`).")
        label: str = doc("", "Name shown in tables and figures (default: the method entry's name).")

        @property
        def needs_pretrained_dt(self) -> bool:
            return "pretrained" in self.fields()

        def fields(self) -> set[str]:
            return {f for _, f, _, _ in string.Formatter().parse(self.command) if f is not None}

        def validate(self) -> None:
            if not self.command.strip():
                raise ConfigError("command: an external method entry needs a command, e.g. "
                                  "\"python my_baseline.py --task {task} --seed {seed} --out {out}\"")
            try:
                names = self.fields()
            except ValueError as e:
                raise ConfigError(f"command: {e} (write a literal brace as {{{{ or }}}})") from None
            unknown = sorted(n for n in names if n not in PLACEHOLDERS)
            if unknown:
                raise ConfigError(f"command: unknown placeholder {{{unknown[0]}}}; known: "
                                  + ", ".join(f"{{{k}}}" for k in PLACEHOLDERS))
            if "out" not in names:
                raise ConfigError("command: it must contain {out}, the run directory it writes into")


def dataset_location(exp: Any, task: Any) -> str:
    src = exp.data.sources.get(task.name)
    if src is not None and src.d4rl:
        return str(src.d4rl)
    if src is not None and src.minari:
        return str(src.minari)
    from dtrl.data.generate import generated_path

    return str(generated_path(exp, task))


def command_line(cfg: "ExternalCommand.Config", values: dict[str, Any]) -> str:
    return cfg.command.format(**{k: shlex.quote(str(v)) for k, v in values.items()})


def run_external(exp: Any, spec: Any, task_name: str, seed: int, pretrained: Path | None, out: Path) -> dict:
    """Run ``spec``'s command for (task, seed) into ``out`` unless a summary is there; check the contract."""
    import json

    from dtrl.harness.run_schema import check_run
    from dtrl.tasks import get_task

    task, out = get_task(task_name), Path(out)
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    cmd = command_line(spec.params, {
        "method": spec.name, "task": task_name, "seed": seed, "out": out, "dataset": dataset_location(exp, task),
        "pretrained": pretrained if pretrained is not None else "", "env_steps": spec.online.env_steps,
        "eval_episodes": exp.eval.final_episodes})
    print(f"[dtrl] {spec.name}: {cmd}", file=sys.stderr, flush=True)
    rc = subprocess.run(cmd, shell=True).returncode
    if rc != 0:
        raise ExternalRunError(f"method {spec.name}: the command exited with status {rc}: {cmd}")
    errors = check_run(out, task_name)
    if errors:
        if (out / "summary.json").exists():  # not a complete run: nothing may take it as done; kept to inspect
            (out / "summary.json").replace(out / "summary.invalid.json")
        raise ExternalRunError(f"method {spec.name}: {out} breaks the run contract (docs/CONTRACTS.md): "
                               + "; ".join(errors))
    summary = json.loads((out / "summary.json").read_text())
    if summary.get("method") != spec.name:
        raise ExternalRunError(f"method {spec.name}: summary.json names method {summary.get('method')!r}")
    return summary
