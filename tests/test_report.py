"""`dtrl report` on synthetic run directories: tables, rliable estimates, figures, published data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dtrl.config.experiment import ExperimentConfig, GridConfig
from dtrl.util.logger import CORE_COLUMNS, SUMMARY_KEYS

METHODS = ["none", "grpo", "odt", "iql"]
TASKS = ["hopper-medium", "walker2d-random", "pendulum-medium-replay"]
SEEDS = [0, 1, 2]
# A fixed score matrix per method: rows = seeds, columns = TASKS (final normalised scores).
SCORES = {
    "none": np.array([[40.0, 5.0, 10.0], [42.0, 6.0, 12.0], [38.0, 4.0, 8.0]]),
    "grpo": np.array([[90.0, 60.0, 55.0], [70.0, 65.0, 80.0], [85.0, 20.0, 95.0]]),
    "odt": np.array([[80.0, 15.0, 30.0], [95.0, 12.0, 35.0], [60.0, 18.0, 25.0]]),
    "iql": np.array([[45.0, 11.0, 40.0], [50.0, 9.0, 45.0], [47.0, 10.0, 50.0]]),
}
ENV_STEPS = {"none": 0, "grpo": 5000, "odt": 2000, "iql": 2000}
UPDATES = {"none": 0, "grpo": 40, "odt": 3000, "iql": 4000}


def raw_return(task, score):
    """The raw return that ``task`` normalises to ``score`` (a summary's final_return: the run contract)."""
    from dtrl.tasks import get_task

    t = get_task(task)
    return t.ref_min_score + float(score) / 100 * (t.ref_max_score - t.ref_min_score)


def write_run(root, method, task, seed, score, env_steps, updates, n_points=4):
    d = root / "runs" / method / task / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    if env_steps:
        steps = np.linspace(env_steps / n_points, env_steps, n_points).astype(int)
        curve = np.linspace(score / 2, score, n_points)
    else:
        steps, curve = np.array([0]), np.array([score])
    rows = [{"iteration": i + 1, "env_steps": int(s), "env_steps_eval": 100 * (i + 1),
             "policy_updates": int(updates * (i + 1) / len(steps)), "critic_updates": int(2 * updates * (i + 1) / len(steps)),
             "grad_updates": int(updates * (i + 1) / len(steps)), "eval_return": float(c) * 10,
             "eval_norm_return": float(c), "wall_time": float(i), "cpu_s": 3.0 * (i + 1), "env_steps_per_s": 1.0, "updates_per_s": 1.0}
            for i, (s, c) in enumerate(zip(steps, curve))]
    rows[-1]["final"] = 1
    pd.DataFrame(rows, columns=CORE_COLUMNS + ["final"]).to_csv(d / "progress.csv", index=False)
    summary = {"method": method, "algo": method, "task": task, "seed": seed, "final_return": raw_return(task, score),
               "final_norm_return": float(score), "final_norm_return_std": 1.0, "eval_episodes": 10,
               "env_steps": env_steps, "env_steps_eval": 100 * len(steps), "policy_updates": updates,
               "critic_updates": 2 * updates, "grad_updates": updates,
               "wall_time": 2.0, "iterations": len(steps)}
    assert set(SUMMARY_KEYS) <= set(summary)
    (d / "summary.json").write_text(json.dumps(summary))


def make_synthetic(root):
    for m in METHODS:
        for j, t in enumerate(TASKS):
            for i, s in enumerate(SEEDS):
                write_run(root, m, t, s, SCORES[m][i, j], ENV_STEPS[m], UPDATES[m])
    return ExperimentConfig(results=str(root), grid=GridConfig(methods=METHODS, tasks=TASKS, seeds=SEEDS))


def run_report(exp, root, reps=200, figures=True):
    from dtrl.report.build import report

    return report(exp, root, root / "runs", reps=reps, figures=figures)


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """The synthetic grid, reported once (with figures) for the tests that only read the outputs."""
    root = tmp_path_factory.mktemp("report")
    exp = make_synthetic(root)
    return exp, root, run_report(exp, root)


def test_aggregates_match_rliable(reported):
    """The IQM (and median, mean, optimality gap) equal what rliable computes on the matrix directly."""
    from rliable import metrics

    exp, root, _ = reported
    agg = pd.read_csv(root / "tables" / "aggregates.csv")
    for m in METHODS:
        got = agg[agg["method"] == m].set_index("metric")
        assert got.loc["IQM", "estimate"] == pytest.approx(metrics.aggregate_iqm(SCORES[m]), rel=1e-12)
        assert got.loc["Median", "estimate"] == pytest.approx(metrics.aggregate_median(SCORES[m]), rel=1e-12)
        assert got.loc["Mean", "estimate"] == pytest.approx(metrics.aggregate_mean(SCORES[m]), rel=1e-12)
        assert got.loc["Optimality Gap", "estimate"] == pytest.approx(
            metrics.aggregate_optimality_gap(SCORES[m], gamma=100), rel=1e-12)
        assert (got["ci_low"] <= got["estimate"] + 1e-9).all() and (got["estimate"] <= got["ci_high"] + 1e-9).all()
        assert (got["runs"] == 3).all() and (got["tasks"] == 3).all()


def test_iqm_function_on_fixed_matrix():
    """aggregate_estimates on a given matrix: IQM is scipy's 25% trimmed mean over all runs and tasks."""
    from rliable import metrics

    from dtrl.report.stats import aggregate_estimates

    scores = np.arange(24, dtype=float).reshape(4, 6) ** 1.5
    out = aggregate_estimates({"m": scores}, reps=100).set_index("metric")
    assert out.loc["IQM", "estimate"] == pytest.approx(metrics.aggregate_iqm(scores), rel=1e-12)
    flat = np.sort(scores.ravel())
    assert out.loc["IQM", "estimate"] == pytest.approx(flat[6:18].mean(), rel=1e-12)  # middle 50% of 24 values


def test_probability_of_improvement_matches_rliable(reported):
    from rliable import metrics

    exp, root, _ = reported
    poi = pd.read_csv(root / "tables" / "probability_of_improvement.csv").set_index("baseline")
    assert list(poi.index) == ["none", "odt", "iql"]  # GRPO-DT against each other grid method
    for other in ["none", "odt", "iql"]:
        want = metrics.probability_of_improvement(SCORES["grpo"], SCORES[other])
        assert poi.loc[other, "probability"] == pytest.approx(want)
        assert poi.loc[other, "ci_low"] <= want + 1e-9 <= poi.loc[other, "ci_high"] + 2e-9


def test_main_table(reported):
    from dtrl.report.tables import BUDGET_ROWS

    exp, root, _ = reported
    table = pd.read_csv(root / "tables" / "main.csv").set_index("task")
    assert list(table.index) == TASKS + ["average"] + list(BUDGET_ROWS)
    for m in METHODS:
        for j, t in enumerate(TASKS):
            assert table.loc[t, f"{m}_mean"] == pytest.approx(SCORES[m][:, j].mean())
            assert table.loc[t, f"{m}_std"] == pytest.approx(SCORES[m][:, j].std(ddof=1))
            assert table.loc[t, f"{m}_seeds"] == 3
        assert table.loc["average", f"{m}_mean"] == pytest.approx(SCORES[m].mean())
        assert table.loc["average", f"{m}_std"] == pytest.approx(SCORES[m].mean(axis=1).std(ddof=1))
        assert table.loc["env_steps", f"{m}_mean"] == ENV_STEPS[m]
        assert table.loc["policy_updates", f"{m}_mean"] == UPDATES[m]
        assert table.loc["critic_updates", f"{m}_mean"] == 2 * UPDATES[m]
    # Published numbers beside ours where the task names match, for the algorithms that have them.
    assert "grpo_published" not in table and "none_published" not in table
    assert table.loc["hopper-medium", "odt_published"] == pytest.approx(97.84)
    assert table.loc["walker2d-random", "iql_published"] == pytest.approx(10.67)
    assert np.isnan(table.loc["pendulum-medium-replay", "odt_published"])
    assert np.isnan(table.loc["average", "odt_published"])  # not every task has a published number
    md = (root / "tables" / "main.md").read_text()
    assert "published" in md and "D4RL v2" in md and "97.84" in md
    assert "GRPO-DT" in md and "ODT" in md


def test_published_average_when_all_tasks_match(tmp_path):
    tasks = ["hopper-medium", "hopper-random"]
    for t in tasks:
        write_run(tmp_path, "odt", t, 0, 50.0, 1000, 10)
    exp = ExperimentConfig(results=str(tmp_path), grid=GridConfig(methods=["odt"], tasks=tasks, seeds=[0]))
    run_report(exp, tmp_path, figures=False)
    table = pd.read_csv(tmp_path / "tables" / "main.csv").set_index("task")
    assert table.loc["average", "odt_published"] == pytest.approx((97.84 + 29.08) / 2)
    assert table.loc["average", "odt_seeds"] == 1 and table.loc["average", "odt_std"] == 0


def test_figures(reported):
    exp, root, written = reported
    figs = root / "figures"
    for stem in ["aggregate_metrics", "performance_profile", "probability_of_improvement"] + \
            [f"learning_curves_{t}" for t in TASKS]:
        for ext in ("png", "pdf"):
            f = figs / f"{stem}.{ext}"
            assert f.exists() and f.stat().st_size > 1000, f
            assert f in written["figures"]


def test_learning_curve_interpolates_over_seeds(tmp_path):
    from dtrl.report.runs import Run
    from dtrl.report.stats import learning_curve

    runs = []
    for seed, (xs, ys) in enumerate([([100, 200, 300], [1.0, 2.0, 3.0]), ([150, 250, 350], [2.0, 4.0, 6.0])]):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        pd.DataFrame({"env_steps": xs, "eval_norm_return": ys}).to_csv(d / "progress.csv", index=False)
        runs.append(Run("m", "t", seed, {}, d))
    x, y, lo, hi = learning_curve(runs, "env_steps", reps=50)
    assert list(x) == [150, 200, 250, 300]  # the range both seeds cover
    assert y[0] == pytest.approx((1.5 + 2.0) / 2) and y[-1] == pytest.approx((3.0 + 5.0) / 2)
    assert np.all(lo <= y + 1e-9) and np.all(y <= hi + 1e-9)


def test_missing_runs_are_reported_not_fatal(tmp_path, capsys, monkeypatch):
    import shutil

    import dtrl.report.build
    from dtrl.report.build import cmd_report

    monkeypatch.setattr(dtrl.report.build, "REPS", 100)
    exp = make_synthetic(tmp_path)
    root = tmp_path
    shutil.rmtree(root / "runs" / "odt" / TASKS[0] / "seed1")
    assert cmd_report(exp, root, root / "runs") == 0
    err = capsys.readouterr().err
    assert "1 run(s)" in err and "odt/hopper-medium/seed1" in err
    table = pd.read_csv(root / "tables" / "main.csv").set_index("task")
    assert table.loc[TASKS[0], "odt_seeds"] == 2
    assert table.loc[TASKS[0], "odt_mean"] == pytest.approx(SCORES["odt"][[0, 2], 0].mean())
    assert table.loc["average", "odt_seeds"] == 2  # seeds that finished every task
    agg = pd.read_csv(root / "tables" / "aggregates.csv")
    assert (agg[agg["method"] == "odt"]["runs"] == 2).all()  # rliable gets the complete seeds only


def test_ablation_table(tmp_path):
    tasks = ["hopper-random"]
    methods = {"grpo": {"algo": "grpo"}, "grpo_token": {"algo": "grpo", "ratio": "token"},
               "grpo_relabel": {"algo": "grpo", "relabel": True}}
    for m, score in [("grpo", 60.0), ("grpo_token", 40.0), ("grpo_relabel", 10.0)]:
        for s in (0, 1):
            write_run(tmp_path, m, tasks[0], s, score + s, 1000, 10)
    exp = ExperimentConfig(results=str(tmp_path), methods=methods,
                           grid=GridConfig(methods=["grpo"], tasks=tasks, seeds=[0, 1],
                                           ablations=["grpo_token", "grpo_relabel"], ablation_tasks=tasks))
    run_report(exp, tmp_path, figures=False)
    abl = pd.read_csv(tmp_path / "tables" / "ablations.csv").set_index("method")
    assert list(abl.index) == ["grpo", "grpo_token", "grpo_relabel"]
    assert abl.loc["grpo", "changes"] == "(base)"
    assert abl.loc["grpo_token", "changes"] == "ratio=token"
    assert abl.loc["grpo_relabel", "changes"] == "relabel=True"
    assert abl.loc["grpo_token", "hopper-random_mean"] == pytest.approx(40.5)
    assert abl.loc["grpo_relabel", "average_mean"] == pytest.approx(10.5)
    assert "ratio=token" in (tmp_path / "tables" / "ablations.md").read_text()


def test_expected_runs_cover_grid_and_ablation_bases():
    from dtrl.report.runs import expected_runs

    exp = ExperimentConfig(methods={"grpo_u": {"algo": "grpo", "reset_sampling": "uniform"}},
                           grid=GridConfig(methods=["none", "grpo"], tasks=["hopper-medium"], seeds=[0, 1],
                                           ablations=["grpo_u"], ablation_tasks=["hopper-random"]))
    runs = expected_runs(exp)
    assert len(runs) == len(set(runs)) == 2 * 2 + 2 * 2  # main grid + (base grpo, grpo_u) on the ablation task
    assert ("grpo", "hopper-random", 1) in runs and ("grpo_u", "hopper-random", 0) in runs
    assert ("none", "hopper-random", 0) not in runs


def test_published_tables_load():
    """Yan et al. 2024's Tables 1-3 as package data: every column, every task, named as dtrl names them."""
    from dtrl.reference import PUBLISHED_COLUMNS, PUBLISHED_METHODS, published_scores
    from dtrl.tasks import get_task

    pub = published_scores()
    assert pub.methods() == list(PUBLISHED_COLUMNS) and set(PUBLISHED_METHODS) <= set(PUBLISHED_COLUMNS)
    assert [len(pub.tasks(s)) for s in ("locomotion", "adroit", "antmaze")] == [12, 12, 6]
    assert len(pub.cells) == 30 * 7
    for task, suite in pub.suites.items():
        assert get_task(task).family.suite == suite  # the report groups by the same family
        version = "v1" if suite == "adroit" else "v2"
        assert pub.datasets[task] == f"{task}-{version}"
    assert pub.score("odt_td3", "ant-medium") == 132.0 and pub.score("odt", "pendulum-medium") is None
    c = pub.cell("odt", "hopper-medium")
    assert (c.final, c.increase, c.before) == (97.84, 48.69, 49.15)  # printed 97.84(+48.69)
    assert pub.cell("iql", "pen-human").before == pytest.approx(96.5 - 27.79)
    assert pub.cell("ddpg_odt", "antmaze-umaze-diverse").increase == -14.59


# The printed averages that disagree with their own rows (dtrl/reference/yan2024.md).
MISPRINTED = {("adroit", "average", "td3"): (27.44, -27.07), ("locomotion", "average", "iql"): (55.9, 6.53),
              ("locomotion", "average", "ddpg_odt"): (22.41, -19.22)}


def test_published_rows_reproduce_the_printed_averages():
    """A transcription error in any row would move its table's average: every printed average equals the
    mean of its rows, except the three the paper itself gets wrong. The paper averaged unrounded numbers,
    so the printed ones differ by up to 0.023 (AntMaze TD3+BC); 0.03 still catches any row off by 0.4."""
    from dtrl.reference import published_averages, published_scores

    pub, avgs = published_scores(), published_averages()
    assert len(avgs) == 7 * 4
    for (suite, row, method), printed in avgs.items():
        tasks = pub.tasks(suite)
        if row != "average":
            assert row == "average (umaze + medium)"
            tasks = [t for t in tasks if "large" not in t]
        final = np.mean([pub.cell(method, t).final for t in tasks])
        inc = np.mean([pub.cell(method, t).increase for t in tasks])
        want = MISPRINTED.get((suite, row, method), (printed.final, printed.increase))
        assert (final, inc) == (pytest.approx(want[0], abs=0.03), pytest.approx(want[1], abs=0.03)), \
            (suite, row, method)
    for key, (final, inc) in MISPRINTED.items():
        printed = avgs[key]
        assert abs(printed.final - final) > 0.4 or abs(printed.increase - inc) > 0.4


def test_published_columns_name_their_budget():
    """Each published header says the online budget its numbers were measured at (docs/baselines.md)."""
    from dtrl.report.tables import main_markdown, main_table

    exp = ExperimentConfig(grid=GridConfig(methods=["odt", "odt_td3", "iql"], tasks=["hopper-medium"], seeds=[0]))
    header = main_markdown(exp, main_table(exp, {}), 0).split("\n")[4]
    cols = [c.strip() for c in header.strip("|").split("|")]
    published = [c for c in cols if "(published" in c]
    assert len(published) == 3
    assert published == ["ODT (published, D4RL v2, 500k env steps)", "ODT+TD3 (published, D4RL v2, 500k env steps)",
                         "IQL (published, D4RL v2, 500k env steps)"]
    exp.grid.tasks = ["hopper-medium", "pen-human", "pendulum-random"]  # a family each: their own budgets
    header = main_markdown(exp, main_table(exp, {}), 0).split("\n")[4]
    md = main_markdown(exp, main_table(exp, {}), 0)
    assert "| ODT (published) |" in header and "pendulum" not in md.split("Published columns")[1]
    assert ("The datasets and online budget the paper states: Table 1 (MuJoCo): D4RL v2 datasets, 500k env steps; "
            "Table 2 (Adroit): D4RL v1 datasets, 1M env steps; ours is the env-steps row.") in md


def _two_seed_grid(root, methods=("none", "grpo", "odt_td3"), tasks=("pendulum-random", "pendulum-medium-replay"),
                   seeds=(0, 1)):
    """grpo beats every other method on every run (P = 1 with a degenerate CI)."""
    base = {"none": 10.0, "grpo": 80.0, "odt_td3": 30.0, "iql": 20.0}
    for m in methods:
        for j, t in enumerate(tasks):
            for s in seeds:
                write_run(root, m, t, s, base[m] + j + s, ENV_STEPS.get(m, 2000), UPDATES.get(m, 1000))
    return ExperimentConfig(results=str(root), grid=GridConfig(methods=list(methods), tasks=list(tasks),
                                                               seeds=list(seeds)))


def test_method_names_are_the_same_in_every_table(tmp_path):
    exp = _two_seed_grid(tmp_path)
    run_report(exp, tmp_path, reps=50, figures=False)
    agg = pd.read_csv(tmp_path / "tables" / "aggregates.csv")
    assert list(agg.columns[:2]) == ["method", "method_label"]
    assert dict(zip(agg["method"], agg["method_label"])) == {"none": "DT (offline)", "grpo": "GRPO-DT", "odt_td3": "ODT+TD3"}
    poi = pd.read_csv(tmp_path / "tables" / "probability_of_improvement.csv")
    assert list(poi["baseline_label"]) == ["DT (offline)", "ODT+TD3"] and set(poi["method_label"]) == {"GRPO-DT"}
    header = (tmp_path / "tables" / "main.md").read_text().split("\n| task |", 1)[1].splitlines()[0]
    assert [c.strip() for c in header.split("|")[:-1]] == ["DT (offline)", "GRPO-DT", "ODT+TD3"]


def test_too_few_runs_give_no_ci_and_say_so(tmp_path):
    exp = _two_seed_grid(tmp_path)
    run_report(exp, tmp_path, reps=50, figures=False)
    agg = pd.read_csv(tmp_path / "tables" / "aggregates.csv", keep_default_na=False, na_values=[""])
    assert (agg["runs"] == 2).all() and agg["ci_low"].isna().all() and agg["ci_high"].isna().all()
    assert agg["estimate"].notna().all() and (agg["ci_note"].str.contains("min_runs_for_ci=3")).all()
    assert "fewer than 3 runs" in (tmp_path / "tables" / "aggregates.md").read_text()
    poi = pd.read_csv(tmp_path / "tables" / "probability_of_improvement.csv")
    assert poi["ci_low"].isna().all() and (poi["probability"] == 1.0).all()

    exp.report.min_runs_for_ci = 2  # configurable: two runs are enough when the user says so
    run_report(exp, tmp_path, reps=50, figures=False)
    agg = pd.read_csv(tmp_path / "tables" / "aggregates.csv")
    assert agg["ci_low"].notna().all() and (agg["ci_low"] <= agg["estimate"] + 1e-9).all()


def test_probability_of_improvement_figure_shows_every_value(tmp_path):
    """P = 1 with CI [1, 1]: the value is written on the figure and the marker is not clipped at the spine."""
    from dtrl.report.figures import poi_figure

    exp = _two_seed_grid(tmp_path)
    exp.report.min_runs_for_ci = 2
    written = run_report(exp, tmp_path, reps=50)
    assert tmp_path / "figures" / "probability_of_improvement.png" in written["figures"]
    poi = pd.read_csv(tmp_path / "tables" / "probability_of_improvement.csv")
    assert (poi["probability"] == 1.0).all() and (poi["ci_low"] == 1.0).all() and (poi["ci_high"] == 1.0).all()
    fig = poi_figure(exp, poi)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["1.00  [1.00, 1.00]"] * 2
    markers = [ln for ln in ax.lines if ln.get_marker() == "D"]
    assert len(markers) == 2 and all(not ln.get_clip_on() and ln.get_xdata()[0] == 1.0 for ln in markers)
    from matplotlib.container import ErrorbarContainer

    caps = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(caps) == 2 and all(not cap.get_clip_on() for c in caps for cap in c.lines[1])  # the CI's end caps


def test_published_columns_only_where_the_grid_has_published_numbers(tmp_path):
    exp = _two_seed_grid(tmp_path)
    run_report(exp, tmp_path, reps=50, figures=False)
    table = pd.read_csv(tmp_path / "tables" / "main.csv")
    assert not [c for c in table.columns if c.endswith("_published")]
    md = (tmp_path / "tables" / "main.md").read_text()
    assert "published" not in md.lower() and "italic" not in md


def test_dataset_warnings_reach_the_report_and_the_terminal(tmp_path, capsys, monkeypatch):
    import dtrl.report.build
    from dtrl.report.build import cmd_report

    monkeypatch.setattr(dtrl.report.build, "REPS", 50)
    exp = _two_seed_grid(tmp_path)
    (tmp_path / "data").mkdir()
    msg = "SAC never reached the 'medium' return 300.0; 'medium' is the best checkpoint (return 104.2)"
    (tmp_path / "data" / "pendulum-medium-replay.json").write_text(json.dumps({"warnings": [msg]}))
    (tmp_path / "data" / "pendulum-random.json").write_text(json.dumps({"warnings": []}))
    assert cmd_report(exp, tmp_path, tmp_path / "runs") == 0
    assert f"warning: pendulum-medium-replay: {msg}" in capsys.readouterr().err
    md = (tmp_path / "tables" / "main.md").read_text()
    assert "## Warnings" in md and f"- pendulum-medium-replay: {msg}" in md


def test_learning_curves_have_a_compute_axis(tmp_path):
    """The third panel puts each method's return against its run's process CPU-seconds (progress.csv cpu_s)."""
    from dtrl.report.figures import learning_curves_figure
    from dtrl.report.runs import expected_runs, load_runs

    exp = make_synthetic(tmp_path)
    runs, _ = load_runs(tmp_path / "runs", expected_runs(exp))
    fig = learning_curves_figure(exp, TASKS[0], runs, reps=20)
    ax = fig.axes[2]
    assert "CPU-seconds" in ax.get_xlabel()
    curves = [line for line in ax.get_lines() if line.get_marker() == "."]  # not the offline DT's level line
    assert len(curves) == sum(ENV_STEPS[m] > 0 for m in METHODS)  # every method that trained online
    for line in curves:
        assert list(line.get_xdata()) == [3.0, 6.0, 9.0, 12.0]  # write_run's cpu_s at its 4 evaluations


# -- no interval without the runs for it; unmatched budgets said where compared -------------------------------

def _bands(fig) -> int:
    """Intervals drawn on a figure: filled bands (fill_between, axhspan) and CI bars (barh)."""
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Polygon, Rectangle

    return sum(isinstance(c, PolyCollection) for ax in fig.axes for c in ax.collections) + \
        sum(isinstance(p, (Polygon, Rectangle)) for ax in fig.axes for p in ax.patches)


@pytest.mark.parametrize("n_seeds", [2, 3])
def test_intervals_only_from_min_runs_for_ci_runs(tmp_path, n_seeds):
    """report.min_runs_for_ci = 3: with 2 seeds no finding, table or figure carries a CI; with 3 all do."""
    from dtrl.report.figures import aggregates_figure, learning_curves_figure, poi_figure, profile_figure
    from dtrl.report.runs import expected_runs, load_runs
    from dtrl.report.stats import performance_profiles, score_matrices

    exp = _two_seed_grid(tmp_path, seeds=tuple(range(n_seeds)))
    run_report(exp, tmp_path, reps=20, figures=False)
    has = n_seeds >= exp.report.min_runs_for_ci
    tables = tmp_path / "tables"
    findings = pd.read_csv(tables / "findings.csv")
    agg, poi = pd.read_csv(tables / "aggregates.csv"), pd.read_csv(tables / "probability_of_improvement.csv")
    for df, cols in ((findings, ["ci_low", "ci_high", "poi_low", "poi_high"]), (agg, ["ci_low", "ci_high"]),
                     (poi, ["ci_low", "ci_high"])):
        assert df[cols].notna().all().all() if has else df[cols].isna().all().all()
    paras = [p for p in (tmp_path / "REPORT.md").read_text().split("\n\n") if "IQM difference:" in p]
    assert len(paras) == len(findings) == 3
    for p in paras:
        assert ("95% stratified-bootstrap CI" in p) == has and ("No CI, so no verdict." in p) == (not has)
        assert ("] (" in p) == has  # an interval printed after the IQM difference
    runs, _ = load_runs(tmp_path / "runs", expected_runs(exp))
    scores = score_matrices(exp, runs)
    taus = np.linspace(0, 100, 11)
    prof, ci = performance_profiles(scores, taus, reps=20)
    figs = [profile_figure(exp, taus, prof, ci, {m: s.shape[0] for m, s in scores.items()}),
            aggregates_figure(exp, agg.fillna({"ci_note": ""})), poi_figure(exp, poi),
            *(learning_curves_figure(exp, t, runs, reps=20) for t in exp.grid.tasks)]
    assert [_bands(f) > 0 for f in figs] == [has] * len(figs)


def test_unmatched_budgets_are_marked_in_the_table_and_the_findings(tmp_path):
    """GRPO-DT at 5k env steps per run against ODT+TD3 at 2k: both budgets where they are compared."""
    exp = _two_seed_grid(tmp_path)
    run_report(exp, tmp_path, reps=20, figures=False)
    md = (tmp_path / "tables" / "main.md").read_text()
    assert "| env steps / run | 0 | 5k † | 2k † |" in md
    assert "† **Env-step budgets not matched** (they differ by more than 10%, env steps per run): GRPO-DT 5k vs " \
           "ODT+TD3 2k." in md
    f = pd.read_csv(tmp_path / "tables" / "findings.csv").set_index(["method", "baseline"])
    assert not f.loc[("grpo", "odt_td3"), "budgets_matched"]
    assert f.loc[("grpo", "none"), "budgets_matched"]  # the offline DT takes no env steps: the start, not a budget
    text = (tmp_path / "REPORT.md").read_text()
    assert "**Unmatched env-step budgets: GRPO-DT 5k vs ODT+TD3 2k per run** (they differ by more than 10%)" in text
    assert text.count("Unmatched env-step budgets") == 1
    exp.report.budget_tolerance = 0.7  # |5k - 2k| = 60% of 5k: within a 70% tolerance
    run_report(exp, tmp_path, reps=20, figures=False)
    assert "not matched" not in (tmp_path / "tables" / "main.md").read_text()
    assert "Unmatched" not in (tmp_path / "REPORT.md").read_text()


# -- labels that are true -------------------------------------------------------------------------------------

def test_captions_say_what_the_scores_are(tmp_path):
    from dtrl.report.tables import main_markdown, main_table, score_label, success_note

    assert "dtrl's own reference returns, not D4RL's" in score_label(["pendulum-random"])
    assert score_label(["hopper-medium"]).startswith("D4RL normalised score")
    mixed = score_label(["hopper-medium", "pendulum-random"])
    assert "D4RL's reference returns for hopper-medium; dtrl's own for pendulum-random" in mixed
    assert success_note(["hopper-medium"]) == "" and "AntMaze" not in success_note(["pen-human"])
    assert "AntMaze and Adroit" in success_note(["antmaze-umaze", "pen-human"])
    exp = _two_seed_grid(tmp_path)
    caption = main_markdown(exp, main_table(exp, {}), 0).split("\n")[2]
    assert "D4RL normalised" not in caption and "success" not in caption
    assert "mean over its tasks of the per-task means ± the sample std over seeds of each seed's average" in caption


def test_wall_time_of_the_pretraining_a_run_starts_from(tmp_path):
    """The offline DT's cost is its pretraining: the table shows it beside the run's own wall time."""
    exp = _two_seed_grid(tmp_path, methods=("none", "grpo", "iql"))
    for t in exp.grid.tasks:
        for s in exp.grid.seeds:
            d = tmp_path / "pretrain" / t / f"seed{s}"
            d.mkdir(parents=True)
            (d / "summary.json").write_text(json.dumps({"wall_time": 30.0 + s}))
    run_report(exp, tmp_path, reps=20, figures=False)
    table = pd.read_csv(tmp_path / "tables" / "main.csv").set_index("task")
    assert table.loc["pretrain_wall_time", "none_mean"] == pytest.approx(30.5)
    assert table.loc["pretrain_wall_time", "grpo_mean"] == pytest.approx(30.5)
    assert np.isnan(table.loc["pretrain_wall_time", "iql_mean"])  # IQL pretrains inside its own run
    assert "| wall time of the pretraining it starts from (s) | 30 | 30 | – |" in \
        (tmp_path / "tables" / "main.md").read_text()


# -- the published tables beside ours -------------------------------------------------------------------------

def test_family_tables_show_published_before_and_after(tmp_path):
    methods, tasks = ["none", "odt", "odt_td3", "iql"], ["hopper-medium", "hopper-random", "pen-human",
                                                           "pendulum-random"]
    for m in methods:
        for j, t in enumerate(tasks):
            for s in (0, 1):
                write_run(tmp_path, m, t, s, 10.0 * (methods.index(m) + 1) + j + s, 1000, 10)
            d = tmp_path / "pretrain_det" / t / "seed0"  # ODT+TD3 starts from the deterministic DT
            d.mkdir(parents=True, exist_ok=True)
            (d / "summary.json").write_text(json.dumps({"eval_norm_return": 3.0 + j, "wall_time": 1.0}))
    for j, t in enumerate(tasks):  # IQL's evaluation at the end of its offline phase
        for s in (0, 1):
            p = tmp_path / "runs" / "iql" / t / f"seed{s}" / "progress.csv"
            df = pd.read_csv(p)
            df["offline_eval_norm_return"] = [7.0 + s] + [np.nan] * (len(df) - 1)
            df.to_csv(p, index=False)
    exp = ExperimentConfig(results=str(tmp_path), grid=GridConfig(methods=methods, tasks=tasks, seeds=[0, 1]))
    run_report(exp, tmp_path, reps=20, figures=False)
    pub = pd.read_csv(tmp_path / "tables" / "published.csv").set_index("task")
    assert list(pub.index) == ["hopper-medium", "hopper-random", "average (locomotion)", "pen-human"]
    assert list(pub["dataset"].fillna("")) == ["hopper-medium-v2", "hopper-random-v2", "", "pen-human-v1"]
    r = pub.loc["hopper-medium"]
    assert r["odt_before"] == pytest.approx(10.5) and r["odt_after"] == pytest.approx(20.5)  # the offline DT's runs
    assert r["odt_published_before"] == pytest.approx(97.84 - 48.69) and r["odt_published_after"] == 97.84
    assert r["odt_td3_before"] == pytest.approx(3.0)  # seed 1 has no deterministic pretraining summary
    assert r["iql_before"] == pytest.approx(7.5) and r["iql_published_after"] == 44.72
    assert pub.loc["pen-human", "iql_published_before"] == pytest.approx(96.5 - 27.79)
    assert pub.loc["average (locomotion)", "odt_published_after"] == pytest.approx((97.84 + 29.08) / 2)
    md = (tmp_path / "tables" / "published.md").read_text()
    assert "## Table 1 (MuJoCo): D4RL v2 datasets, published at 500k env steps" in md
    assert "## Table 2 (Adroit): D4RL v1 datasets, published at 1M env steps" in md and "Table 3" not in md
    assert "| hopper-medium (hopper-medium-v2) | 10.5 → 20.5 (+10.0) | *49.15 → 97.84 (+48.69)* |" in md
    ref = (tmp_path / "tables" / "published_reference.md").read_text()
    assert "| task | TD3+BC | IQL | ODT | PDT | TD3 | DDPG+ODT | ODT+TD3 |" in ref
    assert "| hopper-medium-v2 | 60.24(+4.40) | 44.72(-21.30) | 97.84(+48.69) |" in ref
    assert "| pen-human-v1 | 26.77(+3.19) |" in ref and "pendulum" not in ref
    main = pd.read_csv(tmp_path / "tables" / "main.csv").set_index("task")
    assert main.loc["pen-human", "odt_published"] == 27.55  # Adroit is in the main table's published column
    main_md = (tmp_path / "tables" / "main.md").read_text()
    assert "holds no published Adroit" not in main_md and "are empty" not in main_md
    assert "(success" not in main_md.split("\n")[2] or "Adroit" in main_md.split("\n")[2]
    text = (tmp_path / "REPORT.md").read_text()
    assert text.index("## Main results") < text.index("## Published scores before and after finetuning")


# -- the report never destroys what it cannot rebuild ---------------------------------------------------------

def _tree(root):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "runs" not in p.relative_to(root).parts}


def _config_file(root, exp):
    import yaml

    from dtrl.config import to_dict

    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump({"results": str(root), "grid": to_dict(exp.grid)}))
    return path


def test_nothing_to_report_exits_2_and_leaves_every_output_byte_identical(tmp_path, capsys, monkeypatch):
    import dtrl.report.build
    from dtrl import cli

    monkeypatch.setattr(dtrl.report.build, "REPS", 20)

    exp = _two_seed_grid(tmp_path)
    cfg = _config_file(tmp_path, exp)
    assert cli.main(["report", "-c", str(cfg)]) == 0
    before = _tree(tmp_path)
    assert "tables/main.csv" in before and "REPORT.md" in before
    (tmp_path / "empty_runs").mkdir()
    for argv in (["--runs", str(tmp_path / "rusn")], ["--runs", str(tmp_path / "empty_runs")],
                 ["--set", "grid.seeds=[]"], ["--out", str(cfg)]):
        capsys.readouterr()
        assert cli.main(["report", "-c", str(cfg), *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dtrl report: error: "), err
        assert _tree(tmp_path) == before, argv
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dtrl-report-staging-")] == []


def test_a_failed_build_replaces_nothing(tmp_path, monkeypatch):
    """Every table and figure is built before any output is replaced: a failure in the last step (the
    results page) leaves the previous report whole, and no staging directory behind."""
    import dtrl.report.page

    exp = _two_seed_grid(tmp_path)
    run_report(exp, tmp_path, reps=20, figures=False)
    before = _tree(tmp_path)
    write_run(tmp_path, "grpo", "pendulum-random", 0, 99.0, 5000, 40)  # a change the new report would show

    def broken(*a, **k):
        raise RuntimeError("page failed")

    monkeypatch.setattr(dtrl.report.page, "write_report_page", broken)
    with pytest.raises(RuntimeError, match="page failed"):
        run_report(exp, tmp_path, reps=20, figures=False)
    assert _tree(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dtrl-report-staging-")]


def test_outputs_of_a_previous_report_that_no_longer_apply_are_removed(tmp_path):
    exp = _two_seed_grid(tmp_path)
    run_report(exp, tmp_path, reps=20, figures=False)
    mine = tmp_path / "tables" / "my_notes.txt"
    mine.write_text("kept")
    assert (tmp_path / "tables" / "probability_of_improvement.csv").exists()
    exp.grid.methods = ["none", "odt_td3"]  # no GRPO-DT: no probability-of-improvement table
    run_report(exp, tmp_path, reps=20, figures=False)
    assert not (tmp_path / "tables" / "probability_of_improvement.csv").exists()
    assert not (tmp_path / "tables" / "html" / "probability_of_improvement.html").exists()
    assert (tmp_path / "tables" / "main.csv").exists() and mine.read_text() == "kept"


def test_broken_run_files_are_runs_not_scored_with_a_reason(tmp_path, capsys, monkeypatch):
    import dtrl.report.build
    from dtrl.report.build import cmd_report

    monkeypatch.setattr(dtrl.report.build, "REPS", 20)

    exp = _two_seed_grid(tmp_path, seeds=(0, 1, 2))
    runs = tmp_path / "runs"
    (runs / "grpo/pendulum-random/seed0/progress.csv").write_text("")  # 0 bytes
    (runs / "grpo/pendulum-random/seed1/summary.json").write_text("[1, 2]")  # a list
    p = runs / "odt_td3/pendulum-random/seed0/summary.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "final_norm_return": "31.0"}))  # a string score
    p = runs / "odt_td3/pendulum-random/seed1/summary.json"
    edited = {**json.loads(p.read_text()), "final_norm_return": 95.0}  # hand-edited: final_return says 31
    p.write_text(json.dumps(edited))
    assert cmd_report(exp, tmp_path, runs) == 0
    assert "4 run(s) not scored" in capsys.readouterr().err
    ns = pd.read_csv(tmp_path / "tables" / "not_scored.csv").set_index(["method", "seed"])
    assert list(ns["status"]) == ["invalid"] * 4
    assert ns.loc[("grpo", 0), "reason"] == "progress.csv is empty (0 bytes)"
    assert ns.loc[("grpo", 1), "reason"] == "summary.json holds a JSON list, not an object"
    assert "'final_norm_return' must be a finite number" in ns.loc[("odt_td3", 0), "reason"]
    assert "'final_norm_return' is 95.0 but final_return" in ns.loc[("odt_td3", 1), "reason"]
    main = pd.read_csv(tmp_path / "tables" / "main.csv").set_index("task")
    assert main.loc["pendulum-random", "grpo_seeds"] == 1 and main.loc["pendulum-random", "odt_td3_seeds"] == 1
    assert main.loc["pendulum-random", "odt_td3_mean"] == pytest.approx(32.0)  # seed 2 alone: 30 + 0 + 2
