"""Config sections of the workflow around the runs: what each Snakemake job asks a scheduler for
(``resources``) and how the report treats small samples (``report``)."""

from __future__ import annotations

from dataclasses import dataclass, make_dataclass

from dtrl.config import doc, require


@dataclass
class JobResources:
    threads: int
    mem_mb: int
    runtime: int

    def validate(self) -> None:
        require(self.threads >= 0, "resources.<rule>.threads must be >= 0 (0 = the top-level threads)")
        require(self.mem_mb >= 1 and self.runtime >= 1, "resources.<rule>.mem_mb and runtime must be >= 1")


# Threads per job when neither resources.<rule>.threads nor the top-level `threads` is set.
PAPER_THREADS = {"behaviour": 4, "data": 4, "pretrain": 4, "finetune": 4, "report": 1}


def _job(rule: str, mem_mb: int, runtime: int) -> type:
    """A JobResources class whose field defaults are this rule's: a YAML entry that sets one key (say
    `finetune: {mem_mb: 2000}`) keeps the rule's other defaults, not another rule's."""
    return make_dataclass(f"{rule.capitalize()}Resources", [
        ("threads", int, doc(0, "CPU threads per job (Snakemake threads, SLURM cpus-per-task); torch runs with "
                                f"exactly this many. 0 = the top-level `threads` if set, else {PAPER_THREADS[rule]}.")),
        ("mem_mb", int, doc(mem_mb, "Memory per job in MB (SLURM --mem).")),
        ("runtime", int, doc(runtime, "Time limit per job in minutes (SLURM --time). A job killed at the limit is "
                                      "resubmitted by the SLURM profile and resumes from its checkpoint.")),
    ], bases=(JobResources,), namespace={"__module__": __name__})


BehaviourResources = _job("behaviour", 8000, 720)
DataResources = _job("data", 8000, 240)
PretrainResources = _job("pretrain", 16000, 360)
FinetuneResources = _job("finetune", 16000, 1440)
ReportResources = _job("report", 4000, 60)


@dataclass
class ResourcesConfig:
    """Requests per rule. The defaults are sized for the paper grid on a GPU node (not measured on this
    suite's machines, which have no GPU: generous on purpose); config/quick.yaml declares small ones
    from the quick grid's measured use. A profile's `set-resources` still overrides these per rule."""

    gpus: int | None = doc(None, "GPUs each DT job (pretrain, finetune) and each SAC behaviour run asks for; null = 1 "
                                 "unless its device (`device`, `data.generator.device` for SAC) is cpu. Set 0 on a "
                                 "CPU-only cluster when the device is auto.")
    behaviour: BehaviourResources = doc(BehaviourResources(), "SAC behaviour run per env family.")
    data: DataResources = doc(DataResources(), "Dataset per task.")
    pretrain: PretrainResources = doc(PretrainResources(), "Offline pretraining per (task, seed).")
    finetune: FinetuneResources = doc(FinetuneResources(), "Finetuning run per (method, task, seed), external "
                                                           "commands included.")
    report: ReportResources = doc(ReportResources(), "Tables and figures (runs locally).")

    def validate(self) -> None:
        require(self.gpus is None or self.gpus >= 0, "resources.gpus must be null or >= 0")

    def threads(self, rule: str, top_threads: int) -> int:
        """Threads of a job of ``rule``: its own setting, else the experiment's `threads`, else the default."""
        return getattr(self, rule).threads or (top_threads if top_threads > 0 else PAPER_THREADS[rule])


@dataclass
class ReportConfig:
    min_runs_for_ci: int = doc(3, "Runs (seeds that finished every task) a method needs before the report prints a "
                                  "bootstrap CI for it (findings, aggregates, probability of improvement, performance-"
                                  "profile and learning-curve bands); "
                                  "with fewer, the point estimate is shown and the CI left empty with a note. With 2 "
                                  "runs per task the median, mean and IQM of each task coincide and the percentile "
                                  "bootstrap has 3 outcomes per task, so its interval says little about uncertainty "
                                  "(rliable: Agarwal et al. 2021 recommend reporting CIs over enough runs; rliable "
                                  "itself computes an interval from any number).")
    budget_tolerance: float = doc(0.10, "Relative difference of env steps per run above which two methods' budgets "
                                        "count as not matched: the main table and every finding that compares them "
                                        "say so, with both budgets (0.10 = they differ by more than 10% of the larger).")

    def validate(self) -> None:
        require(self.min_runs_for_ci >= 2, "report.min_runs_for_ci must be >= 2 (a bootstrap needs two runs)")
        require(0 <= self.budget_tolerance < 1, "report.budget_tolerance must be in [0, 1)")
