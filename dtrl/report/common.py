"""What the report's tables, figures and page share: display names, the CI level, number formatting, the
seeded bootstrap and atomic writes. Kept apart so that build and page import it, not each other."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from dtrl.config.experiment import ExperimentConfig

# Display names by algorithm.
ALGO_LABELS = {"none": "DT (offline)", "grpo": "GRPO-DT", "qgrpo": "QGRPO", "ppo_dt": "PPO-DT", "odt": "ODT",
               "odt_td3": "ODT+TD3", "iql": "IQL"}
CI = 0.95  # the level of every bootstrap interval the report draws
MAIN_ALGO = "grpo"  # the method the probability-of-improvement figure compares against each baseline
# The update axis of every table and curve: optimizer steps of the acting policy (DT or actor),
# counted the same way for every method (dtrl.harness.online); critic steps are reported apart.
UPDATE_AXIS = "policy_updates"
# The compute axis of the learning curves: cumulative process CPU-seconds of the run (progress.csv).
COMPUTE_AXIS = "cpu_s"


def algo_of(exp: ExperimentConfig, method: str) -> str:
    entry = exp.methods.get(method) or {}
    return str(entry.get("algo", method))


def method_label(exp: ExperimentConfig, method: str) -> str:
    algo = algo_of(exp, method)
    if algo == "external":  # another codebase's method: its own name
        return str((exp.methods.get(method) or {}).get("label") or method)
    label = ALGO_LABELS.get(algo, algo)
    return label if method in (algo, label) else f"{label} [{method}]"


def ablation_base(exp: ExperimentConfig, method: str) -> str | None:
    algo = algo_of(exp, method)
    return next((m for m in exp.grid.methods if algo_of(exp, m) == algo and m != method), None)


def _fmt_count(x: float) -> str:
    if math.isnan(x):
        return "–"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.0f}"


def budgets_differ(a: float, b: float, tol: float) -> bool:
    """Two env-step budgets per run that differ by more than ``tol`` of the larger one. A method that
    takes no env steps (the offline DT) is the starting point, not a budget: never 'unmatched'."""
    if math.isnan(a) or math.isnan(b) or a <= 0 or b <= 0:
        return False
    return abs(a - b) > tol * max(a, b)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """rliable's stratified bootstrap draws from numpy's global RNG: seed it, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _md_table(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(("–" if math.isnan(v) else format(v, floatfmt)) if isinstance(v, float) else str(v)
                                       for v in r) + " |")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    from dtrl.util.io import atomic_write_text

    atomic_write_text(path, text)


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    _write_text(path, df.to_csv(index=False))


def _data_uri(path: Path) -> str:
    import base64
    import mimetypes

    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def markdown_to_html(md: str, base: Path | None = None) -> str:
    """HTML of ``md`` (CommonMark with pipe tables), the one converter of the report's markdown: each table's page
    and REPORT.html. With ``base``, images under it are embedded as data URIs (a self-contained page)."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    if base is not None:
        default_image = parser.renderer.rules["image"]

        def image(self, tokens, idx, options, env):
            src = tokens[idx].attrGet("src") or ""
            path = base / src
            if "://" not in src and not src.startswith("data:") and path.is_file():
                tokens[idx].attrSet("src", _data_uri(path))
            return default_image(tokens, idx, options, env)

        parser.add_render_rule("image", image)
    return parser.render(md)
