"""The `dtrl` command line: one subcommand per workflow step, each a thin call into the library.

    dtrl tasks                                   list known tasks
    dtrl config [--doc] [--config C] [--task T [--method M]]
                                                 print the resolved config / every key's documentation
    dtrl behaviour FAMILY --config C             train the SAC behaviour policies of an env family (D4RL recipe)
    dtrl data TASK --config C                    make or check TASK's dataset, print its summary
    dtrl pretrain --task T --seed S --config C   offline pretraining of the DT
    dtrl finetune --method M --task T --seed S --config C
    dtrl evaluate --checkpoint P --task T        score a pretrained DT or any method's run checkpoint
    dtrl report --config C                       tables and rliable figures from finished runs
    dtrl plan --config C                         the grid's jobs, env steps, updates and estimated hours
    dtrl status --config C                       progress of the grid (readable while Snakemake runs)
    dtrl check-run DIR                           check a run directory against the run contract

Every subcommand takes ``--config`` (default: the built-in defaults) and ``--set key=value``
overrides (``--set pretrain.updates=100``). Errors in input (a bad config, an unreadable or unfitting
file, a run directory another process is training) are reported as one line and exit 2, with nothing
written; a run that diverged (a non-finite loss, blown-up weights, a policy emitting NaN) exits 3 with one
line naming what broke and the config key most likely at fault (``dtrl check-run`` exits 3 for such a run
too: not scored). ``dtrl --debug ...`` (or ``DTRL_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, action="append", default=None,
                   help="experiment YAML (default: built-in defaults); repeat to merge several files in order")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set pretrain.updates=100 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dtrl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (also: DTRL_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("tasks", help="list known tasks")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("config", help="print the resolved config, or document every key")
    _common(s)
    s.add_argument("--doc", action="store_true", help="print every key with its default and documentation (markdown)")
    s.add_argument("--task", default=None, help="print the config as it applies to this task (its `overrides` merged)")
    s.add_argument("--method", default=None, help="with --task: as it applies to this method entry on that task")

    s = sub.add_parser("behaviour", help="train SAC behaviour policies for an env family (D4RL recipe)")
    _common(s)
    s.add_argument("family", help="env family, e.g. hopper")
    s.add_argument("--until", choices=["medium", "expert"], default="expert",
                   help="stop (resumably) once the medium policy and its replay buffer are saved, or train to "
                        "data.generator.sac_steps for the expert policy (default)")

    s = sub.add_parser("data", help="make (generate) or check a task's dataset and print its summary")
    _common(s)
    s.add_argument("task")
    s.add_argument("--out", type=Path, default=None, help="summary JSON path (default: <results>/data/<task>.json)")

    s = sub.add_parser("pretrain", help="offline pretraining of the Decision Transformer")
    _common(s)
    s.add_argument("--task", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=None, help="run dir (default: <results>/pretrain/<task>/seed<seed>)")
    s.add_argument("--backbone", default=None,
                   help="the backbone to pretrain (default: model.backbone); its own runs go under "
                        "<results>/pretrain_<backbone>/, for the method entries with that `backbone`")
    _allow_config_change(s)

    s = sub.add_parser("finetune", help="online finetuning with a method entry of the config")
    _common(s)
    s.add_argument("--method", required=True, help="method entry name (e.g. grpo, odt, odt_td3, iql, none)")
    s.add_argument("--task", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--pretrained", type=Path, default=None,
                   help="pretrained model.pt (default: <results>/pretrain/<task>/seed<seed>/model.pt)")
    s.add_argument("--out", type=Path, default=None, help="run dir (default: <results>/runs/<method>/<task>/seed<seed>)")
    _allow_config_change(s)
    s.add_argument("--restart-diverged", action="store_true",
                   help="a run that diverged is recorded and not run again; with this flag its directory is "
                        "emptied and the run starts over (e.g. after lowering the learning rate it blamed)")

    s = sub.add_parser("evaluate", help="score a checkpoint as its run's final evaluation did (DT: mean action at the "
                                        "eval RTG)")
    _common(s)
    s.add_argument("--checkpoint", type=Path, required=True,
                   help="model.pt from pretrain, or a run's checkpoint.pt (any method's, IQL's included)")
    s.add_argument("--task", required=True)
    s.add_argument("--episodes", type=int, default=None)
    s.add_argument("--seed", type=int, default=None,
                   help="the run's seed: evaluation uses that run's final-evaluation env seeds, so a run's "
                        "checkpoint (with the run's --config) scores what its summary.json says (default: the "
                        "seed the checkpoint records, else 0; the first line of the output names it)")
    s.add_argument("--rtg", type=float, default=None)

    s = sub.add_parser("status", help="progress of the grid: jobs done/running/pending per rule, env steps, ETA")
    _common(s)

    s = sub.add_parser("check-run", help="check a run directory against the run contract (docs/CONTRACTS.md)")
    s.add_argument("run_dir", type=Path, help="a run directory: progress.csv and summary.json")
    s.add_argument("--task", default=None, help="the run's task (default: from a .../<task>/seed<s> path, else "
                                                "summary.json)")

    s = sub.add_parser("report", help="aggregate finished runs into tables and rliable figures")
    _common(s)
    s.add_argument("--out", type=Path, default=None, help="results root to write tables/ and figures/ under")
    s.add_argument("--runs", type=Path, default=None, help="runs dir (default: <results>/runs)")

    s = sub.add_parser("plan", help="planned cost of the grid: jobs per rule, env steps, updates, estimated hours")
    _common(s)
    s.add_argument("--device-kind", default=None,
                   help="throughput rows to use (dtrl/reference/throughput.csv: cpu-2core, h100); "
                        "default: cpu-2core when device is cpu, else h100")
    s.add_argument("--slots", type=int, default=None, help="jobs run in parallel (default: 2 on cpu-2core, 1 GPU)")
    s.add_argument("--episode-len", type=float, default=None,
                   help="assumed online episode length (default: dataset summary, then the reference table)")
    return p


def _allow_config_change(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume a checkpoint even though the config differs from the one it was started with: "
                        "each changed key applies from the resume on (learning rates included), keys that cannot "
                        "change mid-run are refused by name; the changes are recorded in the summary")
    p.add_argument("--wait", action="store_true",
                   help="if another process is training the same directory, wait for it to end instead of "
                        "exiting with an error naming it")


EXIT_INPUT = 2  # bad input: config, file, task
EXIT_DIVERGED = 3  # the run diverged; its summary.json records status: diverged


def main(argv: list[str] | None = None) -> int:
    import os

    from dtrl.config import ConfigError
    from dtrl.data.trajectories import DataError
    from dtrl.util.guard import DivergenceError, RecordedDivergence
    from dtrl.util.io import InputError
    from dtrl.tasks import UnknownTaskError

    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("DTRL_DEBUG", "") not in ("", "0")
    try:
        return _dispatch(args)
    except (ConfigError, DataError, UnknownTaskError, FileNotFoundError, InputError) as e:
        if debug:
            raise
        _error_line(args.command, e)
        return EXIT_INPUT
    except (DivergenceError, RecordedDivergence) as e:
        if debug:
            raise
        _error_line(args.command, e)
        return EXIT_DIVERGED


def _error_line(command: str, e: BaseException) -> None:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # KeyError's str() adds quotes
    text = " ".join(text.split())  # one line, whatever the message held
    print(f"dtrl {command}: error: {text}", file=sys.stderr)


def _load(args):
    from dtrl.config.experiment import load_config, parse_overrides

    return load_config(args.config, parse_overrides(args.overrides), args.overrides)


# --out of each command: a directory (True) or a file (False).
_OUT_IS_DIR = {"report": True, "finetune": True, "pretrain": True, "data": False}


def _check_out(command: str, out: Path | None) -> None:
    """Refuse an --out of the wrong kind before any work (one line, not a traceback mid-way)."""
    from dtrl.config import ConfigError

    if out is None or not out.exists() or command not in _OUT_IS_DIR:
        return
    if _OUT_IS_DIR[command] and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory (it is created if missing)")
    if not _OUT_IS_DIR[command] and out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give the path of the summary JSON file to write")


def _dispatch(args) -> int:
    if args.command == "tasks":
        from dtrl.tasks import get_task, known_tasks

        rows = []
        for name in known_tasks():
            t = get_task(name)
            rows.append({"task": name, "env_id": t.env_id, "ref_min": t.ref_min_score, "ref_max": t.ref_max_score,
                         "refs": "D4RL" if t.family.d4rl_prefix is not None else "dtrl",
                         "eval_rtg": t.eval_rtg, "online_rtg": t.online_rtg, "resettable": t.resettable})
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_tasks(rows)
        return 0
    if args.command == "config":
        from dtrl.config import ConfigError, to_dict
        from dtrl.config.experiment import describe

        if args.doc:
            print("| key | default | meaning |\n|---|---|---|")
            for key, default, text in describe():
                print(f"| `{key}` | {'`' + default + '`' if default else ''} | {text} |")
            return 0
        import yaml

        exp = _load(args)
        if args.method and not args.task:
            raise ConfigError("dtrl config --method needs --task (overrides are resolved per task and method)")
        if args.task:
            exp = exp.for_task(args.task, args.method)
        print(yaml.safe_dump(to_dict(exp), sort_keys=False))
        return 0

    if args.command == "check-run":
        from dtrl.harness.run_schema import cmd_check_run

        return cmd_check_run(args.run_dir, args.task)

    exp = _load(args)
    _check_out(args.command, getattr(args, "out", None))
    if args.command == "status":
        from dtrl.workflow.status import cmd_status

        return cmd_status(exp)
    if getattr(args, "task", None):
        from dtrl.tasks import get_task

        get_task(args.task)  # an unknown task fails here, before any work
    if args.command == "behaviour":
        from dtrl.data.cli import cmd_behaviour

        return cmd_behaviour(exp, args.family, args.until)
    if args.command == "data":
        from dtrl.data.cli import cmd_data

        return cmd_data(exp, args.task, args.out)
    if args.command == "pretrain":
        from dtrl.harness.pretrain import cmd_pretrain

        return cmd_pretrain(exp, args.task, args.seed, args.out, args.allow_config_change, args.backbone, args.wait)
    if args.command == "finetune":
        from dtrl.workflow.finetune import cmd_finetune

        return cmd_finetune(exp, args.method, args.task, args.seed, args.pretrained, args.out,
                            args.allow_config_change, args.wait, args.restart_diverged)
    if args.command == "evaluate":
        from dtrl.harness.evaluate import cmd_evaluate

        return cmd_evaluate(exp, args.checkpoint, args.task, args.episodes, args.seed, args.rtg)
    if args.command == "report":
        from dtrl.report.build import cmd_report

        return cmd_report(exp, args.out, args.runs)
    if args.command == "plan":
        from dtrl.workflow.plan import cmd_plan

        return cmd_plan(exp, args.device_kind, args.slots, args.episode_len)
    raise AssertionError(args.command)


def _print_tasks(rows: list[dict]) -> None:
    fmt = "{:<28} {:<22} {:>10} {:>10} {:<5} {:>9} {:>10}  {}"
    print(fmt.format("task", "env id", "ref min", "ref max", "refs", "eval RTG", "online RTG", "exact resets"))
    for r in rows:
        print(fmt.format(r["task"], r["env_id"], f"{r['ref_min']:g}", f"{r['ref_max']:g}", r["refs"],
                         f"{r['eval_rtg']:g}", f"{r['online_rtg']:g}", "yes" if r["resettable"] else "no"))
    print("ref min/max: the random and expert returns (normalised score 0 and 100): D4RL's where the task is in "
          "D4RL (refs D4RL, scores are D4RL normalised scores), dtrl's own where it is not (refs dtrl; pendulum: "
          "random return measured, dtrl.tasks.REF_MEASUREMENTS, expert = the 1000-step maximum). RTG: return-to-go targets of evaluation and of online "
          "exploration.")


def entry(argv: list[str] | None = None) -> int:
    """The `dtrl` console script: main() with a reader that stops early (`dtrl config --doc | head`)
    ending the command quietly instead of with a BrokenPipeError traceback."""
    import os

    try:
        rc = main(argv)
        sys.stdout.flush()  # a pipe closed early shows here, not at interpreter exit
        return rc
    except BrokenPipeError:
        # Python's documented recipe: point stdout at devnull so the flush at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(entry())
