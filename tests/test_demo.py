"""``rgdm demo``: the toy demo reaches the pay-off, and demos run one after another in one folder."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest

from rgdm.benchmarks import demo
from rgdm.cli import main
from rgdm.engine import load_config

#: The fastest settings each fine-tuning demo allows (the molecule demo's as in test_molecules_domain).
FAST_TOY = {"finetune_steps": 5, "samples": 100}
FAST_MOLECULES = {"finetune_steps": 2, "rounds": 2, "buffer_size": 8, "samples": 6, "sample_steps": 4,
                  "percentile_molecules": 500}


def test_demo_writes_its_report_and_reaches_the_payoff(tmp_path):
    out = tmp_path / "demo" / "toy"
    assert main(["-q", "demo", "--out", str(tmp_path / "demo")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rgdm"]["mean_reward"] > 0.75 > metrics["pretrained"]["mean_reward"]
    assert metrics["rgdm"]["energy_distance"] < 5 * metrics["rgdm"]["noise_floor"]
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "run" / "final.safetensors").is_file()
    with np.load(out / "samples.npz") as data:
        assert data["samples"].shape == (2000, 2)


@pytest.fixture
def fast_demos(monkeypatch):
    """``rgdm demo`` with the demos at their fastest settings."""
    monkeypatch.setattr(demo, "run_toy_demo", partial(demo.run_toy_demo, **FAST_TOY))
    monkeypatch.setattr(demo, "run_molecule_demo", partial(demo.run_molecule_demo, **FAST_MOLECULES))


def test_two_demos_run_in_one_folder_each_in_its_own(tmp_path, monkeypatch, fast_demos, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "demo"]) == 0
    assert main(["-q", "demo", "molecules"]) == 0, capsys.readouterr().err
    for name, reward in (("toy", "region"), ("molecules", "qed")):
        folder = tmp_path / "rgdm-demo" / name
        assert (folder / "metrics.json").is_file(), name
        assert load_config(folder / "run" / "config.yaml").reward.name == reward
    assert "demo written to rgdm-demo/molecules" in capsys.readouterr().out

    assert main(["-q", "demo"]) == 0, "a rerun of a demo resumes its own, finished run"
    monkeypatch.setattr(demo, "run_toy_demo", partial(demo.run_toy_demo, **FAST_TOY | {"finetune_steps": 6}))
    assert main(["-q", "demo"]) == 2
    error = capsys.readouterr().err
    assert "rgdm-demo/toy/run holds another run, rgdm-data of toy-ring-pretrained for reward 'region'" in error
    assert "train.steps: 5 there, 6 here" in error and "--out" in error


def test_a_demo_refuses_a_folder_holding_another_jobs_run(tmp_path):
    demo.run_toy_demo(tmp_path, progress=False, **FAST_TOY)
    with pytest.raises(ValueError, match=r"holds another run, rgdm-data of toy-ring-pretrained for reward "
                                         r"'region' \(init: 'toy-ring-pretrained' there, 'qm9-noh-pretrained' here"):
        demo.run_molecule_demo(tmp_path, progress=False, **FAST_MOLECULES)
    assert load_config(tmp_path / "run" / "config.yaml").reward.name == "region", "the run is left as it is"
