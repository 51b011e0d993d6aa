"""``rgdm bench properties`` at a tiny budget: its JSON, tables and picture, equal label budgets, and a work
folder that a second call reads back instead of running again, unless its predictors changed."""

from __future__ import annotations

import json
from dataclasses import replace

import matplotlib.image as plt_image
import pytest

from rgdm.benchmarks import properties
from rgdm.cli import main
from rgdm.domains.molecules.properties import PropertyPredictor
from rgdm.io import load_tensors

TINY = replace(properties.QUICK, labels=16, targets=2, finetune_steps=4, batch_size=8, guide_steps=4, eval_samples=4,
               sampling_steps=3, particles=2)


def test_the_property_bench_spends_equal_labels_writes_its_reports_and_binds_its_predictors(tmp_path, monkeypatch):
    monkeypatch.setattr(properties, "QUICK", TINY)
    report, work = tmp_path / "properties.json", tmp_path / "work"
    assert main(["-q", "bench", "properties", "--quick", "--properties", "alpha", "--json", str(report),
                 "--work-dir", str(work)]) == 0
    result = json.loads(report.read_text())
    alpha = result["properties"]["alpha"]
    assert list(alpha["methods"]) == list(properties.METHODS)
    assert len(alpha["targets"]) == 2 and alpha["targets"][0] < alpha["targets"][1], "quantiles of alpha"
    calls = {name: summary["reward_calls"] - summary["sampling_reward_calls"]
             for name, summary in alpha["methods"].items()}
    assert calls == {"pretrained": 0, "rgdm-data": 32, "cfg": 32, "classifier-guidance": 32, "rgdm-smc": 32}, \
        "16 labelled molecules x 2 targets each"
    guided, plain = alpha["methods"]["rgdm-smc"], alpha["methods"]["rgdm-data"]
    assert guided["sampling_reward_calls"] == 4 * 2 * 3, "4 samples x 2 particles, scored after each of 3 steps"
    assert plain["sampling_reward_calls"] == 0
    assert guided["train_s"] == plain["train_s"], "the guided row samples the rgdm-data run, not a new one"
    assert guided["network_evaluations"] - plain["network_evaluations"] == 4 * 3, "one more particle a sample"
    for summary in alpha["methods"].values():
        assert summary["property_mae"] >= 0 and summary["network_evaluations"] > 0
        assert {"property_mae_valid", "validity", "uniqueness", "train_s", "sample_s", "per_seed"} <= set(summary)
    assert 0 < alpha["reference"]["L-bound"] < alpha["reference"]["#Atoms"] < alpha["reference"]["naive (shuffled)"]
    table = report.with_suffix(".md").read_text()
    assert "| conditional EDM, EDM's table | 2.760 |" in table and "| #Atoms, this pipeline |" in table
    assert "| rgdm-smc (guided sampling: reward calls while sampling) |" in table
    assert "CFG pairs each target with the top 1/8 of its rows;" in table, "the model's classes by default"
    # qm9-pretrained trained on train_a, the measuring predictor's half train_b unseen: EDM's protocol, said so.
    assert result["base_split"] == "train_a" and result["edm_protocol"] is True
    assert "The base trained on `train_a`: EDM's protocol (the measuring predictor's half `train_b` unseen)" \
        in table
    whole = properties.markdown_table(result | {"base_split": "train", "edm_protocol": False})
    assert "The base trained on `train`: **not EDM's protocol**" in whole
    height, width, _ = plt_image.imread(report.with_suffix(".png")).shape
    assert width > 0 and height > 0

    def never(*args, **kwargs):
        raise AssertionError("a finished run is read back, not run again")

    # A benchmark stopped while sampling by classifier guidance reads its kept guide back instead of fitting it.
    (work / "alpha-classifier-guidance-seed0.json").unlink()
    monkeypatch.setattr(properties, "train_guide", never)
    resumed = properties.run_property_benchmark(quick=True, properties=["alpha"], progress=False, work_dir=work)
    guided_first = alpha["methods"]["classifier-guidance"]
    guided_again = resumed["properties"]["alpha"]["methods"]["classifier-guidance"]
    assert guided_again["property_mae"] == guided_first["property_mae"]
    assert guided_again["reward_calls"] == guided_first["reward_calls"] == 32
    assert guided_again["train_s"] == guided_first["train_s"], "the kept guide's own training time"

    monkeypatch.setattr(properties.PropertyCase, "run", never)
    again = properties.run_property_benchmark(quick=True, properties=["alpha"], progress=False, work_dir=work)
    assert again["properties"]["alpha"]["methods"] == resumed["properties"]["alpha"]["methods"]

    loaded = PropertyPredictor.load

    def retrained(folder):
        predictor = loaded(folder)
        predictor.meta["sha256"] = "0" * 64
        return predictor

    monkeypatch.setattr(PropertyPredictor, "load", staticmethod(retrained))
    with pytest.raises(ValueError, match=r"holds a property benchmark of other settings \({'predictors'"):
        properties.run_property_benchmark(quick=True, properties=["alpha"], progress=False, work_dir=work)


def test_unknown_properties_and_methods_are_named():
    with pytest.raises(ValueError, match=r"unknown property \['energy'\]"):
        properties.run_property_benchmark(quick=True, properties=["energy"])
    with pytest.raises(ValueError, match=r"unknown method \['dpo'\]"):
        properties.run_property_benchmark(quick=True, methods=["dpo"])


def test_steps_precision_curve_points_classes_and_condition_rate_shape_the_fine_tunes_and_are_bound(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setattr(properties, "QUICK", TINY)
    measured = properties.PropertyCase.measure
    measures = []
    monkeypatch.setattr(properties.PropertyCase, "measure", lambda *args, **kwargs: measures.append(1) or measured(
        *args, **kwargs))
    work, report = tmp_path / "work", tmp_path / "bf16.json"
    assert main(["-q", "bench", "properties", "--quick", "--properties", "alpha", "--methods", "rgdm-data,cfg",
                 "--train-steps", "3", "--bf16", "--curve-points", "3", "--cfg-classes", "4",
                 "--condition-lr-scale", "10", "--json", str(report),
                 "--work-dir", str(work)]) == 0
    result = json.loads(report.read_text())
    assert result["budget"]["finetune_steps"] == result["budget"]["guide_steps"] == 3
    assert result["execution"] == {"precision": "bf16", "compile": False}
    table = report.with_suffix(".md").read_text()
    assert "3 fine-tune or guide steps of batch 8 (fine-tunes in bf16); conditioning paths at 10× the rate; CFG " \
        "pairs each target with the top 1/4 of its rows;" in table
    peer = load_tensors(work / "alpha-cfg-seed0" / "checkpoints" / "step-00000003.safetensors")
    assert [int((row == row.max()).sum()) for row in peer["algorithm.labels"]] == [4, 4], "16 rows / 4 classes"
    summary = result["properties"]["alpha"]["methods"]["rgdm-data"]
    assert [point["step"] for point in summary["curve"]] == [1, 2, 3]
    assert summary["curve"][-1]["property_mae"] == summary["property_mae"], "the final measure's samples"
    assert len(measures) == 2 * 3, "three points a fine-tune, the last of them its final measure"
    assert summary["curve"][0]["property_mae"] != summary["property_mae"], "the model at step 1 is another"
    assert "| alpha | rgdm-data | " in table.split("MAE over all samples along the fine-tunes")[1]
    height, width, _ = plt_image.imread(tmp_path / "bf16-steps.png").shape
    assert width > 0 and height > 0
    run = work / "alpha-rgdm-data-seed0"
    assert sorted(p.name for p in (run / "checkpoints").glob("*.json"))[-1] == "step-00000003.json", \
        "the fine-tune ran the given steps, not the budget's 4"
    trained = (run / "config.yaml").read_text()
    assert "precision: bf16" in trained and "compile: false" in trained and "condition_lr_scale: 10.0" in trained
    bound = {"train_steps": 3, "execution": properties.FinetuneExecution("bf16"), "curve_points": 3, "cfg_classes": 4,
             "condition_lr_scale": 10.0}
    for name, value in (("train_steps", 4), ("execution", properties.FinetuneExecution()), ("curve_points", 0),
                        ("cfg_classes", None), ("condition_lr_scale", 1.0)):
        with pytest.raises(ValueError, match="holds a property benchmark of other settings"):
            properties.run_property_benchmark(quick=True, properties=["alpha"], methods=["rgdm-data"],
                                              progress=False, work_dir=work, **(bound | {name: value}))
    with pytest.raises(ValueError, match="train_steps must be at least 1, got 0"):
        properties.run_property_benchmark(quick=True, properties=["alpha"], train_steps=0)
    with pytest.raises(ValueError, match=r"curve_points must be in 0..4 \(the fine-tune steps\), got 5"):
        properties.run_property_benchmark(quick=True, properties=["alpha"], curve_points=5)
    with pytest.raises(ValueError, match="cfg_classes must be at least 1, got 0"):
        properties.run_property_benchmark(quick=True, properties=["alpha"], cfg_classes=0)
    with pytest.raises(ValueError, match="condition_lr_scale must be positive, got 0"):
        properties.run_property_benchmark(quick=True, properties=["alpha"], condition_lr_scale=0)
    # Compiling is the Trainer's train.compile (tests/test_precision.py); the case hands it on with the precision.
    base = properties.load_trained("qm9-pretrained")
    case = properties.PropertyCase(properties.PropertyTask(), TINY, base, "alpha",
                                   properties.FinetuneExecution("bf16", compile=True))
    config = case.finetune_config("cfg", seed=0)
    assert (config.train.precision, config.train.compile) == ("bf16", True)
    default = properties.PropertyCase(properties.PropertyTask(), TINY, base, "alpha").finetune_config("cfg", 0)
    assert (default.train.precision, default.train.compile) == ("fp32", False)
    assert properties.markdown_table(result | {"execution": {"precision": "bf16", "compile": True}}).count(
        "(fine-tunes in bf16, compiled)") == 1
