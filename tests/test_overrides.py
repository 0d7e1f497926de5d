"""Per-family / per-task / per-method settings (`overrides:`), resolved in one place for every consumer."""

import re
from pathlib import Path

import pytest
import yaml

from dtrl.config import ConfigError
from dtrl.config.experiment import load_config
from dtrl.workflow.finetune import finetune
from dtrl.config.registry import ALGORITHMS, register

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "config.yaml"


@pytest.fixture(scope="module")
def paper():
    return load_config(PAPER)


@pytest.mark.parametrize("task", ["walker2d-medium", "walker2d-medium-replay", "walker2d-random"])
def test_walker2d_resolves_the_reference_settings(paper, task):
    """Vitamin readme.md:108-110: --learning_rate 0.001 --weight_decay 0.001 --num_updates_per_pretrain_iter 10000."""
    pre = paper.for_task(task).pretrain
    assert (pre.lr, pre.weight_decay, pre.updates) == (1e-3, 1e-3, 10_000)
    for m in ("odt", "odt_td3"):
        p = paper.method(m, task=task).params
        assert (p.lr, p.weight_decay) == (1e-3, 1e-3), m
    # GRPO-DT's own optimiser is not ODT's: the entry names its methods, so GRPO keeps its values.
    assert paper.method("grpo", task=task).params == paper.method("grpo").params


def test_other_families_keep_or_get_their_own_settings(paper):
    hop = paper.for_task("hopper-medium").pretrain
    assert (hop.lr, hop.weight_decay, hop.updates) == (1e-4, 5e-4, 5_000)  # the reference defaults
    assert paper.for_task("hopper-medium") is paper  # nothing matches: the config itself
    for task in ("halfcheetah-medium", "ant-random"):
        assert paper.for_task(task).pretrain.weight_decay == 1e-4
        assert paper.for_task(task).pretrain.lr == 1e-4
        assert paper.method("odt_td3", task=task).params.weight_decay == 1e-4
    assert paper.method("iql", task="ant-medium").params.reward_normalization == "none"
    assert paper.method("iql", task="hopper-medium").params.reward_normalization == "minmax"
    # Budgets: the ODT+TD3 code's 600k online steps for the three baselines (main.py:600).
    assert {paper.method(m, task="ant-medium").online.env_steps for m in ("odt", "odt_td3", "iql")} == {600_000}


def _load(tmp_path, overrides, **extra):
    cfg = {"grid": {"methods": ["odt", "grpo"], "tasks": ["walker2d-medium", "hopper-medium"], "seeds": [0]},
           "overrides": overrides, **extra}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def test_entries_apply_in_order_and_match_family_task_and_algorithm(tmp_path):
    exp = _load(tmp_path, [
        {"families": ["walker2d"], "pretrain": {"lr": 1e-3, "updates": 7}},
        {"tasks": ["walker2d-medium"], "pretrain": {"lr": 2e-3}},  # later wins, key by key
        {"methods": ["odt"], "params": {"buffer_size": 9}, "online": {"env_steps": 11}},  # matched by algorithm
    ], methods={"odt_big": {"algo": "odt", "batch_size": 32}})
    pre = exp.for_task("walker2d-medium").pretrain
    assert (pre.lr, pre.updates) == (2e-3, 7)
    assert exp.for_task("walker2d-random").pretrain.lr == 1e-3
    assert exp.for_task("hopper-medium").pretrain.lr == 1e-4
    for name in ("odt", "odt_big"):
        spec = exp.method(name, task="hopper-medium")
        assert spec.params.buffer_size == 9 and spec.online.env_steps == 11
    assert exp.method("odt_big", task="hopper-medium").params.batch_size == 32  # the entry's own values stay
    assert exp.method("odt").params.buffer_size == 1000  # without a task, no override applies
    resolved = exp.for_task("walker2d-medium", "odt")
    assert resolved.overrides == [] and resolved.pretrain.lr == 2e-3  # a complete record, applied once


BAD = [
    ({"families": ["walker2d"], "pretrain": {"lrr": 1e-3}}, "unknown config key 'overrides[0].pretrain.lrr'"),
    ({"methods": ["odt"], "params": {"learning_rate": 1e-3}}, "unknown config key 'overrides[0].params.learning_rate'"),
    ({"famlies": ["walker2d"]}, "unknown config key 'overrides[0].famlies'"),
    ({"families": ["walkr2d"], "pretrain": {"lr": 1e-3}}, "overrides[0].families: unknown env family 'walkr2d'. Known: ant, "),
    ({"tasks": ["walker2d-mediun"]}, "overrides[0].tasks: unknown task 'walker2d-mediun'"),
    ({"methods": ["odtt"], "params": {"lr": 1e-3}}, "overrides[0].methods: 'odtt' is neither"),
    ({"params": {"lr": 1e-3}}, "overrides[0].params: algorithm parameters need `methods`"),
    ({"methods": ["odt"], "pretrain": {"lr": 1e-3}}, "overrides[0]: an entry with `methods` cannot set `model` or "
                                                      "`pretrain`"),
    ({"pretrain": {"lr": "fast"}}, "overrides[0].pretrain.lr: expected a number"),
]


@pytest.mark.parametrize("entry, message", BAD)
def test_a_bad_override_is_one_clear_error(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load(tmp_path, [entry])


def test_cli_prints_the_resolved_config(capsys):
    from dtrl.cli import main

    assert main(["config", "-c", str(PAPER), "--task", "walker2d-random", "--method", "odt"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["pretrain"]["lr"] == 1e-3 and out["methods"]["odt"]["weight_decay"] == 1e-3 and out["overrides"] == []
    assert main(["config", "-c", str(PAPER), "--method", "odt"]) == 2
    assert "--method needs --task" in capsys.readouterr().err


@pytest.fixture
def with_random_walk():
    register("random_walk", "test_online_harness:RandomWalk")
    yield
    ALGORITHMS.pop("random_walk", None)


def test_finetune_runs_with_the_resolved_settings(tmp_path, with_random_walk):
    base = {"results": str(tmp_path), "device": "cpu", "grid": {"methods": ["rw"], "tasks": ["hopper-medium"]},
            "eval": {"episodes": 1, "final_episodes": 1},
            "online": {"env_steps": 200, "eval_every_env_steps": 1000, "progress": False},
            "methods": {"rw": {"algo": "random_walk", "steps_per_iteration": 10}},
            "overrides": [{"families": ["hopper"], "methods": ["random_walk"],
                           "params": {"steps_per_iteration": 40}, "online": {"env_steps": 120}}]}
    s = finetune(load_config(None, base), "rw", "hopper-medium", 0)
    assert s["env_steps"] == 120 and s["iterations"] == 3


def test_pretraining_runs_with_the_resolved_settings(tmp_path):
    from dtrl.config.experiment import OverrideEntry
    from dtrl.util.io import torch_load
    from dtrl.harness.pretrain import pretrain
    from dtrl.tasks import get_task
    from test_pretrain import _dataset, _exp

    exp = _exp(tmp_path, updates=20)
    exp.overrides = [OverrideEntry(families=["pendulum"], pretrain={"updates": 6, "log_every": 3})]
    s = pretrain(exp, get_task("pendulum-medium"), 0, _dataset())
    assert s["updates"] == 6
    ckpt = torch_load(tmp_path / "pretrain/pendulum-medium/seed0/model.pt")
    assert ckpt["config"]["pretrain"]["updates"] == 6 and ckpt["config"]["overrides"] == []
