"""Snakemake's HTML report opens on REPORT.md: the HTML made from it (workflow/scripts/report_html.py), and
the report's first screen in headless Chromium (skipped without Chromium; scripts/report_screenshot.py)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_report import ENV_STEPS, METHODS, SCORES, SEEDS, UPDATES, run_report, write_run
from test_workflow import REPO, copy_workflow


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report_html = _load(REPO / "workflow" / "scripts" / "report_html.py")
screenshot = _load(REPO / "scripts" / "report_screenshot.py")

PAGE = """\
# Results: g

Made by `dtrl report`.

- dtrl commit: `abc`

## Findings

### Each method against the offline DT it starts from

**ODT − DT (offline)** IQM difference: +1.0 [-1.0, +2.0].

## Tables

### Main results

| task | DT (offline) | ODT |
|---|---:|---:|
| hopper-medium | 1.0 ± 0.1 | 2.0 ± 0.2 |

## Warnings

- a warning of the main table

### aggregates

| method | IQM |
|---|---:|
| ODT | 2.0 |

## Figures

![curve](figures/curve.png)

## Resolved config

```yaml
## not a heading: inside a code block
results: g
```
"""


def _headings(html_text: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<h[1-3]>(.*?)</h[1-3]>", html_text)]


def test_main_table_moves_before_the_findings_and_every_section_stays(tmp_path):
    md = tmp_path / "REPORT.md"
    md.write_text(PAGE)
    (tmp_path / "figures").mkdir()
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    (tmp_path / "figures" / "curve.png").write_bytes(png)
    page, front = report_html.render(md)
    assert _headings(page) == ["Results: g", "Main results", "Findings",
                               "Each method against the offline DT it starts from", "Tables", "Warnings",
                               "aggregates", "Figures", "Resolved config"]
    assert page.count("<table>") == 2 and "<th>task</th>" in page and "hopper-medium" in page
    assert "## not a heading: inside a code block" in page  # code blocks are not split at their lines
    import base64

    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page  # the figure is embedded
    body = page.split('<div class="dtrl-report">', 1)[1].split("</body>")[0]
    assert front.endswith(body) and front.startswith("<style>")  # the same content, with the landing styles
    assert ".dtrl-report" in front and ":has(.dtrl-report)" in front
    assert report_html.main_table_first("# t\n\n## Findings\n\nx\n") == "# t\n\n## Findings\n\nx\n"


def test_the_workflow_description_shows_the_results_page():
    rst = (REPO / "workflow" / "report" / "workflow.rst").read_text()
    assert 'f.name == "REPORT.html"' in rst and ":file: {{ f.path.parent }}/front.html" in rst
    assert 'report: "workflow/report/workflow.rst"' in (REPO / "Snakefile").read_text()


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    """Snakemake's report of a synthetic grid of the quick grid's shape (the two pendulum tasks, four
    methods, 3 seeds) that `dtrl report` reported."""
    from dtrl.config.experiment import ExperimentConfig, GridConfig

    root = tmp_path_factory.mktemp("html_report")
    res = root / "results"
    tasks = ["pendulum-medium-replay", "pendulum-random"]
    for m in METHODS:
        for j, t in enumerate(tasks):
            for i, s in enumerate(SEEDS):
                write_run(res, m, t, s, SCORES[m][i, j], ENV_STEPS[m], UPDATES[m])
    exp = ExperimentConfig(results=str(res), grid=GridConfig(methods=METHODS, tasks=tasks, seeds=SEEDS))
    run_report(exp, res, reps=100)
    wf = copy_workflow(root / "wf")
    g = exp.grid
    (wf / "grid.yaml").write_text(f"results: {res}\ngrid: {json.dumps({'methods': g.methods, 'tasks': g.tasks, 'seeds': g.seeds})}\n")
    report_html.write(res / "REPORT.md", res / "report" / "REPORT.html", res / "report" / "front.html")
    out = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", "grid.yaml", "--report",
                          str(root / "report.html")], cwd=wf, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return res, root / "report.html"


@pytest.mark.slow
@pytest.mark.skipif(screenshot.find_chromium() is None, reason="no Chromium (Debian: apt-get install chromium)")
def test_first_screen_holds_the_main_table_and_a_finding(synthetic_report, tmp_path):
    res, report = synthetic_report
    seen = screenshot.first_screen(report)
    header = [c.strip() for c in next(line for line in (res / "tables" / "main.md").read_text().splitlines()
                                      if line.startswith("|")).strip("|").split("|")]
    assert seen["window"] == list(screenshot.SIZE) and seen["landing"]
    assert seen["main_table_header"] == header and seen["main_table_header_on_screen"], seen
    assert seen["finding_on_screen"] and "IQM difference" in seen["finding"], seen
    png = tmp_path / "first.png"
    screenshot.screenshot(report, png)
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == screenshot.SIZE
