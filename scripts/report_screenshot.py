#!/usr/bin/env python
"""A screenshot of the first screen of Snakemake's HTML report, and what that screen shows.

    snakemake --configfile config/quick.yaml --report results/quick/report.html     # (= make report)
    python scripts/report_screenshot.py results/quick/report.html docs/report_first_screen.png

Opens the report in headless Chromium (Debian: `apt-get install chromium`; also looked up as
chromium-browser, google-chrome, or $CHROMIUM) at --size (default 1600x1000), lets its scripts
render the landing page, and writes the PNG. It then loads a copy of the report with a probe added
that measures what lies inside that first screen, and prints it as JSON: the main table's header
cells and whether they are all on screen, and the first finding (the first bold-led paragraph under
"Findings") and whether its lead is on screen. Exit status 1 if either is not on the first screen,
2 if no Chromium is found. tests/test_report_html.py runs the same check on a synthetic grid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SIZE = (1600, 1000)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=10000"]
MARK = "data-dtrl-first-screen"
# Measures, once the page has rendered, which of the landing page's elements lie inside the window.
PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const vw = window.innerWidth, vh = window.innerHeight;
  const inside = el => { if (!el) return false; const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && r.top >= 0 && r.bottom <= vh && r.left >= 0 && r.right <= vw; };
  const root = document.querySelector(".dtrl-report");
  const table = root && root.querySelector("table");
  const header = table ? [...table.querySelectorAll("tr:first-child th")] : [];
  const heading = root && [...root.querySelectorAll("h2")].find(h => h.textContent.trim() === "Findings");
  let finding = null;
  for (let el = heading && heading.nextElementSibling; el && el.tagName !== "H2"; el = el.nextElementSibling) {
    if (el.tagName === "P" && el.firstElementChild && el.firstElementChild.tagName === "STRONG") { finding = el; break; }
  }
  document.body.setAttribute("MARK", JSON.stringify({
    window: [vw, vh], landing: !!root,
    main_table_header: header.map(th => th.textContent.trim()),
    main_table_header_on_screen: header.length > 0 && header.every(inside),
    finding: finding ? finding.textContent.trim().slice(0, 200) : null,
    finding_on_screen: !!finding && inside(finding.firstElementChild)}));
}, 500));
</script>""".replace("MARK", MARK)


def find_chromium() -> str | None:
    for name in filter(None, [os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(chromium: str, args: list[str], window: tuple[int, int], timeout: int) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="dtrl-chromium-") as profile:  # a new, empty profile each time
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _dom_attribute(chromium: str, page: str, window: tuple[int, int], timeout: int) -> dict:
    """The JSON a page's script left in <body MARK=...>, from Chromium's DOM after load."""
    import html

    with tempfile.TemporaryDirectory(prefix="dtrl-report-") as d:
        copy = Path(d) / "page.html"
        copy.write_text(page)
        out = _chromium(chromium, ["--dump-dom", copy.as_uri()], window, timeout)
    m = re.search(MARK + r'="([^"]*)"', out.stdout)
    if not m:
        raise RuntimeError(f"the probe did not run (chromium exit {out.returncode}): {out.stderr[-2000:]}")
    return json.loads(html.unescape(m.group(1)))


def window_for(size: tuple[int, int], chromium: str, timeout: int = 60) -> tuple[int, int]:
    """The --window-size whose page viewport is ``size``: headless Chromium's viewport is shorter than
    its window by the height of the browser's own bars (143 px in Chromium 150)."""
    probe = f'<html><body><script>document.body.setAttribute("{MARK}", JSON.stringify([innerWidth, innerHeight]))' \
            "</script></body></html>"
    w, h = _dom_attribute(chromium, probe, size, timeout)
    return size[0] + size[0] - w, size[1] + size[1] - h


def screenshot(report: Path, png: Path, size: tuple[int, int] = SIZE, chromium: str | None = None,
               timeout: int = 180) -> None:
    """A PNG of the report's first screen: the top ``size`` of the page in a ``size`` viewport."""
    from PIL import Image

    chromium = chromium or find_chromium()
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dtrl-shot-") as d:
        raw = Path(d) / "raw.png"
        out = _chromium(chromium, [f"--screenshot={raw}", Path(report).resolve().as_uri()], window_for(size, chromium),
                        timeout)
        if not raw.exists():
            raise RuntimeError(f"chromium wrote no screenshot (exit {out.returncode}): {out.stderr[-2000:]}")
        with Image.open(raw) as im:  # the window's image runs past the viewport by the bars' height
            im.crop((0, 0, size[0], size[1])).save(png, optimize=True)


def first_screen(report: Path, size: tuple[int, int] = SIZE, chromium: str | None = None,
                 timeout: int = 180) -> dict:
    """What the report's first screen shows (see the module docstring), measured in Chromium."""
    chromium = chromium or find_chromium()
    text = Path(report).read_text()
    at = text.rfind("</body>")
    probed = text[:at] + PROBE + text[at:] if at >= 0 else text + PROBE
    return _dom_attribute(chromium, probed, window_for(size, chromium), timeout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path, help="the HTML file `snakemake --report` wrote")
    ap.add_argument("png", type=Path, help="where the screenshot goes")
    ap.add_argument("--size", default=f"{SIZE[0]}x{SIZE[1]}", help="window WIDTHxHEIGHT (default %(default)s)")
    a = ap.parse_args(argv)
    size = tuple(int(v) for v in a.size.lower().split("x"))
    chromium = find_chromium()
    if chromium is None:
        print("report_screenshot: no Chromium found (apt-get install chromium, or set CHROMIUM)", file=sys.stderr)
        return 2
    screenshot(a.report, a.png, size, chromium)
    seen = first_screen(a.report, size, chromium)
    print(json.dumps(seen, indent=2))
    print(f"wrote {a.png}")
    return 0 if seen["main_table_header_on_screen"] and seen["finding_on_screen"] else 1


if __name__ == "__main__":
    sys.exit(main())
