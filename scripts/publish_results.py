"""Copy a finished grid's page and raw run records into docs/results/<name>/, so a reader can recompute it.

    python scripts/publish_results.py results/evidence_cpu docs/results/evidence_cpu

Copies what `dtrl report` wrote (REPORT.md, tables/*.md|csv, figures/*.png) and, for every run, the
records the report is computed from: runs/<method>/<task>/seed<k>/{progress.csv,summary.json} and each
pretraining's {pretrain.csv,summary.json} (pretrain*/), plus the generated datasets' summaries
(data/*.json, data/behaviour/*/metadata.json). Checkpoints, datasets and logs stay behind (sizes).
`dtrl report` on a copy of the published folder rebuilds every number of its page. The destination
is replaced whole; it must be a folder under docs/results/ (so a typo cannot delete anything else).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

PAGE = ["REPORT.md", "tables/*.md", "tables/*.csv", "figures/*.png"]
RECORDS = ["runs/*/*/seed*/progress.csv", "runs/*/*/seed*/summary.json",
           "pretrain*/*/seed*/pretrain.csv", "pretrain*/*/seed*/summary.json",
           "data/*.json", "data/behaviour/*/metadata.json"]


def publish(src: Path, dst: Path) -> int:
    files = sorted({f for pat in PAGE + RECORDS for f in src.glob(pat) if f.is_file()})
    if not (src / "REPORT.md").is_file():
        raise SystemExit(f"error: {src}/REPORT.md not found: run `dtrl report` for that grid first")
    if dst.exists():
        shutil.rmtree(dst)
    for f in files:
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, out)
    return len(files)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="the grid's results folder (its config's `results`)")
    ap.add_argument("dst", type=Path, help="a folder under docs/results/")
    a = ap.parse_args(argv)
    root = Path(__file__).resolve().parents[1] / "docs" / "results"
    if root not in a.dst.resolve().parents:
        print(f"error: {a.dst} is not under {root}: publish into docs/results/<name>", file=sys.stderr)
        return 2
    n = publish(a.src, a.dst)
    print(f"{n} files -> {a.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
