"""Quality against training time (a run's checkpoints) and against sampling steps, through the CLI."""

from __future__ import annotations

import json

import torch
import yaml
from safetensors.torch import load_file

from rgdm.benchmarks.curves import checkpoint_model
from rgdm.cli import main

TINY = {
    "domain": {"name": "toy", "train_size": 512},
    "network": {"width": 32, "depth": 1},
    "diffusion": {"schedule": "linear", "timesteps": 20},
    "train": {"steps": 30, "batch_size": 64, "checkpoint_every": 10, "keep_checkpoints": 10, "log_every": 10},
}


def test_the_learning_curve_samples_every_kept_checkpoint_once(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["-q", "train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run")]) == 0
    report = tmp_path / "curve.json"
    command = ["-q", "bench", "curve", "--run", str(tmp_path / "run"), "-n", "40", "--sampling-steps", "5",
               "--json", str(report)]
    assert main(command) == 0
    result = json.loads(report.read_text())
    assert [p["step"] for p in result["points"]] == [0, 10, 20, 30], "from the untrained start on"
    assert all(p["network_evaluations_per_sample"] == 5 and p["training_hours"] >= 0 for p in result["points"])
    assert (tmp_path / "curve.png").is_file() and (tmp_path / "curve.md").is_file()
    result["points"][0]["mode_shares"] = "kept"
    report.write_text(json.dumps(result))
    assert main(command) == 0
    assert json.loads(report.read_text())["points"][0]["mode_shares"] == "kept", "sampled once, then reused"


def test_the_curves_report_a_named_reward_and_resample_for_another(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY | {"train": TINY["train"] | {"steps": 10}}))
    assert main(["-q", "train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run")]) == 0
    report = tmp_path / "curve.json"
    command = ["-q", "bench", "curve", "--run", str(tmp_path / "run"), "-n", "40", "--sampling-steps", "5",
               "--json", str(report)]
    assert main([*command, "--reward", "region"]) == 0
    result = json.loads(report.read_text())
    assert result["reward"] == "region"
    assert all(0 <= p["mean_reward"] <= 1 and p["reward_valid"] == 1 for p in result["points"])
    assert "mean_reward" in (tmp_path / "curve.md").read_text()
    assert main(command) == 0, "without the reward, the points are sampled again"
    assert all("mean_reward" not in p for p in json.loads(report.read_text())["points"])
    steps = tmp_path / "steps.json"
    assert main(["-q", "bench", "steps", "--checkpoint", "toy-ring-pretrained", "-n", "30", "--sampling-steps",
                 "5", "--seeds", "2", "--reward", "region", "--json", str(steps)]) == 0
    assert "mean_reward" in json.loads(steps.read_text())["points"][0]["summary"]


def test_the_learning_curve_can_thin_out_checkpoints_and_keeps_the_last(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY | {"train": TINY["train"] | {"steps": 50}}))
    assert main(["-q", "train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run")]) == 0
    report = tmp_path / "curve.json"
    assert main(["-q", "bench", "curve", "--run", str(tmp_path / "run"), "-n", "20", "--sampling-steps", "5",
                 "--every", "20", "--json", str(report)]) == 0
    assert [p["step"] for p in json.loads(report.read_text())["points"]] == [0, 20, 40, 50]


def test_a_model_trained_in_stages_has_one_curve_with_the_hours_added_up(tmp_path):
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["-q", "train", "--config", str(tmp_path / "first.yaml"), "--out", str(tmp_path / "first")]) == 0
    assert main(["-q", "export", str(tmp_path / "first"), "--out", str(tmp_path / "first-final")]) == 0
    second = TINY | {"init": str(tmp_path / "first-final"), "train": TINY["train"] | {"steps": 20}}
    (tmp_path / "second.yaml").write_text(yaml.safe_dump(second))
    assert main(["-q", "train", "--config", str(tmp_path / "second.yaml"), "--out", str(tmp_path / "second")]) == 0
    report = tmp_path / "chain.json"
    chain = f"{tmp_path / 'first'}:20,{tmp_path / 'second'}"
    command = ["-q", "bench", "curve", "-n", "20", "--sampling-steps", "5"]
    assert main([*command, "--run", chain, "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert [(p["stage"], p["step"]) for p in result["points"]] == [
        ("first", 0), ("first", 10), ("first", 20), ("second", 10), ("second", 20)], "the first run cut at 20"
    first_hours, second = result["stages"][0]["points"][-1]["training_hours"], result["stages"][1]["points"]
    assert result["points"][3]["training_hours"] == round(first_hours + second[1]["training_hours"], 3)
    assert "| second 10 |" in (tmp_path / "chain.md").read_text()
    assert main([*command, "--run", f"{tmp_path / 'first'}:15", "--json", str(tmp_path / "bad.json")]) != 0, (
        "a cut at a step with no checkpoint")


def test_the_steps_curve_reports_each_step_count_over_seeds(tmp_path):
    report = tmp_path / "steps.json"
    assert main(["-q", "bench", "steps", "--checkpoint", "toy-ring-pretrained", "-n", "30", "--sampling-steps",
                 "5,10", "--seeds", "2", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert [p["sampling_steps"] for p in result["points"]] == [5, 10]
    for point in result["points"]:
        assert len(point["seeds"]) == 2
        assert point["summary"]["network_evaluations_per_sample"]["mean"] == point["sampling_steps"]
    assert (tmp_path / "steps.png").is_file()
    assert "| 5 | 5 |" in report.with_suffix(".md").read_text()
    corrected = tmp_path / "corrected.json"
    assert main(["-q", "bench", "steps", "--checkpoint", "toy-ring-pretrained", "-n", "30", "--sampling-steps",
                 "5", "--seeds", "1", "--corrector-snr", "0.2", "--corrector-steps", "2", "--json",
                 str(corrected)]) == 0
    result = json.loads(corrected.read_text())
    assert result["corrector"] == {"snr": 0.2, "steps": 2, "start": None}
    assert result["points"][0]["summary"]["network_evaluations_per_sample"]["mean"] == 5 + 2 * 4
    assert "| 5 | 13 |" in corrected.with_suffix(".md").read_text()


def test_a_checkpoint_gives_its_ema_weights_or_with_raw_the_optimisers(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["-q", "train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run")]) == 0
    meta = tmp_path / "run" / "checkpoints" / "step-00000030.json"
    tensors = load_file(meta.with_suffix(".safetensors"))
    for raw, prefix in ((False, "ema.module."), (True, "model.")):
        weights = checkpoint_model(meta, raw=raw).net.state_dict()
        assert weights and all(torch.equal(v, tensors[prefix + k]) for k, v in weights.items())
    assert any(not torch.equal(tensors["ema.module." + k[len("model."):]], v)
               for k, v in tensors.items() if k.startswith("model.")), "30 steps apart, EMA and raw differ"
