"""The command line end to end: a user's reward file through finetune, sample, evaluate, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rgdm.cli import describe_files, main

USER_REWARD = '''
import numpy as np

def upper_half(samples):
    """Reward 1 above the x axis: a black box the library has never seen."""
    return (np.asarray(samples)[:, 1] > 0).astype(float)
'''


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "my_reward.py").write_text(USER_REWARD)
    code = main(["-q", "finetune", "--checkpoint", "toy-ring-pretrained", "--reward",
                 f"{folder / 'my_reward.py'}:upper_half", "--temperature", "0.3", "--steps", "150",
                 "--checkpoint-every", "50", "--seed", "1", "--set", "algorithm.scored_size=2000",
                 "--out", str(folder / "run")])
    assert code == 0
    return folder


def test_finetune_with_a_user_reward_file_then_sample(finetuned):
    run = finetuned / "run"
    assert (run / "final.safetensors").is_file()
    assert json.loads((run / "reward_counter.json").read_text())["reward_calls"] == 2000
    out = finetuned / "samples"
    assert main(["-q", "sample", "--checkpoint", str(run), "-n", "300", "--seed", "2", "--out", str(out)]) == 0
    with np.load(out / "samples.npz") as data:
        samples = data["samples"]
    assert samples.shape == (300, 2)
    upper = (samples[:, 1] > 0).mean()
    assert upper > 0.75, "the fine-tuned model follows the user's reward (exact pay-off: 0.97)"
    assert (out / "samples.png").is_file()


def test_sample_with_guidance_and_evaluate(tmp_path):
    out = tmp_path / "guided"
    assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "200", "--steps", "50",
                 "--guidance", "select", "--reward", "region", "--temperature", "0.1", "--out", str(out)]) == 0
    meta = json.loads((out / "sample.json").read_text())
    assert meta["reward_calls"] > 0 and meta["network_evaluations"] > 0 and meta["wall_s"] > 0
    report = tmp_path / "metrics.json"
    assert main(["-q", "evaluate", str(out), "--reward", "region", "--temperature", "0.3",
                 "--json", str(report)]) == 0
    metrics = json.loads(report.read_text())
    assert metrics["mean_reward"] > 0.5
    assert {"energy_distance", "noise_floor", "payoff_mean_reward"} <= set(metrics)


def test_sample_with_a_guidance_start_selects_only_on_the_later_steps(tmp_path):
    calls = {}
    for start in (None, 200):
        out = tmp_path / f"guided-{start}"
        window = [] if start is None else ["--guidance-start", str(start)]
        assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "20", "--steps", "10",
                     "--guidance", "select", "--reward", "region", *window, "--out", str(out)]) == 0
        meta = json.loads((out / "sample.json").read_text())
        assert meta["guidance_start"] == start
        calls[start] = meta["reward_calls"]
    assert 0 < calls[200] < calls[None]


def test_sample_with_a_target_writes_targets(tmp_path):
    out = tmp_path / "targeted"
    assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "10", "--steps", "10",
                 "--target", "3", "--out", str(out)]) == 0
    with np.load(out / "samples.npz") as data:
        assert list(data["targets"]) == [3] * 10


def test_resume_continues_an_interrupted_finetune(finetuned, tmp_path):
    run = finetuned / "run"
    assert main(["-q", "finetune", "--resume", str(run)]) == 0  # already finished: a no-op
    assert main(["-q", "finetune", "--checkpoint", "toy-ring-pretrained", "--reward", "region",
                 "--out", str(run)]) == 2, "an existing run folder is never overwritten"


@pytest.mark.parametrize(("args", "message"), [
    (["finetune", "--checkpoint", "toy-ring-pretrained", "--reward", "missing.py:f", "--out", "X"],
     "does not exist"),
    (["finetune", "--checkpoint", "no-such-model", "--reward", "region", "--out", "X"], "unknown checkpoint"),
    (["finetune", "--checkpoint", "toy-ring-pretrained", "--reward", "regoin", "--out", "X"], "unknown reward"),
    (["finetune", "--checkpoint", "toy-ring-pretrained", "--reward", "region", "--set", "train.step=5",
      "--out", "X"], "did you mean 'steps'"),
    (["sample", "--checkpoint", "toy-ring-pretrained", "--target", "12", "--out", "X"], "out of range"),
    (["evaluate", "nowhere"], "nowhere is not a folder"),
    (["evaluate"], "give one of the two"),
    (["evaluate", "--data", "nosplit", "--checkpoint", "qm9-noh-pretrained"], "no data split 'nosplit'"),
    (["bench", "steps", "--checkpoint", "toy-ring-pretrained", "--corrector-start", "500", "--json", "X.json"],
     "--corrector-start needs --corrector-snr"),
])
def test_bad_input_is_one_clear_line_and_exit_code_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["-q", *args]) == 2
    assert message in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "rgdm.cli", "checkpoints"], capture_output=True, text=True,
                            check=True)
    assert "toy-ring-pretrained" in result.stdout


@pytest.mark.parametrize(("checkpoint", "name", "content", "message"), [
    ("qm9-edm-small", "samples.xyz", "3\nwater\nO 0 0 0\nH 0 0\n", "line 4"),
    ("qm9-edm-small", "samples.xyz", "1\nxenon\nXe 0 0 0\n", "Xe"),
    ("shapes-pretrained", "a.ply", "ply\nformat ascii 1.0\nelement vertex 2\nend_header\n", "lacks properties"),
])
def test_evaluate_names_the_fault_in_a_users_sample_file(tmp_path, capsys, checkpoint, name, content, message):
    (tmp_path / name).write_text(content)
    assert main(["-q", "evaluate", str(tmp_path), "--checkpoint", checkpoint]) == 2
    error = capsys.readouterr().err
    assert error.startswith("rgdm: error:") and message in error and str(tmp_path) in error


def test_evaluate_measures_the_domains_own_data_as_the_reference(tmp_path):
    report = tmp_path / "reference.json"
    assert main(["-q", "evaluate", "--data", "test", "-n", "20", "--checkpoint", "qm9-pretrained", "--json",
                 str(report)]) == 0
    metrics = json.loads(report.read_text())
    assert metrics["data"] == "test" and metrics["n"] == 20
    # QM9's own molecules with the bonds that agree with their SMILES: the sample pipeline must accept them all.
    assert metrics["validity"] == metrics["molecule_stability"] == 1.0 and metrics["fragmented"] == 0.0
    assert metrics["posebusters_checked"] == 20 and 0.5 < metrics["posebusters_pass"] <= 1.0


def test_sample_report_counts_subfolder_files_instead_of_listing_them(tmp_path):
    out = tmp_path / "run"
    files = [out / "samples.npz", out / "samples.png"] + [out / "ply" / f"sample_{i:03d}.ply" for i in range(40)]
    text = describe_files(files, out)
    assert text == f"{out / 'samples.npz'}, {out / 'samples.png'}, {out / 'ply'}/ (40 files)"


def test_evaluate_measures_another_models_ply_files_against_a_named_class(tmp_path, capsys):
    from rgdm.domains.shapes.io import write_ply_files
    from rgdm.domains.shapes.procedural import procedural_dataset

    shapes = procedural_dataset(3, seed=321, categories=["chair"])
    write_ply_files(shapes.denormalize(shapes.points), tmp_path)
    scores = {}
    for target in ("chair", "car"):
        out = tmp_path / f"{target}.json"
        assert main(["-q", "evaluate", str(tmp_path), "--checkpoint", "shapes-rgdm", "--target", target,
                     "--json", str(out)]) == 0
        scores[target] = json.loads(out.read_text())
    assert scores["chair"]["success_rate"] == 1.0 and scores["car"]["success_rate"] == 0.0
    assert scores["chair"]["reference"].startswith("3 ")
    assert main(["-q", "evaluate", str(tmp_path), "--checkpoint", "shapes-rgdm", "--target", "boat"]) == 2
    assert "unknown shape target 'boat'" in capsys.readouterr().err
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    np.savez(recorded / "samples.npz", samples=shapes.points, targets=np.ones(3, dtype=np.int64))
    assert main(["-q", "evaluate", str(recorded), "--checkpoint", "shapes-rgdm", "--target", "chair"]) == 2
    assert "already record their targets" in capsys.readouterr().err


def test_export_turns_a_runs_newest_checkpoint_into_a_model_folder(finetuned, tmp_path, capsys):
    run, out = finetuned / "run", tmp_path / "snapshot"
    assert main(["-q", "export", str(run), "--out", str(out)]) == 0
    assert "at step 150 of 150" in capsys.readouterr().out
    exported, final = json.loads((out / "model.json").read_text()), json.loads((run / "model.json").read_text())
    assert exported == final, "the newest checkpoint of a finished run holds its final EMA weights"
    assert (out / "reward_counter.json").read_text() == (run / "reward_counter.json").read_text()
    assert main(["-q", "sample", "--checkpoint", str(out), "-n", "5", "--steps", "5", "--out",
                 str(tmp_path / "samples")]) == 0
    assert main(["-q", "export", str(run), "--out", str(run)]) == 2
    assert "is a run folder" in capsys.readouterr().err
