"""How the trained network runs: bf16 autocast (``train.precision``), ``train.compile``, and
``rgdm bench precision``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from rgdm.benchmarks.precision import compare_precisions, markdown_table
from rgdm.engine import ConfigError, Trainer, load_config
from rgdm.engine.precision import AutocastNetwork, with_precision
from rgdm.io import load_tensors

TINY = ["domain.name=toy", "domain.train_size=512", "network.width=32", "network.depth=1", "diffusion.timesteps=20",
        "train.batch_size=32", "train.lr=1e-3"]


class TwoParts(torch.nn.Module):
    """A stand-in multi-part network: a linear map per part."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 3), torch.nn.Linear(4, 4)

    def forward(self, x, t, cond=None, mask=None):
        return TensorDict({"a": self.a(x["a"]), "b": self.b(x["b"])}, batch_size=x.batch_size)


def test_bf16_runs_the_network_in_bf16_and_hands_back_float32_parts():
    net = TwoParts()
    x = TensorDict({"a": torch.randn(5, 3), "b": torch.randn(5, 4)}, batch_size=[5])
    assert with_precision(net, "fp32", "cpu") is net
    wrapped = with_precision(net, "bf16", "cpu")
    assert isinstance(wrapped, AutocastNetwork)
    out, exact = wrapped(x, torch.zeros(5)), net(x, torch.zeros(5))
    for key in ("a", "b"):
        assert out[key].dtype == torch.float32
        assert not torch.equal(out[key], exact[key])  # the products ran in bf16
        torch.testing.assert_close(out[key], exact[key], rtol=0.05, atol=0.05)


def test_an_unknown_precision_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, [*TINY, "train.precision=fp16"])


class Crash(RuntimeError):
    pass


def test_a_bf16_run_differs_from_fp32_and_resumes_bit_exactly(tmp_path):
    overrides = [*TINY, "train.steps=8", "train.checkpoint_every=4", "train.precision=bf16"]
    Trainer(load_config(None, overrides), tmp_path / "straight").fit(progress=False)

    def crash(trainer: Trainer, step: int) -> None:
        if step == 6:
            raise Crash

    with pytest.raises(Crash):
        Trainer(load_config(None, overrides), tmp_path / "crashed").fit(on_step=crash, progress=False)
    resumed = Trainer.resume(tmp_path / "crashed")
    assert resumed.step == 4 and resumed.config.train.precision == "bf16"
    resumed.fit(progress=False)
    Trainer(load_config(None, overrides[:-1]), tmp_path / "fp32").fit(progress=False)

    straight, again = (load_tensors(tmp_path / run / "final.safetensors") for run in ("straight", "crashed"))
    fp32 = load_tensors(tmp_path / "fp32" / "final.safetensors")
    assert all(torch.equal(straight[name], again[name]) for name in straight)
    assert not all(torch.equal(straight[name], fp32[name]) for name in straight)
    assert all(value.dtype == torch.float32 for value in straight.values())


def test_a_compiled_run_trains_the_eager_runs_weights(tmp_path):
    overrides = [*TINY, "train.steps=6", "train.checkpoint_every=3"]
    compiled = Trainer(load_config(None, [*overrides, "train.compile=true"]), tmp_path / "compiled")
    assert compiled.config.train.compile
    assert isinstance(compiled.context.model.net, torch._dynamo.eval_frame.OptimizedModule)
    compiled.fit(progress=False)
    Trainer(load_config(None, overrides), tmp_path / "eager").fit(progress=False)
    final, eager = (load_tensors(tmp_path / run / "final.safetensors") for run in ("compiled", "eager"))
    assert final.keys() == eager.keys()  # the compiled wrapper leaves the weights' names alone
    for name in final:
        torch.testing.assert_close(final[name], eager[name], rtol=1e-4, atol=1e-5)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bench_precision_compares_gradients_and_times_without_touching_the_run(tmp_path):
    run = tmp_path / "run"
    Trainer(load_config(None, [*TINY, "train.steps=20", "train.checkpoint_every=10"]), run).fit(progress=False)
    before = _digest(run)
    result = compare_precisions(run, batches=3, progress=False, compile=True)
    assert _digest(run) == before
    assert json.loads(json.dumps(result, allow_nan=False))["suite"] == "precision"
    assert result["step"] == 20 and result["batches"] == 3
    assert result["modes"] == ["fp32", "bf16", "bf16-compiled"]
    assert len(result["fp32_consecutive_batch_cosine"]) == 2
    for mode in ("bf16", "bf16-compiled"):
        assert len(result["gradient_cosine"][mode]) == len(result["gradient_norm_ratio"][mode]) == 3
        # The same batch in both modes: gradients nearly parallel, losses close; different batches differ more.
        assert min(result["gradient_cosine"][mode]) > 0.99
        assert max(result["loss_relative_difference"][mode]) < 0.05
        assert max(result["gradient_cosine"][mode]) > max(result["fp32_consecutive_batch_cosine"])
    assert all(len(result["step_times_s"][mode]) == 3 for mode in result["modes"])
    assert result["speed_up"]["fp32"] == 1.0 and result["speed_up"]["bf16-compiled"] > 0
    table = markdown_table(result)
    assert "| bf16-compiled |" in table and "bf16: gradient cosine" in table and "consecutive batches" in table
    assert "fp32" in compare_precisions(run, batches=2, progress=False)["modes"]


def test_bench_precision_needs_a_run_and_two_batches(tmp_path, capsys):
    from rgdm.cli import main

    report = str(tmp_path / "precision.json")
    assert main(["bench", "precision", "--json", report]) == 2
    assert "needs --run RUN" in capsys.readouterr().err
    assert main(["bench", "precision", "--run", str(tmp_path), "--batches", "1", "--json", report]) == 2
    assert "--batches 2 or more" in capsys.readouterr().err
