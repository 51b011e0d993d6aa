"""Assembling the pieces a config names: domain, diffusion, network, reward scorer, algorithm."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgdm import registry
from rgdm.algorithms import Algorithm
from rgdm.diffusion import EpsModel, GaussianDiffusion, NoiseSchedule
from rgdm.diffusion.conditioning import conditioning_of, parent_weights
from rgdm.domains import Domain, build_domain
from rgdm.domains.base import SupportsTargets
from rgdm.engine.checkpoint import load_model
from rgdm.engine.config import AlgorithmConfig, DiffusionConfig, RewardConfig
from rgdm.engine.registry import resolve_model
from rgdm.io import CheckpointError
from rgdm.rewards import RewardCounter, Scorer


def make_diffusion(config: DiffusionConfig, domain: Domain) -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.create(config.schedule, config.timesteps),
                             project=domain.project, dof_offset=domain.dof_offset, parts=domain.parts)


def make_scorer(config: RewardConfig, domain: Domain, counter: RewardCounter) -> Scorer | None:
    """The reward named in the config: a domain or registered reward (``qed``, ``smarts:c1ccccc1``) or a plugin
    ``FILE.py:FUNC``."""
    if config.name is None:
        return None
    return domain.scorer(config.name, counter, floor=config.floor, workers=config.workers, timeout=config.timeout)


def make_algorithm(config: AlgorithmConfig, total_steps: int, domain: Domain) -> Algorithm:
    """The training objective a config names, built by its config (``config.build``) from the domain's number
    of targets; a plugin's bare factory (configured by ``AlgorithmConfig`` itself) gets the domain."""
    if type(config) is AlgorithmConfig:
        return registry.algorithms.get(config.name)(config, total_steps, domain)
    return config.build(total_steps, domain.num_targets if isinstance(domain, SupportsTargets) else 0)


@dataclass
class LoadedModel:
    """A trained model ready to sample: its domain, diffusion, network (EMA weights) and metadata.

    ``source`` is the shipped name or folder it was loaded from (``None`` if built in memory): where a
    fine-tune of it starts.
    """

    domain: Domain
    diffusion: GaussianDiffusion
    net: nn.Module
    meta: dict[str, Any]
    source: str | None = None

    @cached_property
    def eps_model(self) -> EpsModel:
        """The network bound to its diffusion; one instance, so its evaluation count accumulates."""
        return EpsModel(self.net, self.diffusion)


def load_trained(name_or_dir: str | Path, device: str = "cpu", tie_untrained_targets: bool = True) -> LoadedModel:
    """Load a finished run or shipped checkpoint by name or folder.

    A model never trained with conditions gets its target rows tied to the null token
    (``tie_targets_to_null``), so that sampling it towards a target (reward guidance) samples the
    unconditional model; ``tie_untrained_targets=False`` keeps the weights exactly as saved.
    """
    folder = resolve_model(name_or_dir)
    state, meta = load_model(folder)
    domain = build_domain(meta["domain"])
    diffusion = make_diffusion(DiffusionConfig.model_validate(meta["diffusion"]), domain)
    net = domain.build_network(meta["network"])
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"weights in {folder} do not fit the network described by its model.json: "
                              f"{error}") from None
    if tie_untrained_targets and not trained_with_conditions(meta):
        tie_targets_to_null(net)
    return LoadedModel(domain, diffusion, net.to(device).eval(), meta, str(name_or_dir))


def network_holding(domain: Domain, network: dict[str, Any], parent: LoadedModel) -> nn.Module:
    """A network built by ``domain`` (with ``network`` options) holding ``parent``'s weights.

    The weights must fit it: a domain option that changes the sample (a point-cloud molecule model
    as a bond model) is an error here, not a crash deep in training or sampling. The only weights a
    parent may lack are those of a condition's value path, which a property target adds: they start at
    zero, so the network answers every value as its parent answers no target. A parent's value path
    standardised for another quantity (a model of alpha asked for the gap) is left behind the same way.
    So are the hint inputs of self-conditioning (``network.self_condition``), which also start at zero.
    """
    net = domain.build_network(network)
    state, optional = parent_weights(net, parent.net.state_dict())
    expected = {k: v.shape for k, v in net.state_dict().items() if k not in optional or k in state}
    if expected != {k: v.shape for k, v in state.items()}:
        ours, theirs = domain.config(), parent.meta["domain"]
        differing = {"domain": sorted(k for k in ours if theirs.get(k) != ours[k]),
                     "network": sorted(k for k in network if parent.meta["network"].get(k) != network[k])}
        changed = [f"{part} options {', '.join(keys)}" for part, keys in differing.items() if keys]
        because = f" (its {' and '.join(changed)} differ)" if changed else ""
        raise CheckpointError(f"the weights of {parent.source or 'the parent model'} do not fit a {domain.name} "
                              f"network of these options{because}; use a model of the same kind, or pre-train one "
                              "for these options with rgdm train")
    net.load_state_dict(state, strict=False)
    return net


def retarget(model: LoadedModel, target_options: dict[str, Any]) -> LoadedModel:
    """``model`` on its domain with ``target_options`` changed (``{"target_property": "alpha"}``), its weights
    in the network that domain builds: an unconditional model asked for property values samples exactly as
    before (its new value path starts at zero), which classifier guidance and plain baselines need."""
    domain = build_domain(model.meta["domain"] | target_options)
    net = network_holding(domain, model.meta["network"], model).to(next(model.net.parameters()).device).eval()
    return LoadedModel(domain, model.diffusion, net, {**model.meta, "domain": domain.config()}, model.source)


def trained_with_conditions(meta: dict[str, Any]) -> bool:
    """Whether a model (its ``model.json``) was ever trained with a condition: targets or CFG reward classes.

    Models written before the ``conditional`` key existed are judged by their own targets and classes.
    """
    if "conditional" in meta:
        return bool(meta["conditional"])
    return meta.get("targets") is not None or meta.get("guidance_condition") is not None


def tie_targets_to_null(net: nn.Module) -> None:
    """Copy the null token's embedding onto every target row of the network's ``Conditioning``.

    A network trained only unconditionally never saw its target rows, which keep their random
    initialisation. Tied, it predicts its unconditional noise for any target: guidance towards a
    target samples the right model, and a conditional fine-tune's frozen reference is its parent
    for every target. (The fine-tuned network itself keeps the random rows: distinct rows learn
    their conditions far faster than rows that all start at the null token.)
    """
    conditioning = conditioning_of(net)
    if conditioning is not None:
        conditioning.tie_to_null()


def seeded_generator(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
