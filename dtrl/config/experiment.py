"""The experiment config: one YAML file drives the CLI and the Snakemake workflow alike.

Sections: ``grid`` (methods x tasks x seeds), ``data``, ``model``, ``pretrain``, ``eval``,
``online`` (the harness shared by all online methods), ``methods`` (named method entries, each
an algorithm plus its parameters, so ablations are just more entries) and ``overrides``
(per-family / per-task / per-method settings, e.g. the reference code's walker2d learning rate).
``config/README.md`` documents every key; ``dtrl config --doc`` prints the same from the field
declarations.

Overrides are applied in one place, :meth:`ExperimentConfig.for_task`: every consumer (the CLI,
the workflow, pretraining, finetuning, evaluation) resolves ``(task, method)`` through it, so all
see the same values. ``dtrl config --task T [--method M]`` prints the resolved config.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtrl.config import ConfigError, doc, field_default, from_dict, load_yaml, to_dict
from dtrl.config.data import DataConfig
from dtrl.config.model import ModelConfig
from dtrl.config.online import EvalConfig, OnlineConfig
from dtrl.config.pretrain import PretrainConfig
from dtrl.config.workflow import ReportConfig, ResourcesConfig


@dataclass
class GridConfig:
    methods: list[str] = doc(["none"], "Method entries (keys of `methods`) or algorithm names to run.")
    tasks: list[str] = doc(["hopper-medium"], "Tasks (see `dtrl tasks`).")
    seeds: list[int] = doc([0, 1, 2], "Seeds; each (task, seed) gets one pretraining run shared by all DT methods.")
    ablations: list[str] = doc([], "Extra method entries run only on `ablation_tasks`, reported in the ablation table.")
    ablation_tasks: list[str] = doc([], "Tasks the ablation entries run on.")


# Sections an override entry may set, and the config class that validates each.
OVERRIDE_SECTIONS = {"model": ModelConfig, "pretrain": PretrainConfig, "eval": EvalConfig, "online": OnlineConfig}


@dataclass
class OverrideEntry:
    families: list[str] = doc([], "Env families it applies to (hopper, walker2d, ...); empty = every family.")
    tasks: list[str] = doc([], "Tasks it applies to (walker2d-medium, ...); empty = every task of the families.")
    methods: list[str] = doc([], "Method entry names or algorithm names it applies to (`odt` matches every entry "
                                 "whose algo is odt); empty = every method, and the task's pretraining.")
    backbones: list[str] = doc([], "Backbones it applies to (model.backbone, or a method entry's own `backbone`), "
                                   "e.g. Reinformer's reference hyperparameters for its pretraining; empty = every "
                                   "backbone.")
    source: str = doc("", "Where the values come from (repository, file, line); documentation only.")
    model: dict[str, Any] = doc({}, "`model` keys (only in entries without `methods`: one pretrained DT per task "
                                    "and seed serves every DT method).")
    pretrain: dict[str, Any] = doc({}, "`pretrain` keys (only in entries without `methods`, as for `model`).")
    eval: dict[str, Any] = doc({}, "`eval` keys.")
    online: dict[str, Any] = doc({}, "Harness (`online`) keys of the matching methods; they win over the method "
                                     "entry's own `online`.")
    params: dict[str, Any] = doc({}, "Algorithm parameters of the matching methods (needs `methods`), validated by "
                                     "each matching algorithm's Config; they win over the method entry's.")

    def matches(self, task: str, family: str, method: str | None, algo: str | None, backbone: str = "dt") -> bool:
        if self.backbones and backbone not in self.backbones:
            return False
        if self.families and family not in self.families:
            return False
        if self.tasks and task not in self.tasks:
            return False
        if self.methods and (method is None or (method not in self.methods and algo not in self.methods)):
            return False
        return True


@dataclass
class ExperimentConfig:
    results: str = doc("results", "Root of every output: data/, pretrain/, runs/, tables/, figures/, logs/.")
    device: str = doc("auto", "Torch device for DT training and rollouts: auto (cuda if available), cpu, cuda, cuda:N.")
    threads: int = doc(0, "torch CPU threads per job (0 = torch's default).")
    rollout_workers: int = doc(0, "Env worker processes per job that step the DT rollout engine's envs (dtrl.envs.workers): "
                                  "0 = in-process. Results are bit-identical either way; the policy forward stays "
                                  "one batched call in the job's process. Worth it when the job has cores to spare "
                                  "and steps many envs at once (GRPO-DT's groups, 64+ envs): use up to the job's "
                                  "cores - 1 (on a 16-core box running k jobs, 16/k - 1); keep 0 with few cores. "
                                  "`scripts/bench_rollout.py --workers` measures the gain.")
    jobs_per_gpu: int = doc(1, "GPU jobs (pretrain, finetune, SAC behaviour) that share one GPU under the local-gpu "
                               "profile (workflow/profiles/local-gpu): each asks for 1000/k of the profile's "
                               "gpu_milli, which provides 1000 per GPU. 1 until measured: a small DT uses a "
                               "fraction of a large GPU, so k = 2-8 can raise the grid's throughput; "
                               "scripts/bench_jobs_per_gpu.py measures k = 1, 2, 4, 8 (see docs/performance.md). "
                               "With k > 1 start CUDA MPS (nvidia-cuda-mps-control -d) so the jobs' kernels run "
                               "concurrently, and give each job cores/k threads.")
    grid: GridConfig = doc(GridConfig(), "What to run.")
    data: DataConfig = doc(DataConfig(), "Dataset sources and the generator.")
    model: ModelConfig = doc(ModelConfig(), "The Decision Transformer.")
    pretrain: PretrainConfig = doc(PretrainConfig(), "Offline pretraining.")
    eval: EvalConfig = doc(EvalConfig(), "Evaluation protocol.")
    online: OnlineConfig = doc(OnlineConfig(), "Online finetuning harness shared by every method.")
    methods: dict[str, dict[str, Any]] = doc({}, "Named method entries: {name: {algo: ALGO, online: {...}, backbone: "
                                                 "B, **params}}; algo defaults to the name, backbone to "
                                                 "model.backbone (an entry on another backbone finetunes its own "
                                                 "pretraining, under pretrain_<backbone>/). Parameters are "
                                                 "validated by the algorithm's own Config.")
    overrides: list[OverrideEntry] = doc([], "Settings for some families / tasks / methods, applied on top of the "
                                             "sections above when a (task, method) is resolved: every matching "
                                             "entry in list order, later entries winning key by key. To change a "
                                             "value an entry sets, edit the entry (or drop them all: "
                                             "`--set overrides=[]`).")
    resources: ResourcesConfig = doc(ResourcesConfig(), "What each workflow job asks a scheduler for, per rule.")
    report: ReportConfig = doc(ReportConfig(), "The report's rules for small samples (no CI below min_runs_for_ci) "
                                               "and unmatched budgets.")

    def validate(self) -> None:
        from dtrl.tasks import get_task

        if not self.data.generator.device:  # SAC follows the experiment's device unless it names its own
            self.data.generator.device = self.device
        if not 1 <= self.jobs_per_gpu <= 32:
            raise ConfigError(f"jobs_per_gpu is {self.jobs_per_gpu}; use 1 (a GPU per job) up to 32 jobs per GPU")
        if self.rollout_workers < 0:
            raise ConfigError(f"rollout_workers is {self.rollout_workers}; use 0 (in-process) or a number of "
                              "env worker processes")
        for key in ("tasks", "ablation_tasks"):
            for t in getattr(self.grid, key):
                try:
                    get_task(t)
                except KeyError as e:
                    raise ConfigError(f"grid.{key}: {e}") from None
        self._validate_sources()
        for i, entry in enumerate(self.overrides):
            self._validate_override(i, entry)
        for name in list(self.grid.methods) + list(self.grid.ablations):
            self.method(name)  # raises on unknown names and bad parameters
        if self.overrides:  # every combination the grid will resolve must be valid too
            for t in self.grid.tasks:
                for name in self.grid.methods:
                    self.method(name, task=t)
            for t in self.grid.ablation_tasks:
                for name in self.grid.ablations:
                    self.method(name, task=t)

    def _validate_sources(self) -> None:
        """Every ``data.sources`` key is a known task, and none is a near miss of a grid task without a source:
        that task's dataset would be generated while the user believes it is read from the file they named."""
        import difflib

        from dtrl.tasks import get_task

        grid = list(self.grid.tasks) + list(self.grid.ablation_tasks)
        unsourced = [t for t in grid if t not in self.data.sources]
        for name in self.data.sources:
            try:
                get_task(name)
            except KeyError as e:
                raise ConfigError(f"data.sources: {e}") from None
            if name in grid:
                continue
            close = difflib.get_close_matches(name, unsourced, n=1)
            if close:
                raise ConfigError(f"data.sources: '{name}' is not a task of the grid (grid.tasks, grid.ablation_tasks)"
                                  f" but close to '{close[0]}', which is and has no source, so its dataset would be "
                                  f"generated instead of read. Did you mean '{close[0]}'? (A source of a task outside "
                                  "the grid that is no near miss of one is allowed: an unused entry)")

    def _validate_override(self, i: int, entry: OverrideEntry) -> None:
        from dtrl.config.registry import ALGORITHMS, get_algorithm
        from dtrl.tasks import get_task, known_families

        path = f"overrides[{i}]"
        for f in entry.families:
            if f not in known_families():
                raise ConfigError(f"{path}.families: unknown env family '{f}'. Known: {', '.join(known_families())}")
        for t in entry.tasks:
            try:
                get_task(t)
            except KeyError as e:
                raise ConfigError(f"{path}.tasks: {e}") from None
        from dtrl.config.registry import BACKBONES

        for b in entry.backbones:
            if b not in BACKBONES:
                raise ConfigError(f"{path}.backbones: unknown backbone {b!r}; use one of {', '.join(BACKBONES)}")
        for m in entry.methods:
            if m not in self.methods and m not in ALGORITHMS:
                raise ConfigError(f"{path}.methods: '{m}' is neither an entry of `methods` "
                                  f"({', '.join(self.methods) or 'none'}) nor an algorithm ({', '.join(sorted(ALGORITHMS))})")
        if entry.methods and (entry.model or entry.pretrain):
            raise ConfigError(f"{path}: an entry with `methods` cannot set `model` or `pretrain`: one pretrained DT "
                              "per task and seed serves every DT method; put those keys in an entry without `methods`")
        if entry.params and not entry.methods:
            raise ConfigError(f"{path}.params: algorithm parameters need `methods` (each algorithm has its own)")
        for section, cls in OVERRIDE_SECTIONS.items():
            values = getattr(entry, section)
            if values:
                from_dict(cls, {**to_dict(getattr(self, section)), **values}, f"{path}.{section}")
        if entry.params:
            algos = {m: (self.methods.get(m) or {}).get("algo", m) for m in entry.methods}
            for algo in sorted(set(algos.values())):
                if algo not in ALGORITHMS:
                    raise ConfigError(f"{path}.methods: unknown algorithm '{algo}'")
                from_dict(get_algorithm(algo).Config, entry.params, f"{path}.params")

    def for_task(self, task: str, method: str | None = None, backbone: str | None = None) -> "ExperimentConfig":
        """This config as it applies to ``task`` (and ``method``; None = the task's pretraining).

        Every matching override entry, in list order, is merged into ``model``, ``pretrain`` and
        ``eval``, and (for ``method``) into that method entry's ``online`` and parameters. The result
        has no overrides left, so it is the complete record of the settings a run used.

        The backbone it resolves for is ``backbone``, else ``method``'s own `backbone`, else model.backbone;
        entries match on it and the result's ``model.backbone`` is it. That field is set after validation:
        the grid's other methods (ODT, on the DT) stay valid although this run's model is another backbone.
        """
        from dtrl.tasks import get_task

        family = get_task(task).family.name
        algo = None
        if method is not None:
            algo = (self.methods.get(method) or {}).get("algo", method)
        if backbone is None:
            backbone = (self.methods.get(method) or {}).get("backbone", self.model.backbone)
        data = to_dict(self)
        data["overrides"] = []
        applied = []
        for i, entry in enumerate(self.overrides):
            if not entry.matches(task, family, method, algo, backbone):
                continue
            applied.append(i)
            for section in ("model", "pretrain", "eval"):
                data[section].update(copy.deepcopy(getattr(entry, section)))
            if method is None:
                data["online"].update(copy.deepcopy(entry.online))
            else:
                m = data["methods"].setdefault(method, {})
                m.setdefault("online", {}).update(copy.deepcopy(entry.online))
                m.update(copy.deepcopy(entry.params))
        out = self
        if applied:
            try:
                out = from_dict(ExperimentConfig, data)
            except ConfigError as e:
                raise ConfigError(f"{task}{'/' + method if method else ''} with overrides "
                                  f"{', '.join(f'[{i}]' for i in applied)}: {e}") from None
        if out.model.backbone != backbone:
            model = dataclasses.replace(out.model, backbone=backbone)
            model.validate()
            out = dataclasses.replace(out, model=model, overrides=[])
        return out

    def method(self, name: str, task: str | None = None) -> "MethodSpec":
        """The typed spec of method entry ``name`` (validated against its algorithm's Config).

        With ``task``, the override entries matching (task, name) are applied first (:meth:`for_task`).
        """
        from dtrl.config.registry import ALGORITHMS, get_algorithm

        if task is not None:
            return self.for_task(task, name).method(name)
        entry = copy.deepcopy(self.methods.get(name, {}))
        if name not in self.methods and name not in ALGORITHMS:
            raise ConfigError(f"unknown method '{name}': not an entry of `methods` ({', '.join(self.methods) or 'none'}) "
                              f"nor an algorithm ({', '.join(sorted(ALGORITHMS))})")
        algo = entry.pop("algo", name)
        if algo not in ALGORITHMS:
            raise ConfigError(f"methods.{name}.algo: unknown algorithm '{algo}'. Known: {', '.join(sorted(ALGORITHMS))}")
        online_over = entry.pop("online", {})
        backbone = entry.pop("backbone", self.model.backbone)
        online = from_dict(OnlineConfig, {**to_dict(self.online), **online_over}, f"methods.{name}.online")
        cls = get_algorithm(algo)
        params = from_dict(cls.Config, entry, f"methods.{name}")
        spec = MethodSpec(name=name, algo=algo, params=params, online=online, backbone=backbone)
        self._check_backbone(spec, cls)
        return spec

    def _check_backbone(self, spec: "MethodSpec", cls: type) -> None:
        """Refuse a method entry on a backbone its algorithm cannot finetune (one line, at config load)."""
        from dtrl.config.registry import BACKBONES

        where = f"methods.{spec.name}.backbone" if "backbone" in self.methods.get(spec.name, {}) else "model.backbone"
        if spec.backbone not in BACKBONES:
            raise ConfigError(f"{where}: unknown backbone {spec.backbone!r}; use one of {', '.join(BACKBONES)}")
        if not self.needs_pretrained(spec, cls) or spec.backbone == "dt":
            return
        allowed = getattr(cls, "backbones", ("dt",))
        if allowed is not None and spec.backbone not in allowed:
            raise ConfigError(f"{where}: {spec.algo} runs on the {', '.join(allowed)} backbone only "
                              f"({getattr(cls, 'backbone_refusal', 'it is written for the DT')}), not on "
                              f"{spec.backbone}")
        if getattr(spec.params, "relabel", False) not in (False, "none"):
            raise ConfigError(f"methods.{spec.name}.relabel: hindsight relabeling rewrites RTG tokens as target "
                              f"minus rewards, but the {spec.backbone} backbone predicts its RTG tokens; use "
                              "relabel: none")

    @staticmethod
    def needs_pretrained(spec: "MethodSpec", cls: type | None = None) -> bool:
        """Whether the method entry finetunes a pretrained model (an external command decides per entry)."""
        from dtrl.config.registry import get_algorithm

        cls = cls or get_algorithm(spec.algo)
        return bool(getattr(spec.params, "needs_pretrained_dt", getattr(cls, "needs_pretrained_dt", True)))

    def pretrained_kind(self, name: str) -> tuple[str, str] | None:
        """(action head, backbone) of the pretrained model method entry ``name`` finetunes, which names its
        pretraining directory (dtrl.config.pretrain.pretrain_dir); None when it needs none."""
        from dtrl.config.registry import get_algorithm

        spec = self.method(name)
        cls = get_algorithm(spec.algo)
        if not self.needs_pretrained(spec, cls):
            return None
        return getattr(cls, "pretrained_head", "gaussian"), spec.backbone



def backbone_of(exp: ExperimentConfig, method: str) -> str:
    """The sequence model method entry ``method`` runs on, as the report names it: its backbone (dt,
    reinformer) for a method that finetunes a pretrained model, 'mlp' for one that trains its own MLPs
    (IQL), 'external' for a command from another codebase."""
    kind = exp.pretrained_kind(method)
    if kind is not None:
        return kind[1]
    return "external" if exp.method(method).algo == "external" else "mlp"


@dataclass
class MethodSpec:
    name: str
    algo: str
    params: Any
    online: OnlineConfig
    backbone: str = "dt"  # model.backbone, or the entry's own `backbone:`


def load_config(path: str | Path | list[str | Path] | tuple | None = None,
                overrides: dict[str, Any] | None = None, set_items: list[str] | None = None) -> ExperimentConfig:
    """Load and validate an experiment config; ``overrides`` is a nested mapping merged on top.

    ``path`` may be one file or a list of files merged in order (later files win key by key,
    mappings merge recursively, other values are replaced), as Snakemake merges ``configfile:``
    and ``--configfile``. ``set_items``: the ``--set KEY=VALUE`` strings ``overrides`` was parsed from,
    so an error a value of one of them causes names that ``--set``, not the files.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    files: dict[str, Any] = {}
    for p in paths:
        files = deep_merge(files, load_yaml(p))
    data = deep_merge(files, overrides) if overrides else files
    where = " + ".join(str(p) for p in paths) or "<defaults>"
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as e:
        culprit = _first_bad_set(files, set_items) if set_items else None
        raise ConfigError(f"{culprit or where}: {e}") from None


def _first_bad_set(files: dict[str, Any], items: list[str]) -> str | None:
    """``--set ITEM`` of the first of ``items`` whose addition (in order) makes the config invalid; None when
    the files are invalid on their own."""
    def valid(data: dict[str, Any]) -> bool:
        try:
            from_dict(ExperimentConfig, data)
            return True
        except ConfigError:
            return False

    if not valid(files):
        return None
    data = files
    for item in items:
        data = deep_merge(data, parse_overrides([item]))
        if not valid(data):
            return f"--set {item}"
    return None


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
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"--set {item}: the value is not valid YAML ({problem}); quote strings, e.g. "
                              f"--set '{key}=\"...\"'") from None
    return out


def describe(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every field, recursively: the source of config/README.md."""
    import typing

    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        default = field_default(f)
        default = None if default is dataclasses.MISSING else default
        item = typing.get_args(hints[f.name])
        if dataclasses.is_dataclass(default):
            rows.append((key, "", f.metadata.get("doc", "")))
            rows.extend(describe(type(default), key + "."))
        else:
            rows.append((key, repr(to_dict(default)), f.metadata.get("doc", "")))
            if typing.get_origin(hints[f.name]) is list and item and dataclasses.is_dataclass(item[0]):
                rows.extend(describe(item[0], key + "[]."))  # the fields of each list entry
    return rows
