"""``rgdm bench molecules`` at a tiny budget, its budget enforcement and hacking flag, and the measures it adds:
diversity and RDKit's reading of positions alone."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace

import matplotlib.image as plt_image
import numpy as np
import pytest
from rdkit import Chem
from toolkit import hand_made_molecules

from rgdm.benchmarks import molecules
from rgdm.cli import main
from rgdm.domains.molecules.chemistry import Molecule, diversity, molecule_from_smiles, oracle_metrics, rdkit_reading
from rgdm.engine import load_trained
from rgdm.stopping import TrainingInterrupted

#: QUICK cut down to seconds: 32 reward calls, 8 final samples of 5 sampling steps, PoseBusters on 2.
TINY = replace(molecules.QUICK, reward_calls=32, finetune_steps=4, batch_size=8, curve_points=2, curve_samples=4,
               eval_samples=8, sampling_steps=5, model_rounds=2, model_sample_steps=5, candidates=2, particles=2,
               posebusters=2)


def test_the_quick_bench_writes_json_markdown_and_curves(tmp_path, monkeypatch):
    monkeypatch.setattr(molecules, "QUICK", TINY)
    report = tmp_path / "molecules.json"
    assert main(["-q", "bench", "molecules", "--quick", "--methods", "rgdm-data,best-of-n",
                 "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["task"] == {"checkpoint": "qm9-noh-pretrained", "reward": "qed", "temperature": 0.02, "floor": 0.0}
    assert result["quick"] and result["seeds"] == [0] and result["budget"]["reward_calls"] == 32
    methods = result["methods"]
    assert list(methods) == ["pretrained", "rgdm-data", "best-of-n"], "the base always comes first"
    for summary in methods.values():
        for metric in molecules.FINAL_METRICS:
            assert metric in summary and f"{metric}_std" in summary
        assert {"reward_calls", "network_evaluations", "wall_s", "calls_spent_at", "hacking",
                "per_seed"} <= set(summary)
        assert summary["molecule_stability"] is None, "a model without hydrogens has no stability"
        assert 0 <= summary["validity"] <= 1 and 0 <= summary["diversity"] <= 1
    assert methods["pretrained"]["reward_calls"] == 0
    assert methods["rgdm-data"]["reward_calls"] == methods["best-of-n"]["reward_calls"] == 32, "equal budgets"
    assert methods["best-of-n"]["calls_spent_at"] == "sampling"
    curve = methods["rgdm-data"]["per_seed"][0]["curve"]
    assert curve[0] == methods["pretrained"]["per_seed"][0]["curve"][0], "curves start at the base, 0 calls"
    assert [point[0] for point in curve[1:]] == [32, 32], "rgdm-data spends its calls before training"
    table = report.with_suffix(".md").read_text()
    assert "| rgdm-data | 32 (training)" in table and "| best-of-n | 32 (sampling)" in table
    assert "the first 2" in table, "the table says PoseBusters saw a subsample"
    height, width, _ = plt_image.imread(report.with_suffix(".png")).shape
    assert width > height > 0


def test_a_method_that_asks_for_more_calls_stops_at_the_budget(monkeypatch):
    """Two rounds of 24 own samples ask for 48 calls: a budget of 40 (given instead of the budget's 32) stops
    the run before the second."""
    monkeypatch.setattr(molecules, "QUICK", replace(TINY, posebusters=0))
    greedy = ["algorithm.name=rgdm-model", "algorithm.rounds=2", "algorithm.buffer_size=24",
              "algorithm.sample_steps=5"]
    monkeypatch.setattr(molecules, "training_methods", lambda *_: {"rgdm-model": greedy})
    result = molecules.run_molecule_benchmark(quick=True, methods=["rgdm-model"], progress=False, reward_calls=40)
    assert result["budget"]["reward_calls"] == 40
    summary = result["methods"]["rgdm-model"]
    assert summary["reward_calls"] == 24
    assert summary["per_seed"][0]["curve"][-1][0] == 24, "the early stop is measured too"
    assert "posebusters_pass" not in summary["per_seed"][0]["metrics"], "PoseBusters off"
    with pytest.raises(ValueError, match="unknown molecule benchmark methods"):
        molecules.run_molecule_benchmark(quick=True, methods=["dpo"])
    with pytest.raises(ValueError, match="reward_calls must be at least 16"):
        molecules.run_molecule_benchmark(quick=True, reward_calls=8)


def test_own_sample_buffers_can_be_drawn_by_the_corrector_sampler(tmp_path, monkeypatch, capsys):
    """``--corrector-snr`` with ``--buffer-steps 4``: each of the 2 rounds' 16 buffer samples takes one
    corrector step after each of its 3 steps that do not land at 0; the measures stay plain, the report names
    the buffers' sampler, and the work folder is bound to it."""
    monkeypatch.setattr(molecules, "QUICK", replace(TINY, posebusters=0))
    args = ["bench", "molecules", "--quick", "--methods", "rgdm-model", "--buffer-steps", "4"]
    plain, corrected = tmp_path / "plain.json", tmp_path / "corrected.json"
    assert main(["-q", *args, "--json", str(plain)]) == 0
    assert main(["-q", *args, "--corrector-snr", "0.3", "--work-dir", str(tmp_path / "work"), "--json",
                 str(corrected)]) == 0
    runs = [json.loads(path.read_text())["methods"] for path in (plain, corrected)]
    evaluations = [methods["rgdm-model"]["network_evaluations"] for methods in runs]
    assert evaluations[1] - evaluations[0] == 2 * 16 * 3
    bases = [methods["pretrained"]["per_seed"][0] for methods in runs]
    assert [(base["metrics"], base["curve"]) for base in bases] == [(bases[0]["metrics"], bases[0]["curve"])] * 2, \
        "the measures sample plainly"
    assert "Own-sample buffers (rgdm-model, rwr): 4 steps, those each followed by 1 Langevin corrector step(s) " \
           "at snr 0.3." in corrected.with_suffix(".md").read_text()
    for changed in (["--corrector-snr", "0.2"], ["--corrector-snr", "0.3", "--anchor", "2"]):
        assert main(["-q", *args, *changed, "--work-dir", str(tmp_path / "work"), "--json", str(corrected)]) == 2
        assert "holds a molecule benchmark of other settings" in capsys.readouterr().err


def test_the_anchor_of_rgdm_model_is_a_setting():
    overrides = molecules.training_methods(TINY, 1000, anchor=2.0)["rgdm-model"]
    assert "algorithm.anchor=2.0" in overrides
    assert "algorithm.anchor=0.5" in molecules.training_methods(TINY, 1000)["rgdm-model"]
    with pytest.raises(ValueError, match="anchor must be at least 0, got -1"):
        molecules.run_molecule_benchmark(quick=True, anchor=-1)


def test_a_stopped_benchmark_continues_from_its_work_dir_as_if_never_stopped(tmp_path, monkeypatch):
    """DDPO stopped by SIGINT at its first measured point, then the same call again: the finished base is read
    back, DDPO resumes from its checkpoint, and every figure but the wall time equals an unstopped run's."""
    monkeypatch.setattr(molecules, "QUICK", replace(TINY, posebusters=0))
    straight = molecules.run_molecule_benchmark(quick=True, methods=["ddpo"], progress=False)
    measured = molecules.Measure.point
    calls = []

    def stop_at_the_first_fine_tuned_point(self, model, seed, **args):
        calls.append(seed)
        if len(calls) == 2:  # the first is the base's point
            os.kill(os.getpid(), signal.SIGINT)
        return measured(self, model, seed, **args)

    monkeypatch.setattr(molecules.Measure, "point", stop_at_the_first_fine_tuned_point)
    work = tmp_path / "work"
    with pytest.raises(TrainingInterrupted, match=r"stopped at ddpo, seed 0; .* run the same command to continue"):
        molecules.run_molecule_benchmark(quick=True, methods=["ddpo"], progress=False, work_dir=work)
    assert (work / "pretrained-seed0.json").is_file() and not (work / "ddpo-seed0.json").exists()
    resumed = molecules.run_molecule_benchmark(quick=True, methods=["ddpo"], progress=False, work_dir=work)
    assert len(calls) == 3, "the base was read back; DDPO measured only its last point again"
    for name in ("pretrained", "ddpo"):
        a, b = straight["methods"][name]["per_seed"][0], resumed["methods"][name]["per_seed"][0]
        assert a["metrics"] == b["metrics"] and a["curve"] == b["curve"]
        assert a["reward_calls"] == b["reward_calls"] and a["network_evaluations"] == b["network_evaluations"] > 0
    with pytest.raises(ValueError, match="holds a molecule benchmark of other settings"):
        molecules.run_molecule_benchmark(molecules.MoleculeTask(temperature=0.05), quick=True, methods=["ddpo"],
                                         work_dir=work)
    settings = json.loads((work / "benchmark.json").read_text())
    assert settings["base_sha256"] == load_trained("qm9-noh-pretrained").meta["sha256"]
    (work / "benchmark.json").write_text(json.dumps({**settings, "base_sha256": "a base shipped since"}))
    with pytest.raises(ValueError, match="holds a molecule benchmark of other settings"):
        molecules.run_molecule_benchmark(quick=True, methods=["ddpo"], work_dir=work)


def test_one_seed_of_several_runs_alone_and_is_read_back_with_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(molecules, "QUICK", replace(TINY, posebusters=0))
    work = tmp_path / "work"
    alone = molecules.run_molecule_benchmark(quick=True, methods=[], progress=False, work_dir=work, only_seed=1)
    assert alone["seeds"] == [1] and [p.name for p in work.glob("*-seed*.json")] == ["pretrained-seed1.json"]
    molecules.run_molecule_benchmark(quick=True, methods=[], progress=False, work_dir=work, only_seed=0)
    monkeypatch.setattr(molecules, "_sample", lambda *args: pytest.fail("a finished seed is sampled again"))
    both = molecules.run_molecule_benchmark(quick=True, methods=[], progress=False, work_dir=work, seeds=2)
    assert both["seeds"] == [0, 1]
    assert both["methods"]["pretrained"]["per_seed"][1] == alone["methods"]["pretrained"]["per_seed"][0]
    for seeds, seed, message in ((None, -1, "only_seed must be at least 0, got -1"), (2, 1, "not both; got 2 and 1")):
        with pytest.raises(ValueError, match=message):
            molecules.run_molecule_benchmark(quick=True, methods=[], seeds=seeds, only_seed=seed)


def _summary(reward: float, validity: float, diversity: float) -> dict[str, float]:
    values = {"mean_reward": reward, "validity": validity, "rdkit_validity": validity, "diversity": diversity}
    return values | {f"{metric}_std": 0.01 for metric in values}


def test_hacking_is_a_fall_beside_a_rising_reward():
    base = _summary(0.40, 0.80, 0.90)
    assert molecules.hacking(_summary(0.50, 0.60, 0.90), base, 3000) == ["validity -0.200", "rdkit_validity -0.200"]
    assert molecules.hacking(_summary(0.50, 0.80, 0.70), base, 3000) == ["diversity -0.200"]
    assert molecules.hacking(_summary(0.50, 0.79, 0.91), base, 3000) == [], "changes within the noise are no fall"
    assert molecules.hacking(_summary(0.30, 0.60, 0.50), base, 3000) == [], "the reward did not rise"
    assert molecules.hacking(_summary(0.50, 0.70, 0.90), base, 32) == [], "32 samples cannot tell 0.1 apart"


def test_diversity_is_zero_for_identical_molecules_and_grows_with_difference():
    def of(*smiles: str) -> float:
        return diversity([Chem.MolFromSmiles(s) for s in smiles])

    assert of("CCO", "CCO", "OCC") == 0.0
    assert of("CCO") == of() == 0.0
    assert 0 < of("CCO", "CCN") < of("CCO", "c1ccccc1") <= 1


def test_rdkit_reads_the_positions_alone():
    methane, benzene, broken = hand_made_molecules()
    stretched = Molecule(methane.atomic_numbers, methane.positions + np.array([[0, 0, 0]] * 4 + [[5.0, 0, 0]]),
                         methane.bonds, methane.charges)
    metrics = oracle_metrics([methane, benzene, broken, stretched])
    assert metrics["rdkit_validity"] == 0.5, "a carbon with five bonds, a hydrogen 5 Å off: invalid"
    assert metrics["rdkit_agreement"] == 0.5, "the stretched methane's own bonds are not the geometry's"
    assert Chem.MolToSmiles(Chem.RemoveHs(rdkit_reading(benzene))) == "c1ccccc1"
    assert oracle_metrics([molecule_from_smiles("C")])["rdkit_agreement"] is None, "a point cloud has no own bonds"
    ethanol = molecule_from_smiles("CCO")
    heavy = ethanol.atomic_numbers > 1
    skeleton = Molecule(ethanol.atomic_numbers[heavy], ethanol.positions[heavy], implicit_hydrogens=True)
    assert Chem.MolToSmiles(rdkit_reading(skeleton)) == "CCO", "hydrogens fill valences where they are implicit"
