"""Training loop, checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from rgdm.diffusion.conditioning import Conditioning
from rgdm.engine import Trainer, TrainingInterrupted, load_config, load_trained
from rgdm.engine.checkpoint import checkpoint_paths, load_checkpoint
from rgdm.engine.trainer import learning_rate_schedule, parameter_groups
from rgdm.io import CheckpointError, flatten_state, load_tensors, save_arrays, save_tensors, unflatten_state

TINY = ["domain.name=toy", "domain.train_size=512", "network.width=32", "network.depth=1", "diffusion.timesteps=20",
        "train.batch_size=32", "train.log_every=1", "train.lr=1e-3"]


def tiny_config(*overrides: str):
    return load_config(None, [*TINY, *overrides])


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pretrained")
    Trainer(tiny_config("train.steps=30", "train.checkpoint_every=10"), run).fit(progress=False)
    return run


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_folder_holds_final_weights_config_logs_and_checkpoints(pretrained_dir):
    assert (pretrained_dir / "final.safetensors").is_file()
    assert (pretrained_dir / "config.yaml").is_file()
    assert len(losses(pretrained_dir)) == 30
    assert any((pretrained_dir / "tb").iterdir())
    assert [p.name for p in checkpoint_paths(pretrained_dir)] == ["step-00000030.json", "step-00000020.json"]


def test_model_round_trip_gives_identical_outputs(pretrained_dir, tmp_path):
    model = load_trained(pretrained_dir)
    x, t = torch.randn(8, 2), torch.rand(8)
    again = load_trained(pretrained_dir)
    torch.testing.assert_close(model.net(x, t), again.net(x, t), rtol=0, atol=0)
    assert model.meta["training"]["steps"] == 30


def test_optimizer_state_round_trips_through_flat_tensors():
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tensors: dict[str, torch.Tensor] = {}
    layout = json.loads(json.dumps(flatten_state("optimizer", optimizer.state_dict(), tensors)))
    restored = unflatten_state(layout, tensors)
    fresh = torch.optim.AdamW(net.parameters())
    fresh.load_state_dict(restored)
    for a, b in zip(fresh.state_dict()["state"].values(), optimizer.state_dict()["state"].values(), strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key])


@pytest.mark.parametrize("decay", ["none", "cosine"])
def test_the_rate_warms_up_linearly_then_decays_as_asked(decay):
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1.0)
    config = tiny_config("train.steps=20", "train.lr=1.0", "train.warmup_steps=4", f"train.lr_decay={decay}").train
    schedule = learning_rate_schedule(optimizer, config)
    rates = []
    for _ in range(config.steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    warm = [0.25, 0.4375, 0.625, 0.8125]  # torch's LinearLR from lr / 4, at lr from step 4 on
    after = [1.0 if decay == "none" else 0.5 * (1 + math.cos(math.pi * k / 16)) for k in range(16)]
    assert rates == pytest.approx(warm + after)


def test_the_conditioning_module_trains_at_its_own_rate():
    net = torch.nn.ModuleDict({"body": torch.nn.Linear(2, 2), "target": Conditioning(3, 4)})
    body, conditioning = parameter_groups(net, tiny_config("train.lr=1e-3", "train.condition_lr_scale=10").train)
    assert "lr" not in body and conditioning["lr"] == pytest.approx(1e-2)
    assert [id(p) for p in conditioning["params"]] == [id(p) for p in net["target"].parameters()]
    assert [id(p) for p in body["params"]] == [id(p) for p in net["body"].parameters()]
    assert len(parameter_groups(net, tiny_config().train)) == 1


def test_a_warm_up_as_long_as_the_run_is_a_clear_error():
    with pytest.raises(ValueError, match="warmup_steps"):
        tiny_config("train.steps=20", "train.warmup_steps=20")


class Crash(RuntimeError):
    pass


def crash_at(step: int):
    def on_step(trainer: Trainer, current: int) -> None:
        if current == step:
            raise Crash(f"simulated crash at step {step}")
    return on_step


@pytest.mark.parametrize("algorithm", ["pretrain", "pretrain-perturbed", "rgdm-data", "rgdm-data-warmed-up",
                                       "rgdm-data-condition-rate", "rgdm-model", "rgdm-stepwise"])
def test_resume_after_a_crash_is_bit_exact(pretrained_dir, tmp_path, algorithm):
    name = algorithm.removesuffix("-perturbed").removesuffix("-warmed-up").removesuffix("-condition-rate")
    overrides = ["train.steps=12", "train.checkpoint_every=4", "algorithm.name=" + name,
                 "algorithm.rounds=3", "algorithm.buffer_size=64", "algorithm.sample_steps=5",
                 "algorithm.scored_size=128"]
    if algorithm == "pretrain-perturbed":
        overrides.append("algorithm.input_perturbation=0.1")
    if algorithm == "rgdm-data-warmed-up":  # the crash falls after the resumed checkpoint, both in the warm-up
        overrides += ["train.warmup_steps=6", "train.lr_decay=cosine"]
    if algorithm == "rgdm-data-condition-rate":  # two optimizer groups, each rate resumed
        overrides += ["train.condition_lr_scale=10", "train.lr_decay=cosine", "algorithm.targets=[0,1]"]
    if not algorithm.startswith("pretrain"):
        overrides += [f"init={pretrained_dir}", "reward.name=region", "train.batch_size=8"]
    Trainer(tiny_config(*overrides), tmp_path / "straight").fit(progress=False)

    with pytest.raises(Crash):
        Trainer(tiny_config(*overrides), tmp_path / "crashed").fit(on_step=crash_at(7), progress=False)
    resumed = Trainer.resume(tmp_path / "crashed")
    assert resumed.step == 4
    resumed.fit(progress=False)

    straight = load_tensors(tmp_path / "straight" / "final.safetensors")
    again = load_tensors(tmp_path / "crashed" / "final.safetensors")
    for name in straight:
        assert torch.equal(straight[name], again[name]), name
    assert losses(tmp_path / "straight") == losses(tmp_path / "crashed")
    assert resumed.counter.calls == json.loads((tmp_path / "straight" / "reward_counter.json").read_text())[
        "reward_calls"]


@pytest.mark.parametrize(("algorithm", "command"), [("pretrain", "train"), ("rgdm-data", "finetune")])
def test_sigint_writes_a_checkpoint_and_resume_finishes_exactly(pretrained_dir, tmp_path, algorithm, command):
    overrides = ["train.steps=10", "train.checkpoint_every=100", f"algorithm.name={algorithm}"]
    if algorithm != "pretrain":
        overrides += [f"init={pretrained_dir}", "reward.name=region", "algorithm.scored_size=128"]
    Trainer(tiny_config(*overrides), tmp_path / "straight").fit(progress=False)

    def interrupt(trainer: Trainer, step: int) -> None:
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match=f"Continue with: rgdm {command} --resume "):
        Trainer(tiny_config(*overrides), tmp_path / "stopped").fit(on_step=interrupt, progress=False)
    resumed = Trainer.resume(tmp_path / "stopped")
    assert resumed.step == 6
    stopped_after = resumed.wall_s
    assert stopped_after > 0, "the checkpoint holds the seconds trained before the stop"
    resumed.fit(progress=False)
    a = load_tensors(tmp_path / "straight" / "final.safetensors")
    b = load_tensors(tmp_path / "stopped" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.wall_s > stopped_after, "the resumed run adds its seconds to the stopped run's"
    training = json.loads((tmp_path / "stopped" / "model.json").read_text())["training"]
    assert training["wall_s"] == round(resumed.wall_s, 1)
    straight_training = json.loads((tmp_path / "straight" / "model.json").read_text())["training"]
    assert training["network_evaluations"] == straight_training["network_evaluations"] > 0, \
        "the checkpoint holds the network evaluations before the stop"


@pytest.mark.parametrize("algorithm", ["rgdm-model", "ddpo"])
def test_a_stop_during_a_buffer_is_honoured_before_the_buffer_finishes(pretrained_dir, tmp_path, algorithm):
    # rgdm-model draws its second buffer at step 7; ddpo (8 trajectories x 20 steps in minibatches of 16) at step 10
    overrides = ["train.steps=14", "train.checkpoint_every=100", f"algorithm.name={algorithm}",
                 f"init={pretrained_dir}", "reward.name=region", "algorithm.rounds=2", "algorithm.buffer_size=64",
                 "algorithm.trajectories=8", "algorithm.minibatch=16", "algorithm.inner_epochs=1",
                 "algorithm.sample_steps=20"]
    Trainer(tiny_config(*overrides), tmp_path / "straight").fit(progress=False)

    sampling_calls = []

    def signal_on_third_sampling_call(module, inputs) -> None:
        if not torch.is_grad_enabled():  # the buffer's network calls, not the training step's
            sampling_calls.append(1)
            if len(sampling_calls) == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    def watch_the_next_buffer(trainer: Trainer, step: int) -> None:
        if step == 1:
            sampler = trainer.ema.module if algorithm == "rgdm-model" else trainer.net
            sampler.register_forward_pre_hook(signal_on_third_sampling_call)

    with pytest.raises(TrainingInterrupted):
        Trainer(tiny_config(*overrides), tmp_path / "stopped").fit(on_step=watch_the_next_buffer, progress=False)
    assert len(sampling_calls) == 3, "the buffer went on sampling after the stop request"
    resumed = Trainer.resume(tmp_path / "stopped")
    assert resumed.step == {"rgdm-model": 7, "ddpo": 10}[algorithm]
    resumed.fit(progress=False)
    a = load_tensors(tmp_path / "straight" / "final.safetensors")
    b = load_tensors(tmp_path / "stopped" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_corrupt_checkpoint_is_skipped_for_the_previous_one(pretrained_dir, tmp_path, caplog):
    run = tmp_path / "run"
    Trainer(tiny_config("train.steps=8", "train.checkpoint_every=4"), run).fit(progress=False)
    newest = run / "checkpoints" / "step-00000008.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    _, meta = load_checkpoint(run)
    assert meta["step"] == 4
    assert "step-00000008" in caplog.text
    assert newest.exists(), "a corrupt checkpoint is reported, never deleted"

    (run / "checkpoints" / "step-00000004.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(run)


def test_tensor_files_carry_a_checksum(tmp_path):
    path = tmp_path / "w.safetensors"
    digest = save_tensors(path, {"a": torch.arange(4.0)})
    assert torch.equal(load_tensors(path, digest)["a"], torch.arange(4.0))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_tensors(path, digest)


def test_array_files_are_written_whole_under_their_exact_name_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "qm9.cache"  # not ".npz": numpy must not append a suffix
    save_arrays(path, {"x": np.arange(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qm9.cache"]

    def torn_write(handle, **arrays):
        handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", torn_write)
    with pytest.raises(OSError, match="disk full"):
        save_arrays(path, {"x": np.arange(5)})
    assert np.array_equal(np.load(path, allow_pickle=False)["x"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qm9.cache"]


def test_resume_of_a_folder_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not an rgdm run folder"):
        Trainer.resume(tmp_path)


def test_a_reward_budget_stops_training_and_keeps_the_model(pretrained_dir, tmp_path):
    config = tiny_config("train.steps=50", f"init={pretrained_dir}", "reward.name=region", "reward.budget=200",
                         "algorithm.name=rgdm-model", "algorithm.rounds=5", "algorithm.buffer_size=64",
                         "algorithm.sample_steps=5")
    trainer = Trainer(config, tmp_path / "run")
    trainer.fit(progress=False)
    assert trainer.counter.calls == 192, "three rounds of 64 fit in 200 calls, the fourth does not"
    assert trainer.step == 30
    assert load_trained(tmp_path / "run").meta["training"]["steps"] == 30


def test_fine_tuning_keeps_the_parent_domain_and_applies_explicit_changes():
    from rgdm.engine.config import load_config
    from rgdm.engine.trainer import Trainer

    parent = {"name": "molecules", "hydrogens": True, "property_bins": 8, "target_property": None}
    inherited = load_config(None, ["init=some-model"])
    assert Trainer._fine_tuning_domain(parent, inherited) == parent
    targeted = load_config(None, ["init=some-model", "domain.target_property=alpha"])
    assert Trainer._fine_tuning_domain(parent, targeted) == parent | {"target_property": "alpha"}
    other = load_config(None, ["init=some-model", "domain.name=toy"])
    with pytest.raises(ValueError, match="keeps its parent's domain"):
        Trainer._fine_tuning_domain(parent, other)


def predictions_per_target(net: torch.nn.Module, targets: int) -> list[torch.Tensor]:
    x, t = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)), torch.full((16,), 0.3)
    with torch.no_grad():
        return [net(x, t, torch.full((16,), c, dtype=torch.long)) for c in range(targets)] + [net(x, t, None)]


def test_an_unconditional_model_predicts_its_unconditional_noise_for_every_target(pretrained_dir):
    model = load_trained(pretrained_dir)
    assert model.domain.num_targets > 1 and not model.meta["conditional"]
    *per_target, unconditional = predictions_per_target(model.net, model.domain.num_targets)
    for prediction in per_target:
        torch.testing.assert_close(prediction, unconditional, rtol=0, atol=0)


def test_a_targeted_fine_tune_starts_from_the_parent_for_every_target_and_stays_conditional(pretrained_dir, tmp_path):
    config = tiny_config("train.steps=20", f"init={pretrained_dir}", "reward.name=region", "algorithm.name=rgdm-data",
                         "algorithm.targets=[0,1]", "algorithm.scored_size=128", "train.checkpoint_every=10")
    trainer = Trainer(config, tmp_path / "run")
    *per_target, unconditional = predictions_per_target(trainer.context.reference.net, 2)
    for prediction in per_target:
        torch.testing.assert_close(prediction, unconditional, rtol=0, atol=0)
    trainer.fit(progress=False)
    child = load_trained(tmp_path / "run")
    assert child.meta["conditional"]
    first, second, _ = predictions_per_target(child.net, 2)
    assert not torch.equal(first, second), "trained target rows must survive loading"
    grandchild = Trainer(tiny_config("train.steps=2", f"init={tmp_path / 'run'}"), tmp_path / "grandchild")
    grandchild.fit(progress=False)
    assert load_trained(tmp_path / "grandchild").meta["conditional"], "a child of a conditional model is conditional"
