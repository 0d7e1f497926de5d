"""Published reference numbers, kept as data so reports can show them beside ours.

``yan2024_tables.csv``: Yan, Schwing & Wang (NeurIPS 2024, "Reinforcement Learning Gradients as Vitamin
for Online Finetuning Decision Transformers"), Tables 1-3 (MuJoCo, Adroit, AntMaze), every column, one
row per (task, method): the D4RL normalised score after online finetuning (``final``) and its change over
finetuning (``increase``), as the paper prints ``final(+increase)``. ``yan2024_averages.csv``: the tables'
printed average rows. ``yan2024.md`` says where each number comes from (pages, budgets, dataset versions,
the printed averages that disagree with their rows). The numbers were obtained on D4RL's datasets and
gym's v2 (MuJoCo) / v1 (Adroit) environments; dtrl runs Gymnasium v5 (and gymnasium-robotics) with
locally generated D4RL-recipe datasets unless real D4RL files are configured, so they are a reference
point, not a like-for-like comparison.

``throughput.csv`` and ``episode_length.csv`` are dtrl's own measurements, read by ``dtrl plan``.

Reinformer (Zhuang et al., ICML 2024, arXiv 2405.08740; the second backbone, dtrl/models/reinformer.py): not held.
Its paper tabulates offline D4RL v2 normalised scores (no online finetuning), which belong beside the
offline `none` entry on the Reinformer backbone. The stored copies of the paper give its opening only and
its code repository (Dragon-Zhuang/Reinformer @61eaed9, README.md) lists no scores, so they could not be
transcribed offline. Whoever does: a sibling file ``zhuang2024_reinformer_d4rl_v2.csv`` (task, reinformer)
with its own label "published (Zhuang et al. 2024, offline, D4RL v2)", read by a loader like
:func:`published_scores`, keyed by (algo none, backbone reinformer) in the report.

``d4rl_dataset_stats.csv``: the D4RL datasets themselves (MuJoCo v2 and AntMaze v2), as Yan et al.
tabulate them (Tables 4-6): number of transitions and episode return as a D4RL normalised score, mean
and std over episodes. `dtrl data` prints the row beside a dataset of the same task, so a generated
dataset can be checked against the recipe it follows. (Adroit rows there give the mean only; not held.)
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

PUBLISHED_FILE = "yan2024_tables.csv"
AVERAGES_FILE = "yan2024_averages.csv"
SOURCE_FILE = "yan2024.md"
PUBLISHED_SOURCE = "Yan et al. 2024"
# Every published column, in the paper's order, keyed by a dtrl-style name.
PUBLISHED_COLUMNS = {"td3_bc": "TD3+BC", "iql": "IQL", "odt": "ODT", "pdt": "PDT", "td3": "TD3",
                     "ddpg_odt": "DDPG+ODT", "odt_td3": "ODT+TD3"}
# The published methods dtrl reimplements, keyed by the dtrl algorithm that does.
PUBLISHED_METHODS = {"iql": "IQL", "odt": "ODT", "odt_td3": "ODT+TD3"}
# Per benchmark family (dtrl.tasks' EnvFamily.suite): the paper's table, the datasets it used, and the
# online budget the paper states for it (yan2024.md).
SUITE_TABLES = {"locomotion": "Table 1 (MuJoCo)", "adroit": "Table 2 (Adroit)", "antmaze": "Table 3 (AntMaze)"}
SUITE_DATASETS = {"locomotion": "D4RL v2", "adroit": "D4RL v1", "antmaze": "D4RL v2"}
SUITE_BUDGETS = {"locomotion": 500_000, "adroit": 1_000_000, "antmaze": 1_000_000}


@dataclass(frozen=True)
class Cell:
    """One published cell: the score after finetuning and its increase over finetuning."""

    final: float
    increase: float

    @property
    def before(self) -> float:
        """The score before online finetuning (the offline-pretrained policy)."""
        return round(self.final - self.increase, 6)


@dataclass(frozen=True)
class Published:
    source: str
    cells: dict[tuple[str, str], Cell]  # (method, task) -> cell
    suites: dict[str, str]  # task -> benchmark family
    datasets: dict[str, str]  # task -> the dataset name the paper prints ('hopper-medium-v2')

    def cell(self, method: str, task: str) -> Cell | None:
        return self.cells.get((method, task))

    def score(self, method: str, task: str) -> float | None:
        """The final (after finetuning) score, or None where the paper has no such cell."""
        c = self.cell(method, task)
        return None if c is None else c.final

    def tasks(self, suite: str | None = None) -> list[str]:
        return [t for t, s in self.suites.items() if suite is None or s == suite]

    def methods(self) -> list[str]:
        return list(dict.fromkeys(m for m, _ in self.cells))


def _rows(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(resources.files(__package__).joinpath(name).read_text().splitlines()))


@dataclass(frozen=True)
class DatasetStats:
    dataset: str           # D4RL's dataset id, e.g. hopper-medium-replay-v2
    size: int              # transitions
    normalized_mean: float
    normalized_std: float
    source: str


DATASET_STATS_FILE = "d4rl_dataset_stats.csv"


def d4rl_dataset_stats(dataset: str | None) -> DatasetStats | None:
    """The published statistics of D4RL dataset ``dataset`` (e.g. hopper-medium-v2); None if not held."""
    if not dataset:
        return None
    rows = _rows(DATASET_STATS_FILE)
    first_source = rows[0]["source"]
    for r in rows:
        if r["dataset"] == dataset:
            source = first_source if r["source"] == "same table" else r["source"]
            return DatasetStats(dataset, int(r["size"]), float(r["normalized_mean"]), float(r["normalized_std"]),
                                source)
    return None


def published_scores() -> Published:
    """Yan et al. 2024's Tables 1-3 (see the module docstring and yan2024.md)."""
    rows = _rows(PUBLISHED_FILE)
    return Published(source=PUBLISHED_FILE,
                     cells={(r["method"], r["task"]): Cell(float(r["final"]), float(r["increase"])) for r in rows},
                     suites={r["task"]: r["suite"] for r in rows},
                     datasets={r["task"]: r["dataset"] for r in rows})


def published_averages() -> dict[tuple[str, str, str], Cell]:
    """The averages the paper prints: (suite, row, method) -> cell; row 'average' or, for AntMaze,
    'average (umaze + medium)'. Three disagree with their own rows (yan2024.md)."""
    return {(r["suite"], r["row"], r["method"]): Cell(float(r["final"]), float(r["increase"]))
            for r in _rows(AVERAGES_FILE)}


def budget_label(suite: str) -> str:
    """'500k env steps': the online budget the paper states for ``suite``."""
    n = SUITE_BUDGETS[suite]
    return f"{n / 1e6:g}M env steps" if n >= 1_000_000 else f"{n / 1e3:g}k env steps"
