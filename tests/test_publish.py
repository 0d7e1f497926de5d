"""scripts/publish_results.py: a grid's page and every run's records are published, nothing heavy, nothing
outside docs/results/ replaced."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("publish_results", REPO / "scripts" / "publish_results.py")
publish_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(publish_results)


def write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_publishes_the_page_and_every_runs_records_only(tmp_path):
    src = tmp_path / "results"
    for rel in ["REPORT.md", "tables/main.csv", "tables/main.md", "figures/curves.png",
                "runs/grpo/hopper-random/seed0/progress.csv", "runs/grpo/hopper-random/seed0/summary.json",
                "runs/odt/hopper-random/seed3/summary.json", "pretrain/hopper-random/seed0/pretrain.csv",
                "pretrain_det/hopper-random/seed0/summary.json", "data/hopper-random.json",
                "data/behaviour/hopper/metadata.json"]:
        write(src / rel)
    for heavy in ["runs/grpo/hopper-random/seed0/checkpoint.pt", "pretrain/hopper-random/seed0/model.pt",
                  "data/hopper-random.hdf5", "logs/finetune/x.log"]:
        write(src / heavy)
    dst = tmp_path / "docs" / "results" / "grid"
    write(dst / "stale.md")  # the destination is replaced whole
    assert publish_results.publish(src, dst) == 11
    got = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert "stale.md" not in got and len(got) == 11
    assert not any(p.endswith((".pt", ".hdf5", ".log")) for p in got)


def test_refuses_a_destination_outside_docs_results_and_a_grid_without_its_page(tmp_path, capsys):
    keep = tmp_path / "mine"
    write(keep / "precious.txt")
    assert publish_results.main([str(tmp_path), str(keep)]) == 2
    assert "not under" in capsys.readouterr().err and (keep / "precious.txt").exists()

    dst = tmp_path / "dst"
    write(dst / "kept.md")
    with pytest.raises(SystemExit, match="REPORT.md not found"):
        publish_results.publish(tmp_path / "empty", dst)
    assert (dst / "kept.md").exists()
