"""REPORT.md as HTML for Snakemake's report (`snakemake --report`), figures embedded.

Writes two files from the REPORT.md `dtrl report` wrote (run by the workflow's ``report_html`` rule):

- ``REPORT.html``: a standalone page, listed in the report under "1. REPORT.md";
- ``front.html``: the same content as a fragment that ``workflow/report/workflow.rst`` puts on the
  report's landing page, so the report opens on the results. Its styles are scoped to the fragment,
  and it widens the landing page's description column (Snakemake keeps it narrow beside the DAG) and
  puts the DAG below it.

Both show REPORT.md's sections in REPORT.md's order, except that the main table (the first table of
its "Tables" section) comes right after the page's header, before the findings: the first screen
then holds the main table and the first findings. Figures referenced by REPORT.md are embedded as
data URIs, so the files stand alone (Snakemake's report is one self-contained HTML file).

    python workflow/scripts/report_html.py results/quick/REPORT.md results/quick/report
"""
# No `from __future__` import: Snakemake's `script:` directive puts its preamble above this file's code.

import argparse
import html
from pathlib import Path

from dtrl.report.common import markdown_to_html

STYLE = """
.dtrl-report{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;font-size:14px;line-height:1.45;
  color:#1f2328;max-width:none}
.dtrl-report h1{font-size:1.6em;margin:.2em 0 .4em}
.dtrl-report h2{font-size:1.3em;margin:1.2em 0 .4em;border-bottom:1px solid #ddd}
.dtrl-report h3{font-size:1.1em;margin:1em 0 .3em}
.dtrl-report p,.dtrl-report ul{margin:.4em 0}
.dtrl-report table{border-collapse:collapse;margin:.4em 0;font-size:13px;display:block;overflow-x:auto;
  max-width:100%;width:auto}
.dtrl-report th,.dtrl-report td{border:1px solid #d0d7de;padding:2px 8px;text-align:right}
.dtrl-report td{white-space:nowrap}
.dtrl-report th{background:#f6f8fa}
.dtrl-report td:first-child,.dtrl-report th:first-child{text-align:left}
.dtrl-report img{max-width:100%;height:auto}
.dtrl-report pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px;white-space:pre}
.dtrl-report code{font-size:.92em}
.dtrl-report code::before,.dtrl-report code::after{content:none}
"""
# The landing page of Snakemake's report (9.x) shows the workflow description in a narrow column
# (prose, max-w-lg) beside the rule graph, centred in a full-height box: widen it to the window, start
# it at the top (a centred box taller than the screen cannot be scrolled to its top) and put the rule
# graph below it. Scoped with :has(), so no other view of the report changes. (STYLE's code rule
# undoes the typography plugin's backticks around inline code.)
LANDING_STYLE = """
.h-screen.overflow-auto:has(.dtrl-report){align-items:flex-start;justify-content:flex-start;min-width:0}
.gap-3:has(.dtrl-report){flex-direction:column;align-items:stretch;min-width:0;width:100%}
.prose:has(.dtrl-report){max-width:none}
"""


def _split(lines: list[str], prefix: str) -> list[list[str]]:
    """Chunks of ``lines`` each starting at a heading line that starts with ``prefix`` (outside code
    fences); the first chunk is what precedes the first such heading."""
    chunks: list[list[str]] = [[]]
    fenced = False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith(prefix):
            chunks.append([])
        chunks[-1].append(line)
    return chunks


def main_table_first(md: str) -> str:
    """REPORT.md with the first table of its '## Tables' section moved before the findings (as a
    '##' section of its own); unchanged if there is no such table."""
    preamble, *sections = _split(md.splitlines(), "## ")
    at = next((i for i, s in enumerate(sections) if s[0].strip() == "## Tables"), None)
    if at is None:
        return md
    head, *tables = _split(sections[at], "### ")
    if not tables:
        return md
    main, rest = tables[0], tables[1:]
    sections[at] = head + [line for t in rest for line in t]
    moved = ["##" + main[0][3:] if main[0].startswith("###") else main[0]] + main[1:]
    return "\n".join(preamble + moved + [line for s in sections for line in s]) + "\n"


def render(md_path: Path) -> tuple[str, str]:
    """(standalone page, landing-page fragment) of the REPORT.md at ``md_path``."""
    md_path = Path(md_path)
    body = markdown_to_html(main_table_first(md_path.read_text()), md_path.parent)
    content = f'<div class="dtrl-report">\n{body}</div>\n'
    front = f"<style>{STYLE}{LANDING_STYLE}</style>\n{content}"
    title = html.escape(f"dtrl: {md_path.parent.name}")
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}body{{margin:16px}}</style></head><body>\n{content}</body></html>\n")
    return page, front


def write(md_path: Path, page_path: Path, front_path: Path) -> None:
    page, front = render(md_path)
    for path, text in ((page_path, page), (front_path, front)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


if "snakemake" in globals():  # run by the workflow's `script:` directive
    write(Path(snakemake.input.page), Path(snakemake.output.page), Path(snakemake.output.front))  # noqa: F821
    Path(snakemake.log[0]).write_text(f"wrote {snakemake.output.page} and {snakemake.output.front}\n")  # noqa: F821
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report_md", type=Path, help="REPORT.md written by dtrl report")
    ap.add_argument("out_dir", type=Path, help="where REPORT.html and front.html go")
    a = ap.parse_args()
    write(a.report_md, a.out_dir / "REPORT.html", a.out_dir / "front.html")
