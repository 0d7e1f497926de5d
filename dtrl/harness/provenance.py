"""What a run was made with: its resolved config, recorded in checkpoints and summaries.

A run's config is recorded when it starts and compared whenever it resumes: a run killed under
one group size and resumed under another would be trained half under each, so resuming under a
changed config is refused with the list of changed keys (``--allow-config-change`` overrides it,
and the change is recorded). ``dtrl report`` compares the recorded method configs of the runs of
a table cell and refuses to average runs made under different ones (or runs that recorded none,
made before dtrl recorded configs, with runs that did).

Keys in :data:`IGNORED` change nothing a run computes (progress bars, how often it checkpoints)
and are left out of every comparison.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from dtrl.config import ConfigError

IGNORED = ("online.progress", "online.checkpoint_every_iterations", "pretrain.log_every",
           "pretrain.checkpoint_every", "pretrain.eval_episodes")
# The parts of a finetuning run's config that make up its method config (what a report cell must share).
METHOD_PARTS = ("algo", "params", "online", "eval", "pretrained_with")
_MISSING = "<not recorded>"


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (lists stay values)."""
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d} if prefix else {}


def changed_keys(old: dict[str, Any] | None, new: dict[str, Any], ignore: tuple[str, ...] = IGNORED) -> list[str]:
    """``key: old -> new`` for every key whose value differs (ignored keys and their children left out)."""
    a, b = flat(old or {}), flat(new)

    def kept(k: str) -> bool:  # an ignored key counts at any depth (pretrained_with.pretrain.log_every)
        return not any(f".{i}." in f".{k}." for i in ignore)

    keys = sorted(k for k in set(a) | set(b) if kept(k) and a.get(k, _MISSING) != b.get(k, _MISSING))
    return [f"{k}: {a.get(k, _MISSING)!r} -> {b.get(k, _MISSING)!r}" for k in keys]


def check_resume(recorded: dict[str, Any] | None, current: dict[str, Any], path: Path, allow: bool,
                 what: str = "run", fixed: tuple[str, ...] = ()) -> list[str]:
    """Refuse (ConfigError) to resume from ``path`` under a config other than the recorded one, unless ``allow``.

    Returns the changed keys (empty when none). A checkpoint that recorded no config (made before dtrl
    recorded configs) cannot be checked and counts as changed. Keys under ``fixed`` (dotted prefixes) cannot
    change mid-run (they shape the checkpointed state or act only when a run starts): a change of one is
    refused by name even when ``allow``; every other changed key applies from the resume on.
    """
    if recorded is None:
        diff = ["(the checkpoint records no config: it was made by an older dtrl)"]
    else:
        diff = changed_keys(recorded, current)
        frozen = [d for d in diff if any(f".{d.split(':', 1)[0]}.".startswith(f".{f}.") for f in fixed)]
        if frozen and allow:
            raise ConfigError(f"cannot resume the {what} from {path}: {'; '.join(frozen)}: "
                              f"{'this key cannot' if len(frozen) == 1 else 'these keys cannot'} change mid-run "
                              "(they shape the checkpointed state or act only when a run starts), even with "
                              f"--allow-config-change. Restore the value it was started with, or delete {path} "
                              "to start over")
    if diff and not allow:
        shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise ConfigError(f"cannot resume the {what} from {path}: its config differs from the current one "
                          f"({shown}). Restore the config it was started with, delete {path} to start over, or pass "
                          "--allow-config-change to continue under the new config (recorded in its summary)")
    return diff


def method_config(run_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parts of a finetuning run's recorded config that a report cell's runs must share."""
    if not run_config:
        return None
    out = {k: run_config.get(k) for k in METHOD_PARTS}
    out["params"] = with_default_params(out.get("algo"), out.get("params"))
    return out


def with_default_params(algo: Any, params: Any) -> Any:
    """A run's recorded algorithm parameters, with each parameter it did not record set to the default of
    the algorithm's Config: a field added after the run was made has the default that keeps what the run
    computed (a new switch defaults to the old behaviour), so runs made before and after it still share
    their config. Parameters of an unknown algorithm are returned as recorded."""
    import dataclasses

    from dtrl.config import field_default, to_dict
    from dtrl.config.registry import ALGORITHMS, get_algorithm

    if not isinstance(params, dict) or algo not in ALGORITHMS:
        return params
    missing = {f.name: field_default(f) for f in dataclasses.fields(get_algorithm(algo).Config) if f.name not in params}
    # to_dict: the form a run records its parameters in (summary.json), so a default compares equal to it
    return {**{k: to_dict(v) for k, v in missing.items() if v is not dataclasses.MISSING}, **params}


def code_version() -> str:
    """dtrl's version, with the git commit of the checkout it runs from when there is one."""
    from dtrl import __version__

    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=5)
        rev = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{__version__}+{rev}" if rev else __version__
