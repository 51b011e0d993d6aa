"""Two processes under torchrun (gloo, CPU) train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rgdm.io import load_tensors

TINY = {
    "domain": {"name": "toy", "train_size": 512},
    "network": {"width": 32, "depth": 1},
    "diffusion": {"schedule": "linear", "timesteps": 20},
    "train": {"steps": 30, "batch_size": 64, "checkpoint_every": 10, "log_every": 1, "seed": 5, "lr": 2.0e-3},
}


def run(args: list[str], processes: int) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "rgdm.cli", "-q", *args]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(one: Path, two: Path) -> None:
    a, b = load_tensors(one / "final.safetensors"), load_tensors(two / "final.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    assert losses(one) == pytest.approx(losses(two), rel=1e-4, abs=1e-6)
    counts = [json.loads((run / "reward_counter.json").read_text()) for run in (one, two)]
    assert counts[0] == counts[1], "rewards are spent once, whatever the number of processes"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("ddp")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    runs = {}
    for processes in (1, 2):
        runs[processes] = folder / f"pretrain-{processes}"
        run(["train", "--config", str(config), "--out", str(runs[processes])], processes)
    return runs


def test_pretraining_on_two_processes_matches_one(pretrained):
    assert_same_training(pretrained[1], pretrained[2])
    def files(run: Path) -> list[str]:
        return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "tb" not in p.parts)

    assert files(pretrained[1]) == files(pretrained[2]), "rank 0 alone writes, the same files as one process"


@pytest.mark.parametrize("algorithm", ["rgdm-data", "rgdm-model", "rgdm-stepwise", "cfg", "rwr", "ddpo"])
def test_finetuning_on_two_processes_matches_one(pretrained, tmp_path, algorithm):
    runs = {}
    for processes in (1, 2):
        runs[processes] = tmp_path / f"{algorithm}-{processes}"
        run(["finetune", "--checkpoint", str(pretrained[1]), "--reward", "region", "--algorithm", algorithm,
             "--steps", "12", "--out", str(runs[processes]), "--set", "train.batch_size=32",
             "--set", "algorithm.scored_size=100", "--set", "algorithm.trajectories=16",
             "--set", "algorithm.minibatch=30", "--set", "algorithm.sample_steps=5", "--set", "train.log_every=1",
             "--set", "algorithm.buffer_size=50", "--set", "algorithm.rounds=2"],
            processes)
    assert_same_training(runs[1], runs[2])


def budgeted_stepwise_runs(pretrained, folder: Path, steps: int, *settings: str) -> Path:
    """Step-wise fine-tunes with a budget of 1300 calls on one and two processes; asserts they train
    alike and returns the two-process run."""
    runs = {}
    extra = [arg for setting in settings for arg in ("--set", setting)]
    for processes in (1, 2):
        runs[processes] = folder / f"stepwise-{processes}"
        run(["finetune", "--checkpoint", str(pretrained[1]), "--reward", "region", "--algorithm", "rgdm-stepwise",
             "--steps", str(steps), "--out", str(runs[processes]), "--set", "train.batch_size=32",
             "--set", "train.log_every=1", "--set", "reward.budget=1300", *extra], processes)
    assert_same_training(runs[1], runs[2])
    return runs[2]


def test_a_reward_budget_stops_two_processes_where_it_stops_one(pretrained, tmp_path):
    two = budgeted_stepwise_runs(pretrained, tmp_path, 12)
    assert json.loads((two / "reward_counter.json").read_text())["reward_calls"] == 5 * 8 * 32
    assert len(losses(two)) == 5, "the sixth step would pass the budget of 1300 calls"


def test_step_wise_exploration_start_spends_and_stops_alike_on_two_processes(pretrained, tmp_path):
    two = budgeted_stepwise_runs(pretrained, tmp_path, 30, "algorithm.explore_start=6")
    calls = json.loads((two / "reward_counter.json").read_text())["reward_calls"]
    steps = len(losses(two))
    assert calls <= 1300 and calls % 8 == 0
    assert 5 < steps < 30, "pairs above the start cost nothing, so the budget lasts longer than 5 full steps"


GRAPH = {
    "domain": {"name": "molecules", "hydrogens": False, "bonds": True, "subset": 64},
    "network": {"hidden": 16, "edge_hidden": 8, "layers": 1},
    "diffusion": {"schedule": "cosine", "timesteps": 20},
    "train": {"steps": 6, "batch_size": 8, "checkpoint_every": 3, "log_every": 1, "seed": 5, "lr": 2.0e-3},
}


def test_bond_molecules_train_and_finetune_on_two_processes_as_on_one(tmp_path):
    """Multi-part samples (positions, atoms, bonds) under data parallelism: pre-training and a step-wise
    QED fine-tune on two processes equal one."""
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump(GRAPH))
    pretrained, finetuned = {}, {}
    for processes in (1, 2):
        pretrained[processes] = tmp_path / f"pretrain-{processes}"
        run(["train", "--config", str(config), "--out", str(pretrained[processes])], processes)
        finetuned[processes] = tmp_path / f"stepwise-{processes}"
        run(["finetune", "--checkpoint", str(pretrained[1]), "--reward", "qed", "--algorithm", "rgdm-stepwise",
             "--steps", "4", "--out", str(finetuned[processes]), "--set", "train.batch_size=8",
             "--set", "train.log_every=1", "--set", "algorithm.candidates=4"], processes)
    assert_same_training(pretrained[1], pretrained[2])
    assert_same_training(finetuned[1], finetuned[2])


@pytest.mark.parametrize("variant", ["self-conditioned", "input-perturbed"])
def test_bond_molecule_pretraining_variants_train_on_two_processes_as_on_one(tmp_path, variant):
    """Self-conditioning's two passes and its hinted half of the rows (chosen by each row's time), and input
    perturbation's extra noise (drawn for the whole batch), under data parallelism: two processes equal one."""
    config = tmp_path / "graph.yaml"
    change = ({"network": GRAPH["network"] | {"self_condition": True}} if variant == "self-conditioned"
              else {"algorithm": {"name": "pretrain", "input_perturbation": 0.1}})
    config.write_text(yaml.safe_dump(GRAPH | change))
    runs = {processes: tmp_path / f"pretrain-{processes}" for processes in (1, 2)}
    for processes, out in runs.items():
        run(["train", "--config", str(config), "--out", str(out)], processes)
    assert_same_training(runs[1], runs[2])
