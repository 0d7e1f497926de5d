"""REPORT.md: the findings are computed from the aggregates, and the text quotes exactly those numbers."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from dtrl.config.experiment import ExperimentConfig, GridConfig
from test_report import ENV_STEPS, SCORES, SEEDS, TASKS, UPDATES, run_report, write_run

ABLATION = "grpo_relabel"
# The ablation scores lower than its parent on every run, with diagnostics of the relabel pathology.
ABLATION_SCORES = SCORES["grpo"] - 30.0


def add_diagnostics(root, method, task, seed, absdev, clip):
    d = root / "runs" / method / task / f"seed{seed}"
    summary = json.loads((d / "summary.json").read_text())
    summary["step_counts"] = {"explore": 1000, "scoring": 4000}
    (d / "summary.json").write_text(json.dumps(summary))
    p = d / "progress.csv"
    df = pd.read_csv(p)
    df["ratio_first_absdev"] = absdev
    df["clip_frac"] = clip
    df["log_ratio_q05"], df["log_ratio_q50"], df["log_ratio_q95"] = -10 * absdev, 0.0, 10 * absdev
    df["approx_kl"] = absdev ** 2
    cols = ["ratio_first_absdev", "clip_frac", "log_ratio_q05", "log_ratio_q50", "log_ratio_q95", "approx_kl"]
    df.loc[df.index[-1], cols] = np.nan  # the final row has none
    df.to_csv(p, index=False)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    methods = ["none", "grpo", "odt", "iql"]
    for m in methods:
        for j, t in enumerate(TASKS):
            for i, s in enumerate(SEEDS):
                write_run(root, m, t, s, SCORES[m][i, j], ENV_STEPS[m], UPDATES[m])
                if m == "grpo":
                    add_diagnostics(root, m, t, s, 1e-7, 0.05)
    for j, t in enumerate(TASKS[:2]):
        for i, s in enumerate(SEEDS):
            write_run(root, ABLATION, t, s, ABLATION_SCORES[i, j], ENV_STEPS["grpo"], UPDATES["grpo"])
            add_diagnostics(root, ABLATION, t, s, 0.5 + 0.1 * i, 0.3)
    exp = ExperimentConfig(results=str(root), grid=GridConfig(methods=methods, tasks=TASKS, seeds=SEEDS,
                                                              ablations=[ABLATION], ablation_tasks=TASKS[:2]),
                           methods={ABLATION: {"algo": "grpo", "relabel": True}})
    written = run_report(exp, root)
    return exp, root, written


def test_every_comparison_of_the_grid_is_a_finding(page):
    exp, root, written = page
    f = pd.read_csv(root / "tables/findings.csv")
    got = list(zip(f["kind"], f["method"], f["baseline"]))
    assert got == [("vs_offline", "grpo", "none"), ("vs_offline", "odt", "none"), ("vs_offline", "iql", "none"),
                   ("vs_baseline", "grpo", "odt"), ("vs_baseline", "grpo", "iql"),
                   ("ablation", ABLATION, "grpo")]
    assert written["report"] == [root / "REPORT.md"]


def test_findings_are_the_aggregates(page):
    exp, root, _ = page
    f = pd.read_csv(root / "tables/findings.csv")
    agg = pd.read_csv(root / "tables/aggregates.csv")
    iqm = agg[agg["metric"] == "IQM"].set_index("method")["estimate"]
    poi = pd.read_csv(root / "tables/probability_of_improvement.csv").set_index("baseline")
    for r in f[f["kind"] != "ablation"].itertuples():
        assert r.iqm_method == pytest.approx(iqm[r.method]) and r.iqm_baseline == pytest.approx(iqm[r.baseline])
        assert r.iqm_diff == pytest.approx(r.iqm_method - r.iqm_baseline)
        assert r.ci_low <= r.iqm_diff <= r.ci_high
        if r.kind == "vs_baseline":  # the same P(GRPO-DT > baseline) as the report's own table
            assert r.poi == pytest.approx(poi.loc[r.baseline, "probability"])
    abl = f[f["kind"] == "ablation"].iloc[0]
    from rliable import metrics

    assert abl["iqm_method"] == pytest.approx(metrics.aggregate_iqm(ABLATION_SCORES[:, :2]))
    assert abl["iqm_baseline"] == pytest.approx(metrics.aggregate_iqm(SCORES["grpo"][:, :2]))
    assert abl["ratio_first_absdev_method"] == pytest.approx(0.6)  # mean over runs of each run's mean
    assert abl["clip_frac_baseline"] == pytest.approx(0.05)
    assert abl["env_steps_method"] == ENV_STEPS["grpo"] and abl["grad_updates_baseline"] == UPDATES["grpo"]


def test_paragraphs_quote_the_findings_table(page):
    exp, root, _ = page
    text = (root / "REPORT.md").read_text()
    f = pd.read_csv(root / "tables/findings.csv")
    paras = [p for p in text.split("\n\n") if "IQM difference:" in p]
    assert len(paras) == len(f)
    for p, r in zip(paras, f.itertuples()):
        nums = re.search(r"IQM difference: ([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\]", p).groups()
        assert [float(x) for x in nums] == [round(r.iqm_diff, 1), round(r.ci_low, 1), round(r.ci_high, 1)]
        assert f"= {r.poi:.2f} [{r.poi_low:.2f}, {r.poi_high:.2f}]" in p
        assert f"from {r.runs_method} run(s)" in p and "95% stratified-bootstrap CI" in p
        # the verdict follows from the CI
        want = "above 0" if r.ci_low > 0 else "below 0" if r.ci_high < 0 else "contains 0"
        assert want in p
    grpo_vs_dt = paras[0]
    assert grpo_vs_dt.startswith("**GRPO-DT − DT (offline)**") and "above 0" in grpo_vs_dt
    abl = paras[-1]
    assert "below 0" in abl and "first-minibatch max |ratio - 1| 0.6 vs 1e-07" in abl
    assert "5k gradient updates" not in abl and "(explore 1k, scoring 4k)" in abl  # the summaries' step split


def test_page_is_self_contained(page):
    exp, root, written = page
    text = (root / "REPORT.md").read_text()
    for section in ("## Findings", "## Tables", "## Figures", "## Resolved config", "dtrl commit: `",
                    "machine that wrote this page:", "wall time: finetuning runs"):
        assert section in text, section
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all((root / link).exists() for link in links)  # relative to the page
    assert len(links) == len([p for p in written["figures"] if p.suffix == ".png"])
    assert "# Main results" not in text.replace("## Main results", "")  # tables nested under the page's heading
    assert "| hopper-medium |" in text and "tables/findings.csv" in text
    # wall time: the runs' wall_time summed (2 s each in the synthetic runs)
    n_runs = 4 * len(TASKS) * len(SEEDS) + 2 * len(SEEDS)
    assert f"finetuning runs {2.0 * n_runs / 60:.1f} min summed" in text


def test_one_seed_gives_no_interval_and_no_verdict(page):
    import dataclasses

    from dtrl.report.runs import expected_runs, load_runs
    from dtrl.report.page import finding_rows, paragraph

    exp, root, _ = page
    one = dataclasses.replace(exp, grid=dataclasses.replace(exp.grid, seeds=[0]))
    runs, _ = load_runs(root / "runs", expected_runs(one))
    f = finding_rows(one, runs, reps=50)
    assert len(f) == 6 and f["ci_low"].isna().all() and f["ci_high"].isna().all() and f["poi_low"].isna().all()
    assert (f["iqm_diff"] == f["iqm_method"] - f["iqm_baseline"]).all()  # the point estimates stay
    text = paragraph(one, f.iloc[0].to_dict())
    assert "(no CI: 1 run(s) per task on a side, fewer than report.min_runs_for_ci=3;" in text
    assert "No CI, so no verdict." in text and "above 0" not in text and "[" not in text


def test_ratio_diagnostics_figure_for_the_relabel_ablation(page):
    exp, root, written = page
    from dtrl.report.figures import ratio_figure_methods
    from dtrl.report.stats import series_mean

    assert ratio_figure_methods(exp) == ["grpo", ABLATION]
    figs = [p.name for p in written["figures"]]
    assert [f for f in figs if f.startswith("ratio_diagnostics")] == [
        f"ratio_diagnostics_{t}.{e}" for t in TASKS[:2] for e in ("png", "pdf")]
    assert (root / "figures" / f"ratio_diagnostics_{TASKS[0]}.png").stat().st_size > 0
    # the plotted series is the mean over seeds of the logged column (seed i logged 0.5 + 0.1 i)
    from dtrl.report.runs import load_runs
    runs, _ = load_runs(root / "runs", [(ABLATION, TASKS[0], s) for s in SEEDS])
    x, y = series_mean(list(runs.values()), "ratio_first_absdev")
    assert np.allclose(y, 0.5 + 0.1 * np.mean(range(len(SEEDS))))
    assert f"ratio_diagnostics_{TASKS[0]}.png" in (root / "REPORT.md").read_text()


def test_no_ratio_figure_without_a_ratio_ablation():
    from dtrl.report.figures import ratio_figure_methods

    exp = ExperimentConfig(grid=GridConfig(methods=["none", "grpo"], tasks=TASKS, seeds=SEEDS,
                                           ablations=["grpo_l0"], ablation_tasks=TASKS[:1]),
                           methods={"grpo_l0": {"algo": "grpo", "eval_len": 0}})
    assert ratio_figure_methods(exp) == []
