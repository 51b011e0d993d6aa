"""DDPO (Black et al., 2023): PPO-clip on the per-step Gaussian log-probabilities of the reverse process.

The reverse process is an MDP whose actions are the states ``x_s`` drawn from the Gaussian policy
``p_theta(x_s | x_t) = N(mu_theta(x_t, t), sigma^2 I)`` (DDIM with ``eta = 1``); the only reward is
``r(x_0)`` at the end. Each refresh samples a batch of trajectories from the current model, scores
their final states and turns the rewards into per-batch normalised advantages shared by every step
of a trajectory. The updates then run ``inner_epochs`` shuffled passes over the (trajectory, step)
pairs and minimise the clipped surrogate

    -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A),   ratio = p_theta(x_s | x_t) / p_old(x_s | x_t).

DDPO maximises the reward itself (no temperature, no KL term): compare it with RGDM at equal reward
calls, and watch sample quality, which nothing here protects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from rgdm.algorithms.base import Algorithm, Rows, TrainingContext
from rgdm.algorithms.config import AlgorithmConfig
from rgdm.diffusion.sampling import EpsModel, sample


def clipped_surrogate(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, clip: float
) -> torch.Tensor:
    """PPO's per-pair loss ``-min(ratio A, clip(ratio, 1 - clip, 1 + clip) A)``.

    Its gradient is zero for pairs whose ratio has already left the clip range in the direction
    their advantage pushes it (above ``1 + clip`` with ``A > 0``, below ``1 - clip`` with ``A < 0``).
    """
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    return -torch.minimum(unclipped, clipped)


@dataclass(frozen=True)
class PairRows(Rows):
    """A minibatch of DDPO's (trajectory, step) pairs, by their index ``p`` (step ``p // n``, trajectory ``p % n``)."""

    index: torch.Tensor

    def __len__(self) -> int:
        return len(self.index)

    def select(self, index: slice) -> PairRows:
        return PairRows(self.index[index])


class DDPO(Algorithm):
    """PPO-clip fine-tuning of the reverse process against a black-box reward.

    Args:
        batch_trajectories: trajectories sampled from the current model at each refresh; each costs
            one reward call.
        sample_steps: DDIM steps per trajectory, sampled with ``eta = 1`` so every step is a Gaussian
            policy. The last step to ``t = 0`` is deterministic and is not trained, so each trajectory
            gives ``sample_steps - 1`` (trajectory, step) pairs.
        inner_epochs: shuffled passes over the pairs of one batch before the next refresh.
        minibatch: (trajectory, step) pairs per optimizer update; each ``loss`` call is one update.
            An epoch's last minibatch is smaller when the pairs do not divide evenly.
        clip: the PPO clip range ``eps`` of the importance ratio.
        advantage_clip: advantages ``(r - mean) / (std + 1e-8)`` are clipped to ``±advantage_clip``.
    """

    name = "ddpo"

    def __init__(self, batch_trajectories: int = 256, sample_steps: int = 20, inner_epochs: int = 2,
                 minibatch: int = 256, clip: float = 0.2, advantage_clip: float = 5.0) -> None:
        if batch_trajectories < 2:
            raise ValueError(f"batch_trajectories must be at least 2 to normalise advantages, got {batch_trajectories}")
        if sample_steps < 2:
            raise ValueError(f"sample_steps must be at least 2 (the last step is deterministic), got {sample_steps}")
        if inner_epochs < 1 or minibatch < 1:
            raise ValueError(f"inner_epochs and minibatch must be positive, got {inner_epochs} and {minibatch}")
        if clip <= 0 or advantage_clip <= 0:
            raise ValueError(f"clip and advantage_clip must be positive, got {clip} and {advantage_clip}")
        self.batch_trajectories = batch_trajectories
        self.sample_steps = sample_steps
        self.inner_epochs = inner_epochs
        self.minibatch = minibatch
        self.clip = clip
        self.advantage_clip = advantage_clip
        self.states = torch.zeros(0)  # ((sample_steps + 1) * n, ...): x_T, ..., x_0, step-major
        self.timesteps = torch.zeros(0, dtype=torch.long)  # (sample_steps + 1,)
        self.steps = torch.zeros(0, dtype=torch.long)  # indices of the stochastic steps, (K,)
        self.old_log_probs = torch.zeros(0)  # (K * n,), pair p = (step p // n, trajectory p % n)
        self.advantages = torch.zeros(0)  # (n,)
        self.cond: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.order = torch.zeros(0, dtype=torch.long)  # inner_epochs shuffled passes, concatenated
        self.cursor = 0  # position in ``order``
        self.mean_reward = float("nan")

    @property
    def pairs(self) -> int:
        return self.steps.numel() * self.advantages.numel()

    def _next_minibatch(self) -> torch.Tensor:
        """The next pair indices; minibatches never straddle two epochs."""
        epoch_end = (self.cursor // self.pairs + 1) * self.pairs
        end = min(self.cursor + self.minibatch, epoch_end)
        index = self.order[self.cursor:end]
        self.cursor = end
        return index

    def _log_probs(self, model: EpsModel, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``log p_model(x_s | x_t)`` of the recorded transitions of pairs ``index``."""
        n = self.advantages.numel()
        k = self.steps[index // n].to(self.states.device)
        i = (index % n).to(self.states.device)
        xt, xs = self.states[k * n + i].to(device), self.states[(k + 1) * n + i].to(device)
        t, s = self.timesteps[k].to(device), self.timesteps[k + 1].to(device)
        cond = None if self.cond is None else self.cond[i].to(device)
        mask = None if self.mask is None else self.mask[i].to(device)
        diffusion = model.diffusion
        step = diffusion.reverse_step(xt, t, s, model(xt, t, cond, mask), eta=1.0)
        return diffusion.gaussian_log_prob(xs, step.mean, step.std, mask)

    def refresh(self, ctx: TrainingContext, generator: torch.Generator) -> None:
        """Sample trajectories from the current model, score them, and lay out the next updates."""
        n = self.batch_trajectories
        prior = ctx.prior(n, generator, ctx.draw_targets(n, generator))
        with torch.no_grad():
            out = sample(ctx.model, prior.x, steps=self.sample_steps, eta=1.0, cond=prior.cond,
                         mask=prior.mask, generator=generator, device=prior.x.device, record=True,
                         interrupt=ctx.interrupt)
            rewards = ctx.score(self.name, out.x0, prior.mask, prior.cond).float()
        self.states = torch.cat(out.trajectory.states)
        self.timesteps = torch.as_tensor(out.trajectory.timesteps, dtype=torch.long)
        self.cond, self.mask = prior.cond, prior.mask
        diffusion = ctx.model.diffusion
        probe = torch.zeros(1, 1, dtype=self.states.dtype)
        stds = [float(diffusion.reverse_step(probe, self.timesteps[j:j + 1], self.timesteps[j + 1:j + 2], probe,
                                             eta=1.0).std) for j in range(len(self.timesteps) - 1)]
        self.steps = torch.tensor([j for j, std in enumerate(stds) if std > 0], dtype=torch.long)
        self.mean_reward = float(rewards.mean())
        normalised = (rewards - rewards.mean()) / (rewards.std(correction=0) + 1e-8)
        self.advantages = normalised.clamp(-self.advantage_clip, self.advantage_clip)
        self.order = torch.cat([torch.randperm(self.pairs, generator=generator, device=generator.device).cpu()
                                for _ in range(self.inner_epochs)])
        # The old log-probs are computed on the first epoch's minibatches, exactly as the first
        # updates will recompute them: before any update the ratio is exactly 1.
        self.old_log_probs = torch.zeros(self.pairs, dtype=self.states.dtype)
        self.cursor = 0
        with torch.no_grad():
            while self.cursor < self.pairs:
                index = self._next_minibatch()
                self.old_log_probs[index] = self._log_probs(ctx.model, index, prior.x.device).cpu()
        self.cursor = 0

    def draw_rows(self, ctx: TrainingContext, step: int, generator: torch.Generator) -> PairRows:
        """The next minibatch of pairs, after a refresh when the last batch's epochs are done."""
        if self.cursor >= self.order.numel():
            self.refresh(ctx, generator)
        return PairRows(self._next_minibatch())

    def row_losses(self, ctx: TrainingContext, rows: PairRows) -> tuple[torch.Tensor, dict[str, float]]:
        """Each pair's clipped surrogate."""
        device = ctx.data.x.device
        log_probs = self._log_probs(ctx.model, rows.index, device)
        old = self.old_log_probs[rows.index].to(device)
        advantages = self.advantages[rows.index % self.advantages.numel()].to(device)
        surrogate = clipped_surrogate(log_probs, old.to(log_probs.dtype), advantages.to(log_probs.dtype), self.clip)
        with torch.no_grad():
            log_ratio = log_probs - old
            approx_kl = float(0.5 * (log_ratio**2).mean())
            clip_fraction = float(((log_ratio.exp() - 1).abs() > self.clip).float().mean())
        return surrogate, {"reward": self.mean_reward, "approx_kl": approx_kl, "clip_fraction": clip_fraction}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {
            "states": self.states, "timesteps": self.timesteps, "steps": self.steps,
            "old_log_probs": self.old_log_probs, "advantages": self.advantages, "order": self.order,
            "cursor": torch.tensor(self.cursor), "mean_reward": torch.tensor(self.mean_reward),
        }
        for field in ("cond", "mask"):
            value = getattr(self, field)
            if value is not None:
                tensors[field] = value
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.states, self.timesteps, self.steps = tensors["states"], tensors["timesteps"], tensors["steps"]
        self.old_log_probs, self.advantages = tensors["old_log_probs"], tensors["advantages"]
        self.order, self.cursor = tensors["order"], int(tensors["cursor"])
        self.mean_reward = float(tensors["mean_reward"])
        self.cond, self.mask = tensors.get("cond"), tensors.get("mask")


class DDPOConfig(AlgorithmConfig):
    """``ddpo``: the settings of ``DDPO`` (see its arguments). DDPO maximises the reward itself, so the shared
    ``temperature`` is only recorded, as the pay-off its result is measured against."""

    name: Literal["ddpo"] = "ddpo"
    trajectories: int = Field(256, ge=2, description="trajectories per refresh")
    sample_steps: int = Field(20, ge=2, description="DDIM steps (eta 1) per trajectory")
    inner_epochs: int = Field(2, ge=1, description="passes over each batch of trajectories")
    minibatch: int = Field(256, ge=1, description="(trajectory, step) pairs per update")
    clip: float = Field(0.2, gt=0, lt=1, description="importance-ratio clip")
    advantage_clip: float = Field(5.0, gt=0, allow_inf_nan=False, description="advantages are clipped to +-this")

    def build(self, total_steps: int, num_targets: int) -> DDPO:
        return DDPO(self.trajectories, self.sample_steps, self.inner_epochs, self.minibatch, self.clip,
                    self.advantage_clip)
