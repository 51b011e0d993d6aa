"""A real run killed with SIGKILL mid-training resumes from its last checkpoint, bit for bit."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import yaml

from rgdm.io import load_tensors

CONFIG = {
    "domain": {"name": "toy", "train_size": 512},
    "network": {"width": 32, "depth": 1},
    "diffusion": {"schedule": "linear", "timesteps": 20},
    "train": {"steps": 600, "batch_size": 32, "checkpoint_every": 50, "log_every": 10, "seed": 3},
}


def rgdm(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rgdm.cli", "-q", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    straight = rgdm("train", "--config", str(config), "--out", str(tmp_path / "straight"))
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    victim = rgdm("train", "--config", str(config), "--out", str(tmp_path / "killed"))
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("step-0000015*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "final.safetensors").exists()

    resumed = rgdm("train", "--resume", str(tmp_path / "killed"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = load_tensors(tmp_path / "straight" / "final.safetensors")
    b = load_tensors(tmp_path / "killed" / "final.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    straight_log = (tmp_path / "straight" / "metrics.jsonl").read_text()
    assert (tmp_path / "killed" / "metrics.jsonl").read_text() == straight_log
