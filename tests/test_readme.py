"""The README's commands after the quick start run as written, in a fresh copy of the checkout.

`make test` runs pytest from .venv without .venv/bin on PATH; activating the venv (what the README
says to do after `make quick`) puts the interpreter's bin directory first on PATH, so the test does
the same. Only the cheap commands run: `dtrl tasks`, `dtrl config`, `dtrl status`, and Snakemake
dry runs (`-n`); the rest (training, reports) is exercised by the other tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from test_workflow import REPO, copy_workflow

CHEAP = re.compile(r"^(dtrl (tasks|config|status)\b|snakemake (.* )?-n\b)")


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    after = text.split("## Quick start", 1)[1]
    blocks = re.findall(r"```bash\n(.*?)```", after, re.S)[1:]  # the quick start's own block installs
    cmds = []
    for block in blocks:
        for line in block.splitlines():
            cmd = re.sub(r"\s+#.*$", "", line).strip()
            if CHEAP.match(cmd):
                cmds.append(cmd)
    return list(dict.fromkeys(cmds))  # each once


def test_readme_lists_cheap_commands():
    cmds = readme_commands()
    assert "dtrl tasks" in cmds and any(c.startswith("snakemake -n") for c in cmds) and \
        any(c.startswith("dtrl status") for c in cmds), cmds


def test_readme_commands_run_as_written(tmp_path):
    wf = copy_workflow(tmp_path / "clone")
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for cmd in readme_commands():
        out = subprocess.run(["bash", "-c", cmd], cwd=wf, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{cmd}\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}"
        assert "Traceback" not in out.stderr and "command not found" not in out.stderr, (cmd, out.stderr[-1500:])
        assert out.stdout.strip(), cmd
