"""Run configuration: YAML files and ``section.key=value`` overrides, validated with pydantic.

Every section forbids unknown keys, so a typo is an error that names the key and the valid ones,
not a silently ignored setting.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rgdm import registry


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; this loader reads it as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _parse_yaml(text: str) -> object:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: builds plain data only


class ConfigError(ValueError):
    """An invalid configuration; the message names each problem and how to fix it."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiffusionConfig(Section):
    schedule: Literal["linear", "cosine", "polynomial"] = "cosine"
    timesteps: int = Field(1000, ge=2, le=100_000)


class TrainConfig(Section):
    steps: int = Field(5000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0, le=1)
    lr_decay: Literal["none", "cosine"] = "none"
    ema_decay: float = Field(0.999, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = 0
    device: str = "cpu"


class AlgorithmConfig(Section):
    """The training objective and its hyper-parameters (each used by the algorithms noted)."""

    name: str = Field("pretrain", description="a registered algorithm (rgdm list)")
    temperature: float = Field(0.3, gt=0, allow_inf_nan=False)
    anchor: float = Field(0.0, ge=0)
    targets: list[int] | None = None
    scored_size: int | None = Field(None, ge=1, description="rgdm-data, cfg: data rows scored")
    rounds: int = Field(4, ge=1, description="rgdm-model, rwr: rounds (rgdm-model tempers across them)")
    buffer_size: int = Field(4096, ge=1, description="rgdm-model, rwr: samples per round")
    sample_steps: int | None = Field(None, ge=1, description="rgdm-model, rwr, ddpo: sampler steps (ddpo: 20)")
    candidates: int = Field(8, ge=2, description="rgdm-stepwise: K")
    radius: float = Field(0.5, gt=0, allow_inf_nan=False, description="rgdm-stepwise: exploration radius rho")
    explore_start: int | None = Field(None, ge=0, description="rgdm-stepwise: explore only transitions "
                                      "landing at t <= this (the rest cost no reward calls; default: all)")
    center: Literal["posterior", "reference"] = "reference"
    value_model: Literal["frozen", "ema"] = "frozen"
    value: Literal["reuse", "exact"] = Field("exact", description="rgdm-stepwise: candidates' Tweedie estimates "
                                             "from the value model's noise prediction at x_t (reuse, no "
                                             "evaluation) or at each candidate (exact, K evaluations)")
    num_classes: int | None = Field(None, ge=1, description="cfg: reward classes (default: the domain's)")
    uncond_prob: float = Field(0.1, ge=0, lt=1, description="cfg: label dropout for guidance")
    trajectories: int = Field(256, ge=2, description="ddpo: trajectories per refresh")
    inner_epochs: int = Field(2, ge=1, description="ddpo: passes over each batch of trajectories")
    minibatch: int = Field(256, ge=1, description="ddpo: (trajectory, step) pairs per update")
    clip: float = Field(0.2, gt=0, lt=1, description="ddpo: importance-ratio clip")

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        """Names come from the algorithm registry, so a plugin's algorithm is as valid as rgdm's own."""
        return registry.algorithms.require(name)

    @model_validator(mode="after")
    def _even_candidates(self) -> AlgorithmConfig:
        if self.candidates % 2:
            raise ValueError(f"candidates must be even (antithetic pairs), got {self.candidates}")
        return self


class RewardConfig(Section):
    name: str | None = Field(None, description="a domain reward name, FILE.py:FUNC or module:FUNC")
    floor: float = Field(0.0, allow_inf_nan=False, description="value of samples the reward fails on")
    workers: int = Field(0, ge=0, description="worker processes (0: in the training process)")
    timeout: float | None = Field(None, gt=0, description="seconds per call before its samples are invalid")
    budget: int | None = Field(None, ge=1, description="reward calls allowed; training stops and saves there")


class RunConfig(Section):
    domain: dict[str, Any] = Field(default_factory=lambda: {"name": "toy"},
                                   description="with init: options that change the parent's (e.g. a target)")
    network: dict[str, Any] = Field(default_factory=dict)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    init: str | None = Field(None, description="checkpoint name or folder to start from")

    @model_validator(mode="after")
    def _domain_named(self) -> RunConfig:
        if "name" not in self.domain and self.init is None:
            raise ValueError("domain.name is required (e.g. domain.name=toy)")
        return self


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        section: Any = model
        for part in error["loc"][:-1]:
            section = section.model_fields[part].annotation
        known = list(getattr(section, "model_fields", {}))
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{where}: unknown key; {hint}valid keys: {', '.join(known)}"
    return f"{where}: {error['msg']} (got {error.get('input')!r})"


def parse_config(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        problems = "\n  ".join(_describe(e, RunConfig) for e in error.errors())
        raise ConfigError(f"invalid config:\n  {problems}") from None


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``section.key=value`` in nested ``data``; the value is parsed as YAML (``1e-3``, ``[1, 2]``)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like section.key=value, e.g. train.steps=500")
    try:
        value = _parse_yaml(raw) if raw else None
    except (yaml.YAMLError, ValueError) as error:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({error})") from None
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults) and apply ``overrides`` in order."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = _parse_yaml(path.read_text())
        except (yaml.YAMLError, ValueError) as error:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, not a "
                              f"{type(loaded).__name__}")
        data = loaded or {}
    for override in overrides or []:
        apply_override(data, override)
    return parse_config(data)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
