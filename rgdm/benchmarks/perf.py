"""``rgdm bench perf``: sampling throughput and memory, training-step cost and reward throughput.

Networks have the shipped sizes (the pre-training presets): a shipped checkpoint where one exists, else
random weights, since timings do not depend on the weights. Every timing is the median of ``repeats``
runs after ``warmup`` untimed ones; on CUDA the clock waits for the device. Measured per domain:

* sampling with ``rgdm.engine.generate`` (the path of ``rgdm sample``) at an ancestral (eta 1) and a
  DDIM (eta 0) step count, beside the bare network called on the states it visits (same steps, shapes
  and values);
* peak memory of sampling at several batch sizes and a least-squares line through it: on CPU the peak
  RSS increase of a fresh process per batch size, on CUDA ``torch.cuda.max_memory_allocated``;
* greedy reward-guided selection (``GreedySelection``, K = 8) with reused and with exact Tweedie values
  against unguided sampling with the same steps (eta 1: candidates need a stochastic step), with rewards
  excluded (``ZeroReward``: zeros, no decoding) and with the domain's black-box reward;
* training steps (loss, backward, gradient clipping, AdamW) of plain denoising, RGDM step-wise
  exploration with K = 8 (reused values) and DDPO, with rewards excluded and included; a DDPO step is
  amortised over a refresh (trajectories, old log-probabilities, then its updates). The step-wise step with
  exact values is timed beside it, rewards excluded.

And the molecules ``qed`` reward's throughput on QM9 molecules, in-process and in worker pools.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from rgdm.algorithms import DDPO, Algorithm, GreedySelection, Pretrain, StepwiseExploration, TrainingContext
from rgdm.algorithms.exploration import VALUE_ESTIMATES, ValueEstimate
from rgdm.batch import Batch
from rgdm.diffusion import EpsModel, Transition, ancestral_transition, sample
from rgdm.domains import build_domain
from rgdm.domains.molecules.data import QM9DataError
from rgdm.engine import ConfigError, LoadedModel, generate, load_config, load_trained, make_scorer
from rgdm.engine.builder import make_diffusion, seeded_generator
from rgdm.engine.config import RewardConfig
from rgdm.engine.precision import with_precision
from rgdm.engine.registry import shipped_models
from rgdm.rewards import BlackBoxReward, RewardCounter, RewardResult, Scorer
from rgdm.rewards.base import RewardFn

log = logging.getLogger("rgdm.bench")
Result = TypeVar("Result")

PRESETS = Path(__file__).resolve().parent.parent / "configs"
CANDIDATES = 8
GUIDANCE_TEMPERATURE = 0.1
STEPWISE_TEMPERATURE = 0.1
#: Sampling steps of a warm-up run: enough to run every kernel at the measured shapes.
WARMUP_STEPS = 3
#: ``mallopt``'s parameter number of glibc's mmap threshold.
M_MMAP_THRESHOLD = -3
#: Memory per sample may exceed the smallest batch's by this factor and still grow "at most linearly".
LINEAR_SLACK = 1.1
#: A memory curve is called linear when a line explains this share of its variance (three points or more).
LINEAR_R2 = 0.98
TARGETS = {"sampling_overhead": 1.2, "guided_k8_vs_unguided": 2.5, "stepwise_k8_vs_plain_step": 3.0}
DEFINITIONS = {
    "sampling_overhead": "generate() wall time over the bare network forwards on the states it visits "
                         "(ancestral sampling, same steps and shapes)",
    "guided_k8_vs_unguided": "greedy selection with K = 8 and reused Tweedie values over unguided sampling, "
                             "same steps (DDIM steps, eta 1), rewards excluded; exact: with exact values",
    "stepwise_k8_vs_plain_step": "an RGDM step-wise training step with K = 8 and reused Tweedie values over a "
                                 "plain denoising step, rewards excluded; exact: with exact values",
}


@dataclass(frozen=True)
class DomainSpec:
    """A domain as benchmarked: the preset with its shipped sizes, a checkpoint to prefer, its real reward."""

    name: str
    preset: str
    reward: str
    checkpoint: str | None = None
    domain_options: dict[str, Any] = field(default_factory=dict)


DOMAINS = {
    "toy": DomainSpec("toy", "toy-ring-pretrain", "region", checkpoint="toy-ring-pretrained"),
    "molecules": DomainSpec("molecules", "qm9-edm-small-pretrain", "qed", checkpoint="qm9-edm-small"),
    # The training shapes only set decode's normalisation and the training batches' content: 8 per
    # category keep the set-up to seconds (the preset's 400 take minutes).
    "shapes": DomainSpec("shapes", "shapes-pretrain", "class-forest", domain_options={"per_class": 8}),
}


@dataclass(frozen=True)
class DomainBudget:
    """One domain's sizes: sampling batch, (ancestral, DDIM) steps, memory batches, training batch, DDPO steps."""

    batch_size: int
    steps: tuple[int, int]
    memory_batches: tuple[int, ...]
    train_batch: int
    ddpo_steps: int


@dataclass(frozen=True)
class PerfBudget:
    """Repeats and sizes of a whole run; ``memory_steps`` sampling steps per memory point."""

    repeats: int
    warmup: int
    memory_steps: int
    reward_samples: int
    domains: dict[str, DomainBudget]


FULL = PerfBudget(repeats=3, warmup=1, memory_steps=5, reward_samples=512, domains={
    "toy": DomainBudget(1000, (1000, 100), (1000, 4000, 16000), 256, 20),
    "molecules": DomainBudget(16, (1000, 100), (4, 16, 64), 64, 20),
    "shapes": DomainBudget(1, (1000, 100), (1, 2, 4), 4, 10),
})
QUICK = PerfBudget(repeats=1, warmup=1, memory_steps=3, reward_samples=128, domains={
    "toy": DomainBudget(256, (1000, 100), (256, 1024, 4096), 128, 10),
    "molecules": DomainBudget(4, (1000, 100), (4, 16, 64), 8, 5),
    "shapes": DomainBudget(1, (100, 20), (1, 2, 3), 2, 4),
})


def machine_description(device: str) -> dict[str, Any]:
    """Where the numbers come from: platform, CPUs, load, torch and its threads, the device."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_available": cpus,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
    }


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Result], device: str = "cpu") -> tuple[float, Result]:
    """Wall seconds of one call of ``fn`` (waiting for the device before and after) and its result."""
    _synchronize(device)
    start = time.perf_counter()
    result = fn()
    _synchronize(device)
    return time.perf_counter() - start, result


@dataclass(frozen=True)
class Acceleration:
    """bf16 autocast of the networks (on any device) and ``torch.compile`` (on CUDA only)."""

    device: str
    bf16: bool = False
    compile_network: bool = False

    @property
    def compiles(self) -> bool:
        return self.compile_network and self.device.startswith("cuda")

    def apply(self, net: nn.Module) -> nn.Module:
        net = with_precision(net, "bf16" if self.bf16 else "fp32", self.device)
        return torch.compile(net) if self.compiles else net

    def describe(self) -> dict[str, Any]:
        return {"bf16": {"requested": self.bf16, "used": self.bf16},
                "compile": {"requested": self.compile_network, "used": self.compiles}
                | ({"note": "unused on CPU"} if self.compile_network and not self.compiles else {})}


class StopwatchNetwork(nn.Module):
    """A network that adds up the wall time of its forward calls in ``seconds``, split by whether autograd
    records them (``"grad"``) or not (``"no_grad"``): the profile that explains a cost ratio."""

    def __init__(self, net: nn.Module, device: str, seconds: dict[str, float] | None = None) -> None:
        super().__init__()
        self.net = net
        self.device = device
        self.seconds = {"grad": 0.0, "no_grad": 0.0} if seconds is None else seconds

    def forward(self, *inputs: Any) -> torch.Tensor:
        seconds, eps = timed(lambda: self.net(*inputs), self.device)
        self.seconds["grad" if torch.is_grad_enabled() else "no_grad"] += seconds
        return eps


@dataclass
class StopwatchScorer:
    """A ``Scorer`` stand-in that adds up the wall time of its calls (decoding and the reward)."""

    scorer: Scorer
    seconds: float = 0.0

    @property
    def counter(self) -> RewardCounter:
        return self.scorer.counter

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                 targets: torch.Tensor | None = None) -> RewardResult:
        seconds, result = timed(lambda: self.scorer(x, mask, targets))
        self.seconds += seconds
        return result


def build_model(spec: DomainSpec, device: str = "cpu") -> tuple[LoadedModel, dict[str, Any]]:
    """The domain's shipped checkpoint if there is one, else a seeded random network of the preset's size."""
    if spec.checkpoint is not None and spec.checkpoint in shipped_models():
        model = load_trained(spec.checkpoint, device)
        weights = f"shipped checkpoint {spec.checkpoint}"
    else:
        config = load_config(PRESETS / f"{spec.preset}.yaml")
        domain = build_domain({**config.domain, **spec.domain_options})
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = domain.build_network(config.network)
        meta = {"domain": domain.config(), "network": config.network, "diffusion": config.diffusion.model_dump()}
        model = LoadedModel(domain, make_diffusion(config.diffusion, domain), net.to(device).eval(), meta)
        weights = f"random initialisation with the sizes of preset {spec.preset}"
    description = {"weights": weights, "parameters": sum(p.numel() for p in model.net.parameters()),
                   "network": model.meta["network"], "diffusion": model.meta["diffusion"],
                   "domain": model.domain.config(), "reward": spec.reward}
    if not weights.startswith("shipped"):
        description["note"] = ("random weights: sampled states grow far beyond the data's scale, and on CPU extreme "
                               "values slow some kernels down, so sampling and DDPO times may differ from a trained "
                               "model's; rewards see invalid samples, which can be cheaper or dearer to score")
    return model, description


def sampling_call(model: LoadedModel, size: int, steps: int, eta: float, device: str, seed: int,
                  transition: Transition = ancestral_transition) -> Callable[[], Batch]:
    """One ``generate`` call as ``rgdm sample`` makes it. Each call seeds a fresh generator, so every call
    and the bare network loop see the same prior batch (for molecules: the same atom counts)."""
    return lambda: generate(model, size, seeded_generator(seed, device), steps=steps, eta=eta, transition=transition,
                            batch_size=size, device=device)


def bare_forward_loop(model: LoadedModel, size: int, steps: int, eta: float, device: str,
                      seed: int) -> Callable[[], None]:
    """The network alone, called on the very states and timesteps that ``sampling_call`` visits with ``seed``.

    Same values, not only the same shapes: on CPU kernel speed depends on the values (denormal floats), and
    the states of a network with random weights grow far beyond the data's scale.
    """
    generator = seeded_generator(seed, device)
    prior = model.domain.prior_batch(size, generator).to(device)
    trajectory = sample(model.eps_model, prior.x, steps=steps, eta=eta, cond=prior.cond, mask=prior.mask,
                        generator=generator, record=True, device=device).trajectory
    assert trajectory is not None, "sample keeps the trajectory when asked to record"
    timesteps = model.diffusion.timesteps
    inputs = [(x, torch.full((size,), t / timesteps, device=device))
              for x, t in zip(trajectory.states[:-1], trajectory.timesteps[:-1], strict=True)]
    net = model.net

    @torch.no_grad()
    def run() -> None:
        for x, t in inputs:
            net(x, t, prior.cond, prior.mask)

    return run


def measure_sampling(model: LoadedModel, sampler: str, size: int, steps: int, eta: float, repeats: int,
                     warmup: int, device: str, seed: int = 0) -> dict[str, Any]:
    """``generate`` of ``size`` samples in ``steps`` steps, interleaved with the bare network's forwards.

    ``largest_abs_value`` of the samples shows whether they stayed near the data's scale (random weights
    make them grow, and extreme values change CPU kernel speed).
    """
    warm_steps = min(steps, WARMUP_STEPS)
    for _ in range(warmup):
        sampling_call(model, size, warm_steps, eta, device, seed)()
        bare_forward_loop(model, size, warm_steps, eta, device, seed)()
    run = sampling_call(model, size, steps, eta, device, seed)
    bare = bare_forward_loop(model, size, steps, eta, device, seed)
    evaluations = model.eps_model.evaluations
    sampled, forwards = [], []
    for _ in range(repeats):
        seconds, samples = timed(run, device)
        sampled.append(seconds)
        forwards.append(timed(bare, device)[0])
    median, forward_median = statistics.median(sampled), statistics.median(forwards)
    return {
        "sampler": sampler, "steps": steps, "eta": eta, "batch_size": size, "repeats": repeats, "warmup": warmup,
        "warmup_steps": warm_steps, "times_s": sampled, "median_s": median, "samples_per_s": size / median,
        "network_evaluations_per_sample": (model.eps_model.evaluations - evaluations) / (repeats * size),
        "bare_forward_times_s": forwards, "bare_forward_median_s": forward_median,
        "overhead": median / forward_median, "largest_abs_value": float(samples.x.abs().max()),
    }


def measure_guided_sampling(model: LoadedModel, scorer: Scorer, size: int, steps: int, repeats: int, warmup: int,
                            device: str, seed: int = 0) -> dict[str, Any]:
    """Greedy selection (K = 8) with each value estimate, with rewards excluded (``ZeroReward``) and with the
    domain's reward (``scorer``), against unguided sampling; all ``steps`` DDIM steps with eta 1, interleaved.
    ``ratio`` is each run's median over the unguided median."""
    scorers = {"rewards_excluded": zero_cost_scorer(), "rewards_included": scorer}
    transitions = {(value, mode): GreedySelection(scorers[mode], CANDIDATES, GUIDANCE_TEMPERATURE, value=value)
                   for value in VALUE_ESTIMATES for mode in scorers}
    warm_steps = min(steps, WARMUP_STEPS)
    for _ in range(warmup):
        for transition in (ancestral_transition, *transitions.values()):
            sampling_call(model, size, warm_steps, 1.0, device, seed, transition)()
    unguided_run = sampling_call(model, size, steps, 1.0, device, seed)
    runs = {key: sampling_call(model, size, steps, 1.0, device, seed, transition)
            for key, transition in transitions.items()}
    calls = scorer.counter.calls
    plain: list[float] = []
    guided_times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        plain.append(timed(unguided_run, device)[0])
        for key, run in runs.items():
            guided_times[key].append(timed(run, device)[0])
    unguided_median = statistics.median(plain)
    return {
        "steps": steps, "eta": 1.0, "batch_size": size, "candidates": CANDIDATES,
        "temperature": GUIDANCE_TEMPERATURE, "repeats": repeats, "warmup": warmup, "warmup_steps": warm_steps,
        "unguided_times_s": plain, "unguided_median_s": unguided_median,
        "guided": {value: {mode: {"times_s": guided_times[value, mode],
                                  "median_s": statistics.median(guided_times[value, mode]),
                                  "ratio": statistics.median(guided_times[value, mode]) / unguided_median}
                           for mode in scorers} for value in VALUE_ESTIMATES},
        "reward_calls_per_sample": (scorer.counter.calls - calls) / (len(VALUE_ESTIMATES) * repeats * size),
        "profile": profile_guided_sampling(model, scorer, size, steps, device, seed),
    }


def profile_guided_sampling(model: LoadedModel, scorer: Scorer, size: int, steps: int, device: str, seed: int
                            ) -> dict[str, Any]:
    """One more unguided run and guided run per value estimate (``guided``: reused values, ``guided_exact``),
    split into network forwards, rewards (decoding included) and the rest; ``network_ratio`` and
    ``network_ratio_exact`` are the guided runs' network time over the unguided run's."""
    values: dict[str, ValueEstimate] = {"guided": "reuse", "guided_exact": "exact"}
    split: dict[str, dict[str, float]] = {}
    for name in ("unguided", *values):
        network = StopwatchNetwork(model.net, device)
        stopwatch = StopwatchScorer(scorer)
        timed_model = LoadedModel(model.domain, model.diffusion, network, model.meta)
        transition = (ancestral_transition if name == "unguided"
                      else GreedySelection(stopwatch, CANDIDATES, GUIDANCE_TEMPERATURE, value=values[name]))
        total, _ = timed(sampling_call(timed_model, size, steps, 1.0, device, seed, transition), device)
        forward = network.seconds["no_grad"] + network.seconds["grad"]
        split[name] = {"total_s": total, "network_s": forward, "reward_s": stopwatch.seconds,
                       "other_s": total - forward - stopwatch.seconds}
    unguided = split["unguided"]["network_s"]
    return split | {"network_ratio": split["guided"]["network_s"] / unguided,
                    "network_ratio_exact": split["guided_exact"]["network_s"] / unguided}


def _peak_rss_mb() -> float:
    """This process's peak RSS in MB: ``VmHWM`` on Linux, the process's own peak, which a reset moves and
    which does not inherit the parent's peak across fork and exec as ``ru_maxrss`` does; elsewhere
    ``ru_maxrss`` (KB on Linux, bytes on macOS)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _glibc() -> Any | None:
    """The C library if it is glibc (it has ``mallopt`` and ``malloc_trim``), else ``None``.

    Only the fresh process of one CPU memory point calls it (``_peak_rss_of_sampling``), never the library
    nor ``rgdm bench``'s own process. No library does this job: ``psutil`` and ``resource`` read RSS but
    cannot release the allocator's cache, ``tracemalloc`` sees Python's allocations and not the tensors',
    and PyTorch keeps no CPU peak outside its profiler. glibc's ``MALLOC_MMAP_THRESHOLD_``, set in the
    spawned process's environment, could replace the ``mallopt`` call, but ``malloc_trim`` has no
    environment equivalent, so both stay here, side by side. Without glibc (musl, macOS) the measurement
    falls back to ``ru_maxrss`` and its ``method`` says so.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _reset_peak_rss(libc: Any) -> bool:
    """Return freed heap memory to the OS, then reset the peak RSS to the current RSS (Linux 4.0+)."""
    libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_of_sampling(spec: DomainSpec, size: int, steps: int, threads: int, seed: int) -> tuple[float, bool]:
    """Run in a fresh process: the peak RSS increase (MB) of sampling, and whether the RSS could be settled.

    Set-up (imports, the model, a one-step run of the same batch for lazy loads and one-off kernel set-up)
    comes before the baseline. Under glibc every allocation above 128 KiB gets its own mapping, returned to
    the OS when freed (``mallopt(M_MMAP_THRESHOLD)``, which also stops glibc from raising that threshold as
    it goes), and after set-up the freed heap is trimmed and the peak reset: RSS then follows the live
    tensors rather than the allocator's cache, and the same run measures the same.
    """
    torch.set_num_threads(threads)
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    model, _ = build_model(spec)
    sampling_call(model, size, 1, 1.0, "cpu", seed)()
    settled = libc is not None and _reset_peak_rss(libc)
    baseline = _peak_rss_mb()
    sampling_call(model, size, steps, 1.0, "cpu", seed)()
    return _peak_rss_mb() - baseline, settled


def _cuda_peak_of_sampling(model: LoadedModel, size: int, steps: int, device: str, seed: int) -> float:
    """Peak CUDA memory (MB) allocated by sampling, above what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    sampling_call(model, size, steps, 1.0, device, seed)()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, Any]:
    """Least-squares line ``y = slope x + intercept`` and its R²; ``linear`` needs three points and R² >= 0.98
    (``None``: undetermined, with fewer points or a flat curve)."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        return {"points": n, "slope_mb_per_sample": None, "intercept_mb": None, "r2": None, "linear": None}
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1 - residual / total if total > 0 else None
    linear = None if n < 3 or r2 is None else r2 >= LINEAR_R2
    return {"points": n, "slope_mb_per_sample": slope, "intercept_mb": intercept, "r2": r2, "linear": linear}


def measure_memory(spec: DomainSpec, model: LoadedModel, batches: Sequence[int], steps: int, device: str,
                   seed: int = 0) -> dict[str, Any]:
    """Peak memory of ancestral sampling at each batch size, and the line through it.

    The peak does not grow with the number of steps (states are not kept) and a DDIM step allocates what
    an ancestral one does, so ``steps`` stays small.
    """
    if device.startswith("cuda"):
        peaks = [_cuda_peak_of_sampling(model, size, steps, device, seed) for size in batches]
        method = "torch.cuda.max_memory_allocated minus the memory allocated before sampling"
    else:
        peaks, settled = [], []
        for size in batches:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                peak, ok = pool.submit(_peak_rss_of_sampling, spec, size, steps, torch.get_num_threads(), seed).result()
            peaks.append(peak)
            settled.append(ok)
        method = ("peak RSS (VmHWM) of a fresh spawned process per point minus its RSS after set-up, with "
                  "glibc's allocations over 128 KiB mapped on their own and freed memory trimmed, so that RSS "
                  "follows live tensors" if all(settled) else
                  "peak RSS increase (ru_maxrss) of a fresh spawned process per point over its peak after set-up "
                  "(no glibc or no peak reset here: the allocator's cache may hide smaller increases)")
    return {"method": method, "sampler": "ancestral", "steps": steps,
            "points": [{"batch_size": size, "peak_mb": peak} for size, peak in zip(batches, peaks, strict=True)],
            "fit": linear_fit(batches, peaks), "at_most_linear": grows_at_most_linearly(batches, peaks)}


def grows_at_most_linearly(batches: Sequence[int], peaks: Sequence[float]) -> bool:
    """No batch costs more memory per sample than the smallest (within ``LINEAR_SLACK``): linear growth, or
    less once ``EpsModel``'s CPU chunks bound the activations of a call."""
    per_sample = [peak / size for size, peak in zip(batches, peaks, strict=True)]
    return all(value <= per_sample[0] * LINEAR_SLACK for value in per_sample[1:])


class ZeroReward:
    """A reward that costs nothing: zeros for every sample, charged to the counter like any reward.

    Behind a ``Scorer`` with an identity decoder it times an algorithm without its reward; the
    ``Scorer``'s copy to the CPU stays.
    """

    def __init__(self, counter: RewardCounter) -> None:
        self.counter = counter

    def __call__(self, samples: Sequence[Any], targets: Sequence[Any] | None = None) -> RewardResult:
        self.counter.charge(len(samples))
        return RewardResult(torch.zeros(len(samples)), torch.ones(len(samples), dtype=torch.bool))


def zero_cost_scorer() -> Scorer:
    """A ``ZeroReward`` behind a ``Scorer`` that passes tensors through undecoded."""
    counter = RewardCounter()
    return Scorer(ZeroReward(counter), lambda x, mask: x, counter)


def training_algorithms(batch_size: int, ddpo_steps: int) -> dict[str, Algorithm]:
    """Fresh instances of the timed objectives (step-wise with reused values); DDPO keeps its defaults but
    trains on ``batch_size`` trajectories and pairs per update."""
    return {
        "plain": Pretrain(),
        "stepwise_k8": StepwiseExploration(STEPWISE_TEMPERATURE, candidates=CANDIDATES, value="reuse"),
        "ddpo": DDPO(batch_trajectories=batch_size, sample_steps=ddpo_steps, minibatch=batch_size),
    }


def measure_training_step(model: LoadedModel, data: Batch, algorithm: Algorithm, scorer: Scorer, batch_size: int,
                          repeats: int, warmup: int, device: str, acceleration: Acceleration, seed: int = 0
                          ) -> dict[str, Any]:
    """Seconds per training step: loss, backward, gradient clipping and an AdamW step, as the trainer does.

    The trained network and the frozen reference are (accelerated) copies of ``model``'s, which is left as
    it was. A repeat is one step, or for DDPO one refresh (sampling, scoring, old log-probabilities) and
    all its updates, divided by the updates.
    """
    seconds = {"grad": 0.0, "no_grad": 0.0}
    net = StopwatchNetwork(acceleration.apply(copy.deepcopy(model.net).train()), device, seconds)
    reference = EpsModel(StopwatchNetwork(acceleration.apply(copy.deepcopy(model.net).eval().requires_grad_(False)),
                                          device, seconds), model.diffusion)
    domain = model.domain
    context = TrainingContext(model=EpsModel(net, model.diffusion), ema=reference, reference=reference,
                              data=data, scorer=scorer, batch_size=batch_size,
                              prior=lambda n, generator, cond: domain.prior_batch(n, generator, cond).to(device))
    parameters = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.0)
    generator = seeded_generator(seed)  # on the CPU, as the trainer's
    step = 0

    def train_step() -> None:
        nonlocal step
        loss, _ = algorithm.loss(context, step, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        step += 1

    def repeat() -> int:
        """One timed unit; returns the optimizer steps it took."""
        if not isinstance(algorithm, DDPO):
            train_step()
            return 1
        updates = 0
        while True:
            train_step()
            updates += 1
            if algorithm.cursor >= algorithm.order.numel():
                return updates

    for _ in range(warmup):
        repeat()
    calls, times, updates, total = scorer.counter.calls, [], 0, 0.0
    seconds.update(grad=0.0, no_grad=0.0)
    for _ in range(repeats):
        elapsed, steps = timed(repeat, device)
        times.append(elapsed / steps)
        updates += steps
        total += elapsed
    profile = {"forward_with_grad_s": seconds["grad"] / updates, "forward_no_grad_s": seconds["no_grad"] / updates,
               "rest_s": (total - seconds["grad"] - seconds["no_grad"]) / updates,
               "rest_is": "backward, optimizer step, candidates, rewards and bookkeeping"}
    return {"batch_size": batch_size, "repeats": repeats, "warmup": warmup, "steps_per_repeat": updates // repeats,
            "times_s": times, "median_s": statistics.median(times),
            "reward_calls_per_step": (scorer.counter.calls - calls) / updates, "profile_per_step": profile}


def measure_training(model: LoadedModel, spec: DomainSpec, sizes: DomainBudget, budget: PerfBudget, device: str,
                     acceleration: Acceleration) -> dict[str, Any]:
    """Every timed objective with rewards excluded (``ZeroReward``) and included (the domain's reward), and the
    step-wise step with exact values, rewards excluded."""
    result: dict[str, Any] = {
        "batch_size": sizes.train_batch, "candidates": CANDIDATES, "ddpo_sample_steps": sizes.ddpo_steps,
        "reward": spec.reward, "rewards_excluded_by": "ZeroReward: zeros without decoding, behind the usual Scorer",
    }
    data = model.domain.dataset().to(device)
    scorers = {"rewards_excluded": zero_cost_scorer(),
               "rewards_included": make_scorer(RewardConfig(name=spec.reward), model.domain, RewardCounter())}
    for mode, scorer in scorers.items():
        result[mode] = {}
        for name, algorithm in training_algorithms(sizes.train_batch, sizes.ddpo_steps).items():
            log.info("%s: training step %s, %s", spec.name, name, mode.replace("_", " "))
            result[mode][name] = measure_training_step(model, data, algorithm, scorer, sizes.train_batch,
                                                       budget.repeats, budget.warmup, device, acceleration)
    log.info("%s: training step stepwise_k8 with exact values, rewards excluded", spec.name)
    exact = StepwiseExploration(STEPWISE_TEMPERATURE, candidates=CANDIDATES, value="exact")
    result["exact_values"] = {"stepwise_k8": measure_training_step(
        model, data, exact, zero_cost_scorer(), sizes.train_batch, budget.repeats, budget.warmup, device,
        acceleration)}
    plain = result["rewards_excluded"]["plain"]["median_s"]
    result["stepwise_k8_vs_plain_step"] = result["rewards_excluded"]["stepwise_k8"]["median_s"] / plain
    result["stepwise_k8_exact_vs_plain_step"] = result["exact_values"]["stepwise_k8"]["median_s"] / plain
    return result


def measure_reward_throughput(fn: RewardFn, samples: Sequence[Any], workers: int, repeats: int, warmup: int,
                              name: str = "reward") -> dict[str, Any]:
    """Calls per second of ``BlackBoxReward(fn, workers=workers)`` on ``samples`` (0 workers: in-process).

    The pool starts before the clock; ``reward_calls`` is what the reward's counter saw while timed.
    """
    counter = RewardCounter()
    reward = BlackBoxReward(fn, name=name, counter=counter, workers=workers)
    try:
        for _ in range(warmup):
            reward(samples)
        calls = counter.calls
        times = [timed(lambda: reward(samples))[0] for _ in range(repeats)]
    finally:
        reward.close()
    median = statistics.median(times)
    return {"workers": workers, "samples_per_call": len(samples), "repeats": repeats, "warmup": warmup,
            "reward_calls": counter.calls - calls, "invalid": counter.invalid, "times_s": times, "median_s": median,
            "calls_per_s": len(samples) / median}


def molecule_reward_throughput(model: LoadedModel, samples: int, repeats: int, warmup: int) -> dict[str, Any]:
    """The ``qed`` reward (RDKit, the realistic black box) on QM9 molecules: in-process, 1 worker, N workers."""
    data = model.domain.dataset().select(slice(0, samples))
    molecules = model.domain.decode(data.x, data.mask)
    fn = model.domain.rewards()["qed"].fn
    many = max(os.cpu_count() or 1, 2)
    runs = []
    for workers in (0, 1, many):
        log.info("molecules: qed reward throughput with %d workers", workers)
        runs.append(measure_reward_throughput(fn, molecules, workers, repeats, warmup, name="qed"))
    return {"reward": "qed", "samples": f"the first {len(molecules)} QM9 training molecules", "runs": runs,
            "many_workers": many, "speedup_many_vs_one_worker": runs[2]["calls_per_s"] / runs[1]["calls_per_s"]}


def benchmark_domain(spec: DomainSpec, model: LoadedModel, sizes: DomainBudget, budget: PerfBudget, device: str,
                     acceleration: Acceleration) -> dict[str, Any]:
    """Sampling, memory, guided sampling and training steps of one domain.

    Sampling runs ``model``'s network accelerated as asked; training accelerates copies of the plain one.
    """
    accelerated = LoadedModel(model.domain, model.diffusion, acceleration.apply(model.net), model.meta)
    ancestral, ddim = sizes.steps
    sampling = []
    for sampler, steps, eta in (("ancestral", ancestral, 1.0), ("ddim", ddim, 0.0)):
        log.info("%s: %s sampling, %d steps, batch %d", spec.name, sampler, steps, sizes.batch_size)
        sampling.append(measure_sampling(accelerated, sampler, sizes.batch_size, steps, eta, budget.repeats,
                                         budget.warmup, device))
    log.info("%s: peak memory of sampling", spec.name)
    batches = sorted({sizes.batch_size, *sizes.memory_batches})
    memory = measure_memory(spec, accelerated, batches, budget.memory_steps, device)
    peaks = {point["batch_size"]: point["peak_mb"] for point in memory["points"]}
    for entry in sampling:
        entry["peak_memory_mb"] = peaks[entry["batch_size"]]
    log.info("%s: guided sampling with %d candidates", spec.name, CANDIDATES)
    scorer = make_scorer(RewardConfig(name=spec.reward), model.domain, RewardCounter())
    guided = measure_guided_sampling(accelerated, scorer, sizes.batch_size, ddim, budget.repeats, budget.warmup,
                                     device)
    return {"sampling": sampling, "memory": memory, "guided_sampling": guided | {"reward": spec.reward},
            "training": measure_training(model, spec, sizes, budget, device, acceleration)}


def ratios(domains: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The three cost ratios per measured domain, their targets and whether each is met; the guided and step-wise
    ratios with exact values beside (``exact``), which the targets do not cover."""
    def value(name: str, result: dict[str, Any]) -> tuple[float, float | None]:
        if name == "sampling_overhead":
            return result["sampling"][0]["overhead"], None
        if name == "guided_k8_vs_unguided":
            guided = result["guided_sampling"]["guided"]
            return guided["reuse"]["rewards_excluded"]["ratio"], guided["exact"]["rewards_excluded"]["ratio"]
        training = result["training"]
        return training["stepwise_k8_vs_plain_step"], training["stepwise_k8_exact_vs_plain_step"]

    measured = {domain: result for domain, result in domains.items() if "skipped" not in result}
    table = {}
    for name, target in TARGETS.items():
        entries = {}
        for domain, result in measured.items():
            ratio, exact = value(name, result)
            entries[domain] = {"value": ratio, "met": ratio <= target} | ({} if exact is None else {"exact": exact})
        table[name] = {"target": target, "definition": DEFINITIONS[name], "domains": entries}
    return table


def run_perf_benchmark(quick: bool = False, domains: Sequence[str] | None = None, *, device: str = "cpu",
                       bf16: bool = False, compile_network: bool = False, steps: tuple[int, int] | None = None,
                       batch_size: int | None = None, memory_batches: Sequence[int] | None = None,
                       train_batch: int | None = None, repeats: int | None = None,
                       warmup: int | None = None) -> dict[str, Any]:
    """The whole suite (or ``domains``) with the ``QUICK`` or ``FULL`` budget.

    ``steps`` (ancestral, DDIM), ``batch_size`` (sampling), ``memory_batches`` and ``train_batch``
    override the budget of every chosen domain; ``repeats`` and ``warmup`` that of every measurement.
    A domain whose code, preset or data is missing is skipped with the reason.
    """
    chosen = list(domains or DOMAINS)
    unknown = sorted(set(chosen) - set(DOMAINS))
    if unknown:
        raise ValueError(f"unknown perf domains {', '.join(unknown)}; choose from {', '.join(DOMAINS)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} needs a GPU and a CUDA build of torch; this one has none")
    budget = QUICK if quick else FULL
    changes = {"steps": steps, "batch_size": batch_size, "train_batch": train_batch,
               "memory_batches": None if memory_batches is None else tuple(memory_batches)}
    changes = {key: value for key, value in changes.items() if value is not None}
    budget = replace(budget, repeats=budget.repeats if repeats is None else repeats,
                     warmup=budget.warmup if warmup is None else warmup,
                     domains={name: replace(sizes, **changes) for name, sizes in budget.domains.items()})
    acceleration = Acceleration(device, bf16, compile_network)
    start = time.perf_counter()
    result: dict[str, Any] = {"suite": "perf", "quick": quick, "machine": machine_description(device),
                              "acceleration": acceleration.describe(), "budget": asdict(budget), "domains": {}}
    models: dict[str, LoadedModel] = {}
    for name in chosen:
        spec = DOMAINS[name]
        try:
            model, description = build_model(spec, device)
            model.domain.prior_batch(1, seeded_generator(0))  # loads the domain's data now: missing data skips it
        except (ImportError, ConfigError, QM9DataError) as error:
            log.warning("perf: skipping %s: %s", name, error)
            result["domains"][name] = {"skipped": f"{type(error).__name__}: {error}"}
            continue
        models[name] = model
        result["domains"][name] = {"model": description} | benchmark_domain(
            spec, model, budget.domains[name], budget, device, acceleration)
    if "molecules" in models:
        result["reward_throughput"] = molecule_reward_throughput(models["molecules"], budget.reward_samples,
                                                                 budget.repeats, budget.warmup)
    else:
        result["reward_throughput"] = {"skipped": "the molecules domain was not measured"}
    result["ratios"] = ratios(result["domains"])
    result["wall_s"] = time.perf_counter() - start
    return result


def _number(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_table(result: dict[str, Any]) -> str:
    """The run as Markdown tables (sampling, memory, training, reward throughput, ratios), as quoted in the README."""
    machine = result["machine"]
    measured = {name: d for name, d in result["domains"].items() if "skipped" not in d}
    lines = [f"`rgdm bench perf{' --quick' if result['quick'] else ''}`: {machine['platform']}, "
             f"{machine['cpus_available']} CPUs, torch {machine['torch']} with {machine['torch_threads']} threads, "
             f"device {machine['device']}; medians of {result['budget']['repeats']} repeats.", ""]
    skipped = [f"{name} ({d['skipped']})" for name, d in result["domains"].items() if "skipped" in d]
    if skipped:
        lines += [f"Skipped: {'; '.join(skipped)}.", ""]
    lines += ["| domain | sampler | steps | batch | samples/s | time over bare network | peak memory MB |",
              "|---|---|---|---|---|---|---|"]
    for name, d in measured.items():
        for s in d["sampling"]:
            lines.append(f"| {name} | {s['sampler']} | {s['steps']} | {s['batch_size']} | {s['samples_per_s']:.3g} "
                         f"| {s['overhead']:.2f} | {s['peak_memory_mb']:.1f} |")
    lines += ["", "| domain | batch sizes | peak memory MB | MB per sample | intercept MB | R² | linear "
              "| at most linear |",
              "|---|---|---|---|---|---|---|---|"]
    for name, d in measured.items():
        points, fit = d["memory"]["points"], d["memory"]["fit"]
        linear = {True: "yes", False: "no", None: "undetermined"}[fit["linear"]]
        sizes = ", ".join(str(p["batch_size"]) for p in points)
        peaks = ", ".join(format(p["peak_mb"], ".1f") for p in points)
        lines.append(f"| {name} | {sizes} | {peaks} | {_number(fit['slope_mb_per_sample'])} | "
                     f"{_number(fit['intercept_mb'], '.1f')} | {_number(fit['r2'], '.3f')} | {linear} | "
                     f"{'yes' if d['memory']['at_most_linear'] else 'no'} |")
    lines += ["", "| domain | training step | batch | ms, rewards excluded | ms, with the reward | reward |",
              "|---|---|---|---|---|---|"]
    for name, d in measured.items():
        training = d["training"]
        for step in training["rewards_excluded"]:
            excluded, included = training["rewards_excluded"][step], training["rewards_included"][step]
            lines.append(f"| {name} | {step} | {training['batch_size']} | {1000 * excluded['median_s']:.1f} | "
                         f"{1000 * included['median_s']:.1f} | {training['reward']} |")
    lines += ["", "| domain | greedy K = 8 values | s, rewards excluded | over unguided | s, with the reward "
              "| over unguided |", "|---|---|---|---|---|---|"]
    for name, d in measured.items():
        guided = d["guided_sampling"]
        lines.append(f"| {name} | none (unguided) | {guided['unguided_median_s']:.2f} | 1 | | |")
        for value, runs in guided["guided"].items():
            excluded, included = runs["rewards_excluded"], runs["rewards_included"]
            lines.append(f"| {name} | {value} | {excluded['median_s']:.2f} | {excluded['ratio']:.2f} | "
                         f"{included['median_s']:.2f} | {included['ratio']:.2f} |")
    lines += ["", "| domain | run | s, total | network | reward | rest | network time over unguided |",
              "|---|---|---|---|---|---|---|"]
    ratio_of = {"guided": "network_ratio", "guided_exact": "network_ratio_exact"}
    for name, d in measured.items():
        profile = d["guided_sampling"]["profile"]
        for run in ("unguided", *ratio_of):
            split = profile[run]
            share = f"{profile[ratio_of[run]]:.1f}" if run in ratio_of else ""
            lines.append(f"| {name} | {run} | {split['total_s']:.2f} | {split['network_s']:.2f} | "
                         f"{split['reward_s']:.2f} | {split['other_s']:.2f} | {share} |")
    lines += ["", "| domain | training step | ms, forward with grad | ms, forwards without grad | ms, rest |",
              "|---|---|---|---|---|"]
    for name, d in measured.items():
        steps = d["training"]["rewards_excluded"] | {"stepwise_k8 (exact values)": d["training"]["exact_values"]
                                                     ["stepwise_k8"]}
        for step, entry in steps.items():
            split = entry["profile_per_step"]
            lines.append(f"| {name} | {step} | {1000 * split['forward_with_grad_s']:.1f} | "
                         f"{1000 * split['forward_no_grad_s']:.1f} | {1000 * split['rest_s']:.1f} |")
    throughput = result["reward_throughput"]
    if "skipped" not in throughput:
        lines += ["", "| reward | workers | samples per call | calls/s |", "|---|---|---|---|"]
        lines += [f"| {throughput['reward']} | {run['workers']} | {run['samples_per_call']} | "
                  f"{run['calls_per_s']:.0f} |" for run in throughput["runs"]]
    names = list(measured)
    lines += ["", f"| ratio | target | {' | '.join(names)} |", "|---|---|" + "---|" * len(names)]
    for ratio, entry in result["ratios"].items():
        cells = [f"{entry['domains'][n]['value']:.2f} {'met' if entry['domains'][n]['met'] else 'missed'}"
                 + (f" (exact {entry['domains'][n]['exact']:.2f})" if "exact" in entry["domains"][n] else "")
                 for n in names]
        lines.append(f"| {ratio} | ≤ {entry['target']} | {' | '.join(cells)} |")
    return "\n".join(lines)


PROFILED_OPERATORS = 12


def operator_profile(domains: Sequence[str] | None = None, guided_steps: int = 10) -> dict[str, Any]:
    """``torch.profiler`` tables of the two slow paths per domain: a step-wise K = 8 training step (rewards
    excluded) and ``guided_steps`` DDIM steps of guided sampling (K = 8, the domain's reward), at the full
    budget's batch sizes. Each lists the operators with the most self CPU time and their share of it."""
    result: dict[str, Any] = {"suite": "profile", "machine": machine_description("cpu"), "domains": {}}
    for name in domains or DOMAINS:
        spec, sizes = DOMAINS[name], FULL.domains[name]
        model, _ = build_model(spec)
        algorithm = StepwiseExploration(STEPWISE_TEMPERATURE, candidates=CANDIDATES, value="exact")
        data = model.domain.dataset()
        scorer = make_scorer(RewardConfig(name=spec.reward), model.domain, RewardCounter())
        guided = GreedySelection(scorer, CANDIDATES, GUIDANCE_TEMPERATURE, value="exact")
        paths = {
            "stepwise_k8_step": partial(measure_training_step, model, data, algorithm, zero_cost_scorer(),
                                        sizes.train_batch, 1, 0, "cpu", Acceleration("cpu")),
            "guided_k8_sampling": sampling_call(model, sizes.batch_size, guided_steps, 1.0, "cpu", 0, guided),
        }
        result["domains"][name] = {}
        for path, run in paths.items():
            run()  # warm-up
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
                run()
            events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in events)
            result["domains"][name][path] = {
                "self_cpu_ms": total / 1000,
                "top_operators": [{"name": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1000,
                                   "share": e.self_cpu_time_total / total} for e in events[:PROFILED_OPERATORS]]}
    return result


def profile_table(result: dict[str, Any]) -> str:
    """The operator profiles as Markdown, one table per domain and path."""
    lines = [f"`rgdm bench profile`: {result['machine']['platform']}, torch {result['machine']['torch']}."]
    for name, paths in result["domains"].items():
        for path, entry in paths.items():
            lines += ["", f"**{name}, {path}** ({entry['self_cpu_ms']:.0f} ms of self CPU time)", "",
                      "| operator | calls | self CPU ms | share |", "|---|---|---|---|"]
            lines += [f"| `{op['name']}` | {op['calls']} | {op['self_cpu_ms']:.1f} | {100 * op['share']:.1f}% |"
                      for op in entry["top_operators"]]
    return "\n".join(lines)
