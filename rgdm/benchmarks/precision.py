"""``rgdm bench precision``: float32 against bf16 autocast (and, with ``--compile``, compiled bf16) on a
training run's own batches.

From the newest checkpoint of a run, on the batches its algorithm draws next (the same rows, times and
noise in every mode, by replaying the run's generator):

* how far each mode moves the loss and the gradient from float32's: the cosine between the two gradients
  and the ratio of their norms, beside the cosine between float32 gradients of consecutive batches, the
  minibatch noise that training already lives with;
* seconds per training step (loss, backward, gradient clipping, AdamW), the modes interleaved so that
  other load on the machine falls on all alike. A compiled mode is compiled while the gradients are
  compared, so its timed steps exclude the compile.

The draw must depend only on the generator, as pre-training's and the pay-off fine-tunes' do. The run
folder is only read; the steps timed here change an in-memory copy of the weights.
"""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rgdm.diffusion import EpsModel
from rgdm.engine import Trainer
from rgdm.engine.distributed import step_loss
from rgdm.engine.precision import Precision, for_training

#: Each mode's precision and whether it is compiled; the first is the reference.
MODES: dict[str, tuple[Precision, bool]] = {"fp32": ("fp32", False), "bf16": ("bf16", False),
                                            "bf16-compiled": ("bf16", True)}
REFERENCE = "fp32"


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def compare_precisions(run: Path, batches: int = 8, progress: bool = True, compile: bool = False
                       ) -> dict[str, Any]:
    """The JSON of ``rgdm bench precision --run RUN``: gradients and step times in every mode."""
    trainer = Trainer.resume(run)
    modes = [mode for mode, (_, compiled) in MODES.items() if compile or not compiled]
    models = {mode: EpsModel(for_training(trainer.net, MODES[mode][0], trainer.device, compile=MODES[mode][1]),
                             trainer.diffusion) for mode in modes}
    parameters = [p for p in trainer.net.parameters() if p.requires_grad]

    def loss_at(mode: str, batch: int) -> torch.Tensor:
        trainer.context.model = models[mode]
        loss, _ = step_loss(trainer.algorithm, trainer.context, trainer.step + batch, trainer.generator)
        return loss

    losses: dict[str, list[float]] = {mode: [] for mode in modes}
    gradients: dict[str, list[torch.Tensor]] = {mode: [] for mode in modes}
    bar = tqdm(total=2 * batches * len(modes), desc="precision", disable=not progress)
    for batch in range(batches):
        state = trainer.generator.get_state()
        for mode in modes:
            trainer.generator.set_state(state)
            loss = loss_at(mode, batch)
            gradient = torch.autograd.grad(loss, parameters, allow_unused=True)
            gradients[mode].append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                              for g, p in zip(gradient, parameters, strict=True)]))
            losses[mode].append(loss.item())
            bar.update()
    reference = gradients[REFERENCE]
    compared = [mode for mode in modes if mode != REFERENCE]
    cosine = {mode: [_cosine(a, b) for a, b in zip(reference, gradients[mode], strict=True)] for mode in compared}
    norm_ratio = {mode: [float(b.norm() / a.norm()) for a, b in zip(reference, gradients[mode], strict=True)]
                  for mode in compared}
    between_batches = [_cosine(a, b) for a, b in itertools.pairwise(reference)]
    loss_difference = {mode: [abs(b - a) / abs(a) for a, b in zip(losses[REFERENCE], losses[mode], strict=True)]
                       for mode in compared}

    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for batch in range(batches):
        for mode in modes:
            start = time.perf_counter()
            loss = loss_at(mode, batches + batch)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, trainer.config.train.grad_clip or float("inf"))
            trainer.optimizer.step()
            times[mode].append(time.perf_counter() - start)
            bar.update()
    bar.close()
    median = {mode: statistics.median(times[mode]) for mode in modes}
    return {
        "suite": "precision", "run": str(run), "step": trainer.step, "algorithm": trainer.config.algorithm.name,
        "batch_size": trainer.config.train.batch_size, "device": trainer.device,
        "torch_threads": torch.get_num_threads(), "batches": batches, "modes": modes,
        "loss": losses, "loss_relative_difference": loss_difference,
        "gradient_cosine": cosine, "gradient_norm_ratio": norm_ratio,
        "fp32_consecutive_batch_cosine": between_batches,
        "step_times_s": times, "median_step_s": median,
        "speed_up": {mode: median[REFERENCE] / median[mode] for mode in modes},
    }


def _row(label: str, values: list[float], digits: str = ".4f") -> str:
    return f"| {label} | {min(values):{digits}} | {statistics.fmean(values):{digits}} |"


def markdown_table(result: dict[str, Any]) -> str:
    """Step time per mode, and each mode's gradient agreement with float32's against the minibatch noise."""
    median, compared = result["median_step_s"], [mode for mode in result["modes"] if mode != REFERENCE]
    lines = [
        f"`{result['run']}` at step {result['step']} ({result['algorithm']}, batch {result['batch_size']}, "
        f"{result['device']}, {result['torch_threads']} threads, {result['batches']} batches)", "",
        "| mode | median s per training step | speed-up over fp32 |", "|---|---|---|",
        *(f"| {mode} | {median[mode]:.3f} | {result['speed_up'][mode]:.2f} |" for mode in result["modes"]), "",
        "| against fp32, same batches | min | mean |", "|---|---|---|",
    ]
    for mode in compared:
        lines += [_row(f"{mode}: gradient cosine", result["gradient_cosine"][mode]),
                  _row(f"{mode}: gradient norm ratio", result["gradient_norm_ratio"][mode]),
                  _row(f"{mode}: loss relative difference", result["loss_relative_difference"][mode], ".2e")]
    lines.append(_row("fp32 gradient cosine, consecutive batches (minibatch noise)",
                      result["fp32_consecutive_batch_cosine"]))
    return "\n".join(lines)
