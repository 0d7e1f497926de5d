"""Published reference numbers, kept as data so reports can show them beside ours.

``yan2024_d4rl_v2.csv``: Yan, Schwing & Wang (NeurIPS 2024, "Reinforcement Learning Gradients as
Vitamin for Online Finetuning Decision Transformers"), final D4RL normalised score after online
finetuning, one column per method (named by the dtrl algorithm that reimplements it: ``iql``,
``odt``, ``odt_td3``), one row per task. The numbers were obtained on the D4RL **v2** datasets and
the gym v2 environments; dtrl runs on Gymnasium v5 with locally generated D4RL-recipe datasets unless
real D4RL files are configured, so they are a reference point, not a like-for-like comparison.

Adroit and AntMaze: not held. Yan et al. also tabulate ODT, ODT+TD3 and IQL on Adroit (Table 2, whose
caption reads "Average reward for each method in Adroit Environments before and after online
finetuning": returns, in whatever reward units their code used -- it divides Adroit rewards by 100 or
1000, RL_as_Vitamin @de8be0a main.py:249-251 -- not D4RL normalised scores) and on AntMaze. Their numbers
could not be read offline: the stored copies of arXiv 2410.24108v1 and of Luo & Zhu's arXiv 2601.00167v1
(which may restate the baselines) give the opening of each page only, and only the caption above came
through, from a third-party summary (liner.com). Whoever transcribes them: AntMaze rows go into this
file (D4RL's AntMaze score is 100 x success rate, already normalised; check the table says so); Adroit
rows go into a sibling file with their own label unless the table is in normalised score, since the
report's main table compares normalised scores.

Reinformer (Zhuang et al., ICML 2024, arXiv 2405.08740; the second backbone, dtrl/models/reinformer.py): not held.
Its paper tabulates offline D4RL v2 normalised scores (no online finetuning), which belong beside the
offline `none` entry on the Reinformer backbone. The stored copies of the paper give its opening only and
its code repository (Dragon-Zhuang/Reinformer @61eaed9, README.md) lists no scores, so they could not be
transcribed offline. Whoever does: a sibling file ``zhuang2024_reinformer_d4rl_v2.csv`` (task, reinformer)
with its own label "published (Zhuang et al. 2024, offline, D4RL v2)", read by a loader like
:func:`published_scores`, keyed by (algo none, backbone reinformer) in the report.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

PUBLISHED_FILE = "yan2024_d4rl_v2.csv"
PUBLISHED_LABEL = "published (Yan et al. 2024, D4RL v2)"
# Display names of the published methods, keyed by the dtrl algorithm that reimplements each.
PUBLISHED_METHODS = {"iql": "IQL", "odt": "ODT", "odt_td3": "ODT+TD3"}
# The online budget each published column was measured at, as the code behind it shows (docs/baselines.md):
# ODT and ODT+TD3 come from RL_as_Vitamin @de8be0a, whose MuJoCo runs stop at 600k online transitions
# (main.py:598-600); for IQL's column neither that repository nor the paper text we could read names one.
PUBLISHED_BUDGETS = {"iql": "budget not stated", "odt": "600k env steps", "odt_td3": "600k env steps"}


@dataclass(frozen=True)
class Published:
    source: str
    label: str
    scores: dict[str, dict[str, float]]  # algo -> task -> final normalised score

    def score(self, algo: str, task: str) -> float | None:
        return self.scores.get(algo, {}).get(task)

    def tasks(self) -> list[str]:
        return sorted({t for by_task in self.scores.values() for t in by_task})


def published_scores() -> Published:
    """The published final normalised scores of Yan et al. 2024 (see the module docstring)."""
    text = resources.files(__package__).joinpath(PUBLISHED_FILE).read_text()
    rows = list(csv.DictReader(text.splitlines()))
    algos = [c for c in rows[0] if c != "task"] if rows else []
    scores = {a: {r["task"]: float(r[a]) for r in rows if r[a] not in ("", None)} for a in algos}
    return Published(source=PUBLISHED_FILE, label=PUBLISHED_LABEL, scores=scores)
