"""What a run was made with: its resolved config, recorded in checkpoints and summaries.

A run's config is recorded when it starts and compared whenever it resumes: a run killed under
one group size and resumed under another would be trained half under each, so resuming under a
changed config is refused with the list of changed keys (``--allow-config-change`` overrides it,
and the change is recorded). ``dtrl report`` compares the recorded method configs of the runs of
a table cell and refuses to average runs made under different ones (or runs that recorded none,
made before dtrl recorded configs, with runs that did).

Both comparisons read a config field the record lacks (added to dtrl after the run started) as its default,
which keeps what the run computed. Keys in :data:`IGNORED` change nothing a run computes (progress bars, how often it checkpoints)
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

    Returns the changed keys (empty when none). A field added to the config since the checkpoint was written
    counts as unchanged at its default (:func:`with_recorded_defaults`). A checkpoint that recorded no config
    (made before dtrl recorded configs) cannot be checked and counts as changed. Keys under ``fixed`` (dotted prefixes) cannot
    change mid-run (they shape the checkpointed state or act only when a run starts): a change of one is
    refused by name even when ``allow``; every other changed key applies from the resume on.
    """
    if recorded is None:
        diff = ["(the checkpoint records no config: it was made by an older dtrl)"]
    else:
        diff = changed_keys(with_recorded_defaults(recorded), with_recorded_defaults(current))
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
    full = with_recorded_defaults(run_config)
    return {k: full.get(k) for k in METHOD_PARTS}


def with_recorded_defaults(config: Any) -> Any:
    """A run's recorded config (a finetuning run's, or a pretraining's ``model`` / ``pretrain``) with each config
    field it did not record set to its default (``dtrl.config.with_defaults``): a run made before a field was
    added is compared, on resuming or in a report cell, as made under the field's default, which keeps what it
    computed. Parameters of an unknown algorithm, and anything but a mapping, are left as recorded."""
    from dtrl.config import with_defaults
    from dtrl.config.model import ModelConfig
    from dtrl.config.online import EvalConfig, OnlineConfig
    from dtrl.config.pretrain import PretrainConfig
    from dtrl.config.registry import ALGORITHMS, get_algorithm

    if not isinstance(config, dict):
        return config
    out = dict(config)
    parts = {"online": OnlineConfig, "eval": EvalConfig, "model": ModelConfig, "pretrain": PretrainConfig}
    if out.get("algo") in ALGORITHMS:
        parts["params"] = get_algorithm(out["algo"]).Config
    for key, cls in parts.items():
        if key in out:
            out[key] = with_defaults(cls, out[key])
    if isinstance(out.get("pretrained_with"), dict):
        out["pretrained_with"] = with_recorded_defaults(out["pretrained_with"])
    return out


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
