"""Regenerate the key tables of config/README.md from the config declarations.

The tables are made by the same code as `dtrl config --doc` (dtrl.config.experiment.describe) plus one
table per registered algorithm for its method-entry parameters, so the README documents every key
with its default and meaning exactly as declared. Run from the repository root:

    python workflow/scripts/config_readme.py          # rewrite the generated part of config/README.md
    python workflow/scripts/config_readme.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "config" / "README.md"
BEGIN = "<!-- BEGIN GENERATED KEYS (python workflow/scripts/config_readme.py) -->"
END = "<!-- END GENERATED KEYS -->"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    out = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, text in rows:
        out.append(f"| `{key}` | {'`' + _cell(default) + '`' if default else ''} | {_cell(text)} |")
    return out


def generated() -> str:
    from dtrl.config.experiment import describe
    from dtrl.config.registry import ALGORITHMS, get_algorithm

    lines = ["### Experiment keys", "", "Every key of the experiment YAML (`dtrl config --doc` prints the same).", ""]
    lines += _table(describe())
    lines += ["", "### Method parameters", "",
              "Keys of a `methods.<name>` entry besides `algo` and `online`, by algorithm (`algo:`). Left out, a "
              "parameter takes the default below.", ""]
    for algo in sorted(ALGORITHMS):
        lines += [f"#### `algo: {algo}` ({ALGORITHMS[algo]})", ""]
        try:
            cls = get_algorithm(algo)
        except ImportError as e:
            lines += [f"(not importable here: {e})", ""]
            continue
        rows = describe(cls.Config)
        doc = (cls.__doc__ or "").strip().splitlines()
        if doc:
            lines += [_cell(doc[0]), ""]
        needs = getattr(cls, "needs_pretrained_dt", True)
        head = getattr(cls, "pretrained_head", "gaussian")
        kind = "" if not needs or head == "gaussian" else f" (`model.action_head: {head}`, pretrained under pretrain_det/)"
        backbones = getattr(cls, "backbones", ("dt",))
        on = "" if not needs else (" Backbones: any (`model.backbone`)." if backbones is None else
                                   f" Backbones: {', '.join(backbones)} (another `model.backbone` is refused).")
        lines += [f"Needs the pretrained DT: {'yes' if needs else 'no'}{kind}.{on}", ""]
        lines += (_table(rows) if rows else ["No parameters."]) + [""]
    return "\n".join(lines).rstrip() + "\n"


def render(text: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{README}: markers {BEGIN!r} and {END!r} not found")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{generated()}\n{END}{tail}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if config/README.md is out of date")
    args = p.parse_args()
    text = README.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{README} is out of date: run python workflow/scripts/config_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
