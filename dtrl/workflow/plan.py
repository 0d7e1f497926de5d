"""`dtrl plan`: the planned cost of a grid before anything runs.

For every job the workflow would run (behaviour per env family, data per task, pretrain per task and
seed, finetune per method, task and seed, exactly the job list of ``workflow/rules/common.smk``) the
plan counts the env steps and gradient updates the config asks for, and turns them into seconds with
the throughputs in ``dtrl/reference/throughput.csv``: env steps/s and updates/s measured by the
benchmark scripts (``scripts/bench_rollout.py``, ``scripts/bench_pretrain.py``) and by the suite's
own runs, one block of rows per device kind, each row saying where its number came from and whether
it was measured or is an estimate.

How counts become seconds (one reading, printed with the plan):

* a rate is taken from the row of the device kind and kind nearest in env count (log scale) and then
  in model size; DT update rates are scaled by the ratio of a model-size cost proxy (tokens x
  layers x (12 d^2 + 6 K d), the transformer's multiply-adds per update) -- fully on CPU, and only
  towards slower on a GPU, where small models are bound by kernel launches, not arithmetic; rollout
  rates are not scaled;
* a finetuning run's online env steps are its budget (``online.env_steps``), its policy and critic
  updates follow from the method's own settings, per task where the config has per-task overrides
  (GRPO-DT: epochs x minibatches per iteration of M x G continuations; ODT: updates per iteration of
  whole episodes, at least the loop's minimum env steps; ODT+TD3: the same DT updates, policy_delay
  critic updates per DT update and the critic warmup; IQL: offline updates + utd per env step, each
  an actor and a critic step);
* methods whose iterations are whole episodes (ODT, ODT+TD3, GRPO-DT's exploration) need an episode
  length: ``--episode-len``, else the task's dataset summary (transitions / episodes) when it exists,
  else ``dtrl/reference/episode_length.csv``, else the task's episode limit (the longest, so the fewest
  ODT updates: a lower bound on their cost);
* evaluation episodes are charged at the episode length too; the behaviour (SAC) run is charged its
  full ``sac_steps``, an upper bound when it stops at 'medium'.

Wall time on N parallel job slots is the total job time / N (ideal packing: a lower bound; a GPU
box runs one DT job at a time per GPU unless the profile says otherwise).
"""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dtrl.config.experiment import ExperimentConfig

THROUGHPUT_FILE = "throughput.csv"
EPISODE_LENGTH_FILE = "episode_length.csv"
# The parallel job slots of a device kind when the user does not say: the cores of the CPU kind it
# was measured on; one GPU for GPU kinds (one DT job holds it).
DEFAULT_SLOTS = {"cpu-2core": 2}
NUMERIC = ("n_envs", "n_layers", "embed_dim", "context_len", "batch_size", "hidden")


# ----------------------------------------------------------------------------------------------
# The throughput table
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Throughput:
    device: str
    kind: str
    value: float
    unit: str
    status: str  # measured | estimate
    source: str
    n_envs: int | None = None
    n_layers: int | None = None
    embed_dim: int | None = None
    context_len: int | None = None
    batch_size: int | None = None
    hidden: int | None = None


def _read_reference(name: str, path: str | Path | None) -> list[dict[str, str]]:
    text = Path(path).read_text() if path else resources.files("dtrl.reference").joinpath(name).read_text()
    return list(csv.DictReader(text.splitlines()))


def load_throughputs(path: str | Path | None = None) -> list[Throughput]:
    """The rows of ``dtrl/reference/throughput.csv`` (or of ``path``, same columns)."""
    rows = []
    for r in _read_reference(THROUGHPUT_FILE, path):
        if r["status"] not in ("measured", "estimate"):
            raise ValueError(f"{path or THROUGHPUT_FILE}: status must be 'measured' or 'estimate', got {r['status']!r}")
        nums = {k: int(r[k]) for k in NUMERIC if r.get(k)}
        rows.append(Throughput(device=r["device"], kind=r["kind"], value=float(r["value"]), unit=r["unit"],
                               status=r["status"], source=r["source"], **nums))
    return rows


def load_episode_lengths(path: str | Path | None = None) -> dict[str, tuple[float, str]]:
    return {r["task"]: (float(r["value"]), r["status"]) for r in _read_reference(EPISODE_LENGTH_FILE, path)}


def dt_cost(n_layers: int, embed_dim: int, context_len: int, batch_size: int) -> float:
    """Multiply-adds per DT update, up to a constant: 3K tokens per context, each through every
    block's projections and MLP (12 d^2) and attention over 3K tokens (6 K d)."""
    tokens = batch_size * 3 * context_len
    return float(tokens * n_layers * (12 * embed_dim ** 2 + 6 * context_len * embed_dim))


@dataclass
class Rate:
    value: float  # per second
    row: Throughput
    scale: float = 1.0  # value = row.value * scale


class Rates:
    """Rate look-ups for one device kind; remembers every row it used."""

    def __init__(self, device: str, table: list[Throughput]):
        self.device = device
        self.rows = [r for r in table if r.device == device]
        if not self.rows:
            kinds = sorted({r.device for r in table})
            raise ValueError(f"no throughputs for device kind '{device}' in the table; known: {', '.join(kinds)}")
        self.gpu = not device.startswith("cpu")
        self.used: dict[tuple, Rate] = {}

    def get(self, kind: str, n_envs: int | None = None, model: tuple[int, int, int, int] | None = None,
            hidden: int | None = None) -> Rate:
        rows = [r for r in self.rows if r.kind == kind]
        if not rows:
            raise ValueError(f"the throughput table has no '{kind}' row for device kind '{self.device}'")

        def dist(r: Throughput) -> tuple[float, float]:
            d_env = abs(math.log(max(r.n_envs, 1)) - math.log(max(n_envs, 1))) if n_envs and r.n_envs else 0.0
            d_size = 0.0
            if model and r.n_layers:
                d_size = abs(math.log(dt_cost(*model)) - math.log(self._row_cost(r, model)))
            elif hidden and r.hidden:
                d_size = abs(math.log(hidden) - math.log(r.hidden))
            return d_env, d_size

        row = min(rows, key=dist)
        scale = 1.0
        if model and row.n_layers and kind.startswith("dt_update"):
            ratio = self._row_cost(row, model) / dt_cost(*model)  # > 1: the target model is cheaper
            scale = min(ratio, 1.0) if self.gpu else ratio
        rate = Rate(row.value * scale, row, scale)
        self.used[(kind, row.n_envs, row.n_layers, row.hidden, round(scale, 6))] = rate
        return rate

    @staticmethod
    def _row_cost(r: Throughput, model: tuple[int, int, int, int]) -> float:
        return dt_cost(r.n_layers or model[0], r.embed_dim or model[1], r.context_len or model[2],
                       r.batch_size or model[3])


# ----------------------------------------------------------------------------------------------
# Jobs
# ----------------------------------------------------------------------------------------------

@dataclass
class JobCost:
    rule: str
    name: str  # wildcards, e.g. grpo/hopper-random/seed0
    method: str = ""
    env_steps: float = 0.0  # training env steps (the budget), SAC steps, dataset rollout steps
    eval_steps: float = 0.0
    updates: float = 0.0  # policy updates (the DT, IQL's actor, SAC's actor)
    critic_updates: float = 0.0  # critic / value-function updates
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def charge(self, count: float, rate: Rate) -> None:
        if count > 0:
            self.seconds += count / rate.value


class Planner:
    def __init__(self, exp: ExperimentConfig, device: str, table: list[Throughput] | None = None,
                 episode_len: float | None = None, episode_lengths: dict | None = None):
        self.exp = exp
        self.rates = Rates(device, load_throughputs() if table is None else table)
        self.episode_len_override = episode_len
        self.episode_lengths = load_episode_lengths() if episode_lengths is None else episode_lengths
        self.episode_sources: dict[str, str] = {}

    # -- episode length ----------------------------------------------------------------------------
    def episode_len(self, task_name: str) -> float:
        from dtrl.util.io import read_json
        from dtrl.tasks import get_task

        task = get_task(task_name)
        if self.episode_len_override:
            n, src = float(self.episode_len_override), "--episode-len"
        elif (p := Path(self.exp.results) / "data" / f"{task_name}.json").exists() and \
                (s := read_json(p)).get("episodes"):
            n, src = s["transitions"] / s["episodes"], f"dataset summary {p}"
        elif task_name in self.episode_lengths:
            n, status = self.episode_lengths[task_name]
            src = f"dtrl/reference/{EPISODE_LENGTH_FILE} ({status})"
        else:
            n, src = float(task.max_episode_steps), "the episode limit (no measurement)"
        n = min(n, float(task.max_episode_steps))
        self.episode_sources[task_name] = f"{n:.0f} steps, from {src}"
        return n

    def _for(self, task_name: str, method: str | None = None) -> ExperimentConfig:
        """The config as it applies to (task, method): per-family/task overrides where the config has them."""
        for_task = getattr(self.exp, "for_task", None)
        return for_task(task_name, method) if for_task else self.exp

    def _model(self, batch: int, ctx: int | None = None, exp: ExperimentConfig | None = None
               ) -> tuple[int, int, int, int]:
        m = (exp or self.exp).model
        return (m.n_layers, m.embed_dim, ctx or m.context_len, batch)

    # -- per rule ----------------------------------------------------------------------------------
    def behaviour(self, family: str) -> JobCost:
        g = self.exp.data.generator
        j = JobCost("behaviour", family, env_steps=g.sac_steps, updates=g.sac_steps * g.sac_utd,
                    critic_updates=g.sac_steps * g.sac_utd)
        j.charge(g.sac_steps, self.rates.get("sac", n_envs=g.sac_envs, hidden=g.sac_hidden))
        j.notes.append("full sac_steps (an upper bound when the run stops at 'medium')")
        return j

    def data(self, task_name: str) -> JobCost:
        from dtrl.tasks import get_task

        g = self.exp.data.generator
        j = JobCost("data", task_name)
        if task_name in self.exp.data.sources:
            j.notes.append("read from data.sources: no generation")
        elif get_task(task_name).quality != "medium-replay":  # medium-replay is SAC's buffer: no rollout
            j.env_steps = g.transitions
            j.charge(g.transitions, self.rates.get("env_rollout", n_envs=g.rollout_envs))
        return j

    def _dt_update_kind(self, compile_mode: str) -> str:
        """The measured rate a DT update is charged at: compiled on a GPU when the run compiles (pretraining's
        ``compile``, ODT's and ODT+TD3's, the same switch) and such a rate was measured, else eager."""
        kind = "dt_update_compiled" if self.rates.gpu and compile_mode != "off" else "dt_update"
        return kind if any(r.kind == kind for r in self.rates.rows) else "dt_update"

    def pretrain(self, task_name: str, seed: int, head: str = "gaussian", backbone: str = "dt") -> JobCost:
        # another backbone's pretraining resolves its own overrides (Reinformer's model size, updates)
        exp = self._for(task_name) if backbone == "dt" else self.exp.for_task(task_name, backbone=backbone)
        p = exp.pretrain
        name = (f"{task_name}/seed{seed}" + ("" if head == "gaussian" else f"/{head}")
                + ("" if backbone == "dt" else f"/{backbone}"))
        j = JobCost("pretrain", name, updates=p.updates)
        j.charge(p.updates, self.rates.get(self._dt_update_kind(p.compile), model=self._model(p.batch_size, exp=exp)))
        self._charge_eval(j, task_name, p.eval_episodes, dt=True, exp=exp)
        return j

    def _charge_eval(self, j: JobCost, task_name: str, episodes: float, dt: bool,
                     exp: ExperimentConfig | None = None) -> None:
        exp = exp or self.exp
        steps = episodes * self.episode_len(task_name)
        j.eval_steps += steps
        n = exp.eval.n_envs or exp.eval.episodes
        j.charge(steps, self.rates.get("dt_rollout", n_envs=n, model=self._model(n, exp.model.eval_context_len, exp))
                 if dt else self.rates.get("env_rollout", n_envs=n))

    def finetune(self, method: str, task_name: str, seed: int) -> JobCost:
        from dtrl.tasks import get_task

        exp = self._for(task_name, method)
        spec = exp.method(method)
        cfg, budget = spec.params, spec.online.env_steps
        j = JobCost("finetune", f"{method}/{task_name}/seed{seed}", method=method)
        ep = self.episode_len(task_name)
        algo = spec.algo
        mdl = exp.model
        if algo == "none":
            self._charge_eval(j, task_name, exp.eval.final_episodes, dt=True, exp=exp)
            return j
        j.env_steps = budget
        if algo == "grpo":
            k = min(cfg.rollout_context_len or mdl.eval_context_len, mdl.context_len)
            units = cfg.reset_points * cfg.group_size
            group_steps = units * (cfg.traj_len + cfg.eval_len)  # members stop early when an episode ends
            explore = cfg.explore_episodes * ep
            iters = math.ceil(budget / (explore + group_steps))
            j.updates = iters * cfg.epochs * math.ceil(units / max(1, min(cfg.minibatch_size, units)))
            share = explore / (explore + group_steps)
            j.charge(budget * share, self.rates.get("dt_rollout", n_envs=cfg.explore_episodes,
                                                    model=self._model(1, k, exp)))
            j.charge(budget * (1 - share), self.rates.get("dt_rollout", n_envs=units, model=self._model(units, k, exp)))
            j.charge(j.updates, self.rates.get("dt_update", model=self._model(
                min(cfg.minibatch_size, units) * cfg.traj_len, k, exp)))
            j.notes.append(f"{iters} iterations of <= {explore + group_steps:.0f} env steps")
        elif algo in ("odt", "odt_td3"):
            per_iter = cfg.rollouts_per_iteration * ep
            try:  # whole episodes until the iteration holds the minimum (1000 on random data, the reference's)
                from baselines.common import min_env_steps_per_iteration

                per_iter = max(per_iter, min_env_steps_per_iteration(cfg, get_task(task_name)))
            except ImportError:
                pass
            iters = math.ceil(budget / per_iter)
            j.updates = iters * cfg.updates_per_iteration  # DT (policy) updates
            k = cfg.rollout_context_len or mdl.eval_context_len
            j.charge(budget, self.rates.get("dt_rollout", n_envs=cfg.rollouts_per_iteration,
                                            model=self._model(cfg.rollouts_per_iteration, k, exp)))
            j.charge(j.updates, self.rates.get(self._dt_update_kind(cfg.compile),
                                               model=self._model(cfg.batch_size, exp=exp)))
            if algo == "odt_td3":  # policy_delay critic updates (an MLP) per DT update, after the critic warmup
                j.critic_updates = cfg.critic_warmup_updates + j.updates * cfg.policy_delay
                j.charge(j.critic_updates, self.rates.get("mlp_update", hidden=max(cfg.critic_hidden)))
            j.notes.append(f"{iters} iterations of ~{per_iter:.0f} env steps")
        elif algo == "iql":
            online = budget * cfg.utd
            j.updates = j.critic_updates = cfg.offline_updates + online  # one actor and one critic step each
            j.charge(j.updates, self.rates.get("mlp_update", hidden=max(cfg.hidden_dims)))
            j.charge(budget, self.rates.get("env_rollout", n_envs=cfg.n_envs))
        else:
            j.charge(budget, self.rates.get("dt_rollout", n_envs=1, model=self._model(1, exp=exp)))
            j.notes.append(f"no cost model for algorithm '{algo}': env steps charged at one env's DT rate, "
                           "updates not charged")
        evals = math.ceil(budget / spec.online.eval_every_env_steps) + 1
        self._charge_eval(j, task_name, evals * exp.eval.episodes + exp.eval.final_episodes, dt=algo != "iql", exp=exp)
        return j

    def jobs(self) -> list[JobCost]:
        """Every job of the workflow's DAG for this config (common.smk's RUNS, PRETRAIN, TASKS, FAMILIES)."""
        from dtrl.config.registry import get_algorithm
        from dtrl.report.runs import expected_runs
        from dtrl.tasks import get_task

        runs = expected_runs(self.exp)
        algos = {m: get_algorithm(self.exp.method(m).algo) for m in {m for m, _, _ in runs}}
        needs_dt = {m: bool(getattr(cls, "needs_pretrained_dt", True)) for m, cls in algos.items()}
        # (action head, backbone): a method with another head or backbone than the stochastic DT has its own
        # pretraining
        kind = {m: self.exp.pretrained_kind(m) or ("gaussian", "dt") for m in algos}
        tasks = sorted({t for _, t, _ in runs})
        generated = [t for t in tasks if t not in self.exp.data.sources]
        families = sorted({get_task(t).family.name for t in generated if get_task(t).quality != "random"})
        out = [self.behaviour(f) for f in families]
        out += [self.data(t) for t in tasks]
        out += [self.pretrain(t, s, *k) for t, s, k in sorted({(t, s, kind[m]) for m, t, s in runs if needs_dt[m]})]
        out += [self.finetune(m, t, s) for m, t, s in runs]
        return out


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------

@dataclass
class Plan:
    device: str
    slots: int
    jobs: list[JobCost]
    rates: list[Rate]
    episode_sources: dict[str, str]
    budgets: dict[str, int]  # online method -> online.env_steps

    @property
    def job_seconds(self) -> float:
        return sum(j.seconds for j in self.jobs)

    @property
    def wall_seconds(self) -> float:
        return self.job_seconds / self.slots

    def per_rule(self) -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for j in self.jobs:
            r = rows.setdefault(j.rule, {"rule": j.rule, "jobs": 0, "env_steps": 0.0, "eval_steps": 0.0,
                                         "updates": 0.0, "critic_updates": 0.0, "seconds": 0.0})
            r["jobs"] += 1
            for k in ("env_steps", "eval_steps", "updates", "critic_updates", "seconds"):
                r[k] += getattr(j, k)
        return list(rows.values())

    def per_method(self) -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for j in self.jobs:
            if j.rule != "finetune":
                continue
            r = rows.setdefault(j.method, {"method": j.method, "runs": 0, "env_steps": 0.0, "updates": 0.0,
                                           "critic_updates": 0.0, "seconds": 0.0})
            r["runs"] += 1
            for k in ("env_steps", "updates", "critic_updates", "seconds"):
                r[k] += getattr(j, k)
        return list(rows.values())

    def budget_groups(self) -> dict[int, list[str]]:
        """Online methods grouped by their env-step budget: one group = a matched-budget grid."""
        groups: dict[int, list[str]] = {}
        for m, b in self.budgets.items():
            groups.setdefault(b, []).append(m)
        return groups


def make_plan(exp: ExperimentConfig, device: str | None = None, slots: int | None = None,
              table: list[Throughput] | None = None, episode_len: float | None = None,
              episode_lengths: dict | None = None) -> Plan:
    device = device or default_device(exp)
    planner = Planner(exp, device, table, episode_len, episode_lengths)
    jobs = planner.jobs()
    from dtrl.report.runs import expected_runs

    budgets = {}
    for m in dict.fromkeys(m for m, _, _ in expected_runs(exp)):
        spec = exp.method(m)
        if spec.algo != "none":
            budgets[m] = spec.online.env_steps
    return Plan(device=device, slots=slots or DEFAULT_SLOTS.get(device, 1), jobs=jobs,
                rates=list(planner.rates.used.values()), episode_sources=planner.episode_sources, budgets=budgets)


def default_device(exp: ExperimentConfig) -> str:
    return "cpu-2core" if exp.device == "cpu" else "h100"


def _count(x: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.0f}"


def _hours(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min"


def format_plan(plan: Plan, exp: ExperimentConfig) -> str:
    gpu = not plan.device.startswith("cpu")
    unit = "GPU" if gpu else "CPU core"
    lines = [f"dtrl plan: {len(plan.jobs)} jobs, device kind {plan.device}, {plan.slots} parallel job slot(s)", "",
             f"{'rule':<10} {'jobs':>5} {'env steps':>10} {'eval steps':>11} {'policy upd':>11} {'critic upd':>11} "
             f"{'est. time':>11}"]
    keys = ("env_steps", "eval_steps", "updates", "critic_updates", "seconds")
    tot = {k: sum(r[k] for r in plan.per_rule()) for k in keys}
    for r in plan.per_rule() + [{"rule": "total", "jobs": len(plan.jobs), **tot}]:
        lines.append(f"{r['rule']:<10} {r['jobs']:>5} {_count(r['env_steps']):>10} {_count(r['eval_steps']):>11} "
                     f"{_count(r['updates']):>11} {_count(r['critic_updates']):>11} {_hours(r['seconds']):>11}")
    lines += ["", f"{'finetune method':<26} {'runs':>5} {'env steps/run':>14} {'policy upd/run':>15} "
                  f"{'critic upd/run':>15} {'time/run':>9}"]
    for r in plan.per_method():
        n = r["runs"]
        lines.append(f"{r['method']:<26} {n:>5} {_count(r['env_steps'] / n):>14} {_count(r['updates'] / n):>15} "
                     f"{_count(r['critic_updates'] / n):>15} {_hours(r['seconds'] / n):>9}")
    groups = plan.budget_groups()
    if len(groups) == 1:
        (b, ms), = groups.items()
        lines += ["", f"online env-step budget: matched, {_count(b)} for every online method ({', '.join(ms)})"]
    elif groups:
        lines += ["", "online env-step budgets (not matched):"]
        lines += [f"  {_count(b):>6}: {', '.join(ms)}" for b, ms in sorted(groups.items())]
    lines += ["", f"estimated {unit}-hours: {plan.job_seconds / 3600:.2f}  ->  wall time on {plan.slots} slot(s): "
                  f"{_hours(plan.wall_seconds)} (ideal packing: a lower bound)", "",
              "episode lengths assumed: " + "; ".join(f"{t} {s}" for t, s in sorted(plan.episode_sources.items())),
              "", "throughputs used (dtrl/reference/throughput.csv):"]
    for rate in sorted(plan.rates, key=lambda r: (r.row.kind, r.row.n_envs or 0)):
        r = rate.row
        size = "" if not r.n_layers else f" {r.n_layers}x{r.embed_dim} K{r.context_len}" + (
            f" B{r.batch_size}" if r.batch_size else "")
        size += f" hidden {r.hidden}" if r.hidden else ""
        envs = f" envs {r.n_envs}" if r.n_envs else ""
        scaled = f", x{rate.scale:.3g} for this grid's size = {rate.value:.4g}" if abs(rate.scale - 1) > 1e-9 else ""
        lines.append(f"  {r.kind}{envs}{size}: {r.value:g} {r.unit} [{r.status}]{scaled}")
    if any(rate.row.status == "estimate" for rate in plan.rates):
        lines.append("  (rows marked [estimate] are not measurements; see their source column)")
    return "\n".join(lines) + "\n"


def cmd_plan(exp: ExperimentConfig, device: str | None, slots: int | None, episode_len: float | None) -> int:
    from dtrl.config import ConfigError

    try:
        plan = make_plan(exp, device, slots, episode_len=episode_len)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    sys.stdout.write(format_plan(plan, exp))
    return 0
