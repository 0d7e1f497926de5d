"""The experiment config: one YAML file drives the CLI and the Snakemake workflow alike.

Sections: ``grid`` (methods x tasks x seeds), ``data``, ``model``, ``pretrain``, ``eval``,
``online`` (the harness shared by all online methods) and ``methods`` (named method entries, each
an algorithm plus its parameters, so ablations are just more entries). ``config/README.md``
documents every key; ``dtrl config --doc`` prints the same from the field declarations.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtrl.config import ConfigError, doc, from_dict, load_yaml, to_dict
from dtrl.data.config import DataConfig
from dtrl.model import ModelConfig
from dtrl.online_config import EvalConfig, OnlineConfig
from dtrl.pretrain_config import PretrainConfig
from dtrl.workflow_config import ReportConfig, ResourcesConfig


@dataclass
class GridConfig:
    methods: list[str] = doc(["none"], "Method entries (keys of `methods`) or algorithm names to run.")
    tasks: list[str] = doc(["hopper-medium"], "Tasks (see `dtrl tasks`).")
    seeds: list[int] = doc([0, 1, 2], "Seeds; each (task, seed) gets one pretraining run shared by all DT methods.")
    ablations: list[str] = doc([], "Extra method entries run only on `ablation_tasks`, reported in the ablation table.")
    ablation_tasks: list[str] = doc([], "Tasks the ablation entries run on.")


@dataclass
class ExperimentConfig:
    results: str = doc("results", "Root of every output: data/, pretrain/, runs/, tables/, figures/, logs/.")
    device: str = doc("auto", "Torch device for DT training and rollouts: auto (cuda if available), cpu, cuda, cuda:N.")
    threads: int = doc(0, "torch CPU threads per job (0 = torch's default).")
    grid: GridConfig = doc(GridConfig(), "What to run.")
    data: DataConfig = doc(DataConfig(), "Dataset sources and the generator.")
    model: ModelConfig = doc(ModelConfig(), "The Decision Transformer.")
    pretrain: PretrainConfig = doc(PretrainConfig(), "Offline pretraining.")
    eval: EvalConfig = doc(EvalConfig(), "Evaluation protocol.")
    online: OnlineConfig = doc(OnlineConfig(), "Online finetuning harness shared by every method.")
    methods: dict[str, dict[str, Any]] = doc({}, "Named method entries: {name: {algo: ALGO, online: {...}, **params}}; "
                                                 "algo defaults to the name. Parameters are validated by the "
                                                 "algorithm's own Config.")
    resources: ResourcesConfig = doc(ResourcesConfig(), "What each workflow job asks a scheduler for, per rule.")
    report: ReportConfig = doc(ReportConfig(), "The report's treatment of small samples.")

    def validate(self) -> None:
        from dtrl.tasks import get_task

        for t in list(self.grid.tasks) + list(self.grid.ablation_tasks):
            try:
                get_task(t)
            except KeyError as e:
                raise ConfigError(f"grid.tasks: {e}") from None
        for name in list(self.grid.methods) + list(self.grid.ablations):
            self.method(name)  # raises on unknown names and bad parameters

    def method(self, name: str) -> "MethodSpec":
        """The typed spec of method entry ``name`` (validated against its algorithm's Config)."""
        from dtrl.methods import ALGORITHMS, get_algorithm

        entry = copy.deepcopy(self.methods.get(name, {}))
        if name not in self.methods and name not in ALGORITHMS:
            raise ConfigError(f"unknown method '{name}': not an entry of `methods` ({', '.join(self.methods) or 'none'}) "
                              f"nor an algorithm ({', '.join(sorted(ALGORITHMS))})")
        algo = entry.pop("algo", name)
        if algo not in ALGORITHMS:
            raise ConfigError(f"methods.{name}.algo: unknown algorithm '{algo}'. Known: {', '.join(sorted(ALGORITHMS))}")
        online_over = entry.pop("online", {})
        online = from_dict(OnlineConfig, {**to_dict(self.online), **online_over}, f"methods.{name}.online")
        cls = get_algorithm(algo)
        params = from_dict(cls.Config, entry, f"methods.{name}")
        return MethodSpec(name=name, algo=algo, params=params, online=online)


@dataclass
class MethodSpec:
    name: str
    algo: str
    params: Any
    online: OnlineConfig


def load_config(path: str | Path | list[str | Path] | tuple | None = None,
                overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load and validate an experiment config; ``overrides`` is a nested mapping merged on top.

    ``path`` may be one file or a list of files merged in order (later files win key by key,
    mappings merge recursively, other values are replaced), as Snakemake merges ``configfile:``
    and ``--configfile``.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    data: dict[str, Any] = {}
    for p in paths:
        data = deep_merge(data, load_yaml(p))
    if overrides:
        data = deep_merge(data, overrides)
    where = " + ".join(str(p) for p in paths) or "<defaults>"
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["pretrain.updates=100", "model.n_layers=2"]`` -> nested dict, values parsed as YAML."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, value = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def describe(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every field, recursively: the source of config/README.md."""
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(default):
            rows.append((key, "", f.metadata.get("doc", "")))
            rows.extend(describe(type(default), key + "."))
        else:
            rows.append((key, repr(to_dict(default)), f.metadata.get("doc", "")))
    return rows
