"""``rgdm bench precision``: float32 against bf16 autocast on a training run's own batches.

From the newest checkpoint of a run, on the batches its algorithm draws next (the same rows, times and
noise in both precisions, by replaying the run's generator):

* how far bf16 moves the loss and the gradient from float32's: the cosine between the two gradients and
  the ratio of their norms, beside the cosine between float32 gradients of consecutive batches, the
  minibatch noise that training already lives with;
* seconds per training step (loss, backward, gradient clipping, AdamW), the precisions interleaved so that
  other load on the machine falls on both alike.

The draw must depend only on the generator, as pre-training's and the pay-off fine-tunes' do. The run
folder is only read; the steps timed here change an in-memory copy of the weights.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rgdm.diffusion import EpsModel
from rgdm.engine import Trainer
from rgdm.engine.distributed import step_loss
from rgdm.engine.precision import Precision, with_precision

PRECISIONS: tuple[Precision, Precision] = ("fp32", "bf16")


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def compare_precisions(run: Path, batches: int = 8, progress: bool = True) -> dict[str, Any]:
    """The JSON of ``rgdm bench precision --run RUN``: gradients and step times in both precisions."""
    trainer = Trainer.resume(run)
    models = {p: EpsModel(with_precision(trainer.net, p, trainer.device), trainer.diffusion) for p in PRECISIONS}
    parameters = [p for p in trainer.net.parameters() if p.requires_grad]

    def loss_at(precision: Precision, batch: int) -> torch.Tensor:
        trainer.context.model = models[precision]
        loss, _ = step_loss(trainer.algorithm, trainer.context, trainer.step + batch, trainer.generator)
        return loss

    losses: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    gradients: dict[str, list[torch.Tensor]] = {p: [] for p in PRECISIONS}
    bar = tqdm(total=2 * batches * len(PRECISIONS), desc="precision", disable=not progress)
    for batch in range(batches):
        state = trainer.generator.get_state()
        for precision in PRECISIONS:
            trainer.generator.set_state(state)
            loss = loss_at(precision, batch)
            gradient = torch.autograd.grad(loss, parameters, allow_unused=True)
            gradients[precision].append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                                   for g, p in zip(gradient, parameters, strict=True)]))
            losses[precision].append(loss.item())
            bar.update()
    pairs = list(zip(gradients["fp32"], gradients["bf16"], strict=True))
    cosine = [_cosine(a, b) for a, b in pairs]
    norm_ratio = [float(b.norm() / a.norm()) for a, b in pairs]
    between_batches = [_cosine(a, b) for a, b in zip(gradients["fp32"], gradients["fp32"][1:], strict=False)]
    loss_difference = [abs(b - a) / abs(a) for a, b in zip(losses["fp32"], losses["bf16"], strict=True)]

    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for batch in range(batches):
        for precision in PRECISIONS:
            start = time.perf_counter()
            loss = loss_at(precision, batches + batch)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, trainer.config.train.grad_clip or float("inf"))
            trainer.optimizer.step()
            times[precision].append(time.perf_counter() - start)
            bar.update()
    bar.close()
    median = {p: statistics.median(times[p]) for p in PRECISIONS}
    return {
        "suite": "precision", "run": str(run), "step": trainer.step, "algorithm": trainer.config.algorithm.name,
        "batch_size": trainer.config.train.batch_size, "device": trainer.device,
        "torch_threads": torch.get_num_threads(), "batches": batches,
        "loss": losses, "loss_relative_difference": loss_difference,
        "gradient_cosine": cosine, "gradient_norm_ratio": norm_ratio,
        "fp32_consecutive_batch_cosine": between_batches,
        "step_times_s": times, "median_step_s": median, "speed_up": median["fp32"] / median["bf16"],
    }


def _row(label: str, values: list[float], digits: str = ".4f") -> str:
    return f"| {label} | {min(values):{digits}} | {statistics.fmean(values):{digits}} |"


def markdown_table(result: dict[str, Any]) -> str:
    """Step time per precision, and the gradient agreement against the minibatch noise."""
    median = result["median_step_s"]
    lines = [
        f"`{result['run']}` at step {result['step']} ({result['algorithm']}, batch {result['batch_size']}, "
        f"{result['device']}, {result['torch_threads']} threads, {result['batches']} batches)", "",
        "| precision | median s per training step | speed-up |", "|---|---|---|",
        f"| fp32 | {median['fp32']:.3f} | 1.00 |",
        f"| bf16 autocast | {median['bf16']:.3f} | {result['speed_up']:.2f} |", "",
        "| bf16 against fp32, same batches | min | mean |", "|---|---|---|",
        _row("gradient cosine", result["gradient_cosine"]),
        _row("gradient norm ratio", result["gradient_norm_ratio"]),
        _row("loss relative difference", result["loss_relative_difference"], ".2e"),
        _row("fp32 gradient cosine, consecutive batches (minibatch noise)", result["fp32_consecutive_batch_cosine"]),
    ]
    return "\n".join(lines)
