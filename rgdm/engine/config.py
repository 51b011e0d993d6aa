"""Run and sampling configuration: YAML files and ``section.key=value`` overrides, validated with pydantic.

Every section forbids unknown keys, so a typo is an error that names the key and the valid ones,
not a silently ignored setting. The ``algorithm`` section is the typed config of the algorithm it names
(``rgdm.algorithms.config``), with that algorithm's keys, defaults and checks. A key that only other
algorithms take (a command or an old run folder written for several) is dropped with a warning naming
them.

A config file builds on another with ``extends: NAME`` (a file next to it, or a shipped preset): its
sections merge key by key over those of the file it extends. A preset may also hold ``algorithms:
{NAME: {key: value}}``, the settings of each algorithm it may be run with (``--algorithm``): the chosen
algorithm's apply beneath its ``algorithm`` section, the others not at all.
"""

from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from rgdm import registry
from rgdm.algorithms.config import AlgorithmConfig, Candidates, config_class
from rgdm.algorithms.exploration import ValueEstimate
from rgdm.algorithms.pretrain import PretrainConfig
from rgdm.engine.precision import Precision

log = logging.getLogger("rgdm.config")

#: The shipped presets, ``rgdm/configs/NAME.yaml``: ``extends: NAME`` finds them by name.
PRESETS = Path(__file__).resolve().parent.parent / "configs"
M = TypeVar("M", bound=BaseModel)


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


class UsageError(ValueError):
    """A command-line mistake; printed as one line, exit code 2."""


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
    warmup_steps: int = Field(0, ge=0, description="raise the rate linearly to lr over these first steps (the "
                              "decay follows them): a fresh optimizer does not jolt a trained model it fine-tunes")
    condition_lr_scale: float = Field(1.0, gt=0, allow_inf_nan=False, description="the conditioning module's "
                                      "rate (target embeddings, value path) as a multiple of lr: a fine-tune's "
                                      "fresh conditioning path starts at the null token's and is all it must learn")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = 0
    device: str = "cpu"
    precision: Precision = Field("fp32", description="bf16: the trained network's passes under bf16 autocast "
                                 "(weights, optimizer and EMA stay fp32)")
    compile: bool = Field(False, description="torch.compile the trained network (dynamic shapes): faster steps "
                          "after a compile of a minute or two; sampling and the EMA stay eager")

    @model_validator(mode="after")
    def _warmup_within_the_run(self) -> TrainConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be fewer than steps ({self.steps})")
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
    network: dict[str, Any] = Field(default_factory=dict, description="with init: options on top of the "
                                    "parent's (only those its weights fit, e.g. self_condition)")
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    algorithm: SerializeAsAny[AlgorithmConfig] = Field(default_factory=PretrainConfig,
                                                      description="the config of the algorithm it names")
    reward: RewardConfig = Field(default_factory=RewardConfig)
    init: str | None = Field(None, description="checkpoint name or folder to start from")
    recipe: str | None = Field(None, description="the shipped preset this config is, unchanged (set by "
                                                 "load_config; model.json records it)")

    @field_validator("algorithm", mode="wrap")
    @classmethod
    def _algorithm(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> AlgorithmConfig:
        """A mapping is validated by the config class of the algorithm it names."""
        return parse_algorithm(value) if isinstance(value, dict) else handler(value)

    @model_validator(mode="after")
    def _domain_named(self) -> RunConfig:
        if "name" not in self.domain and self.init is None:
            raise ValueError("domain.name is required (e.g. domain.name=toy)")
        return self


def parse_algorithm(data: dict[str, Any]) -> AlgorithmConfig:
    """An ``algorithm`` section as the config of the algorithm it names (``pretrain`` if none). Keys that only
    other algorithms take are dropped with a warning; any other unknown key is an error."""
    data = {"name": "pretrain", **data}
    name = data["name"]
    if not isinstance(name, str) or name not in registry.algorithms.names():
        AlgorithmConfig.model_validate({"name": name})  # raises the name's own error, at its key
    config = config_class(name)
    foreign = {key: takers for key in data if key not in config.model_fields and (takers := _algorithms_taking(key))}
    if foreign:
        log.warning("algorithm %s ignores %s", name, "; ".join(f"{key} (a key of {', '.join(takers)})"
                                                              for key, takers in foreign.items()))
    return config.model_validate({key: value for key, value in data.items() if key not in foreign})


def _algorithms_taking(key: str) -> list[str]:
    """The registered algorithms whose config has ``key`` (a plugin that fails to load has none)."""
    takers = []
    for name in registry.algorithms.names():
        try:
            if key in config_class(name).model_fields:
                takers.append(name)
        except registry.RegistryError:
            continue
    return takers


#: How ``rgdm sample`` steers its sampler; ``rgdm.engine.generate.make_transition`` builds each.
Guidance = Literal["none", "select", "smc", "gradient", "regressor"]


class SampleConfig(Section):
    """The options of ``rgdm sample`` (``rgdm.api.sample``), saved in ``sample.json``: how many samples, their
    seed, target and sampler, and the guidance with its options. An option the chosen guidance does not
    take (a guidance start without selection, a guide without regressor guidance) is an error."""

    n: int = Field(1000, ge=1, description="number of samples")
    seed: int = 0
    target: int | float | str | None = Field(
        None, description="condition of a conditional model: a class index or name, a property value, or 'all' "
                          "(every class in turn, or values drawn from the data)")
    steps: int | None = Field(None, ge=1, description="DDIM steps (null: every step, DDPM)")
    eta: float = Field(1.0, ge=0, allow_inf_nan=False, description="DDIM eta (1: ancestral, 0: deterministic)")
    guidance: Guidance = "none"
    reward: str | None = Field(None, description="the reward that guides (select, smc, gradient) or is measured")
    temperature: float = Field(0.1, ge=0, allow_inf_nan=False,
                               description="tau of the pay-off p_ref exp(r / tau) (select at 0: the best "
                                           "candidate; regressor: scale 1 / tau)")
    candidates: Candidates = Field(8, description="select: candidates a step")
    particles: int = Field(16, ge=1, description="smc: particles per sample")
    value: ValueEstimate | None = Field(None, description="select, smc: candidates' Tweedie values from the noise "
                                                          "predicted at each (exact, the default) or at the "
                                                          "state it was drawn from (reuse)")
    guidance_start: int | None = Field(None, ge=0, description="select, smc: guide only the steps landing at "
                                                               "diffusion time <= this")
    radius: float = Field(0.5, gt=0, allow_inf_nan=False, description="gradient: exploration radius")
    guide: str | None = Field(None, description="regressor: the guide's folder (rgdm train-guide)")
    cfg_scale: float | None = Field(None, ge=0, allow_inf_nan=False,
                                    description="classifier-free guidance scale (models fine-tuned with cfg)")
    corrector_snr: float | None = Field(None, gt=0, allow_inf_nan=False,
                                        description="Langevin corrector steps after every step, at this "
                                                    "signal-to-noise ratio (predictor-corrector sampling)")
    corrector_steps: int | None = Field(None, ge=1, description="corrector steps after every step (with "
                                                                "corrector_snr; default 1)")
    corrector_start: int | None = Field(None, ge=1, description="with corrector_snr: correct only the steps "
                                                                "landing at diffusion time <= this")

    @model_validator(mode="after")
    def _guidance_takes_its_options(self) -> SampleConfig:
        """Options belong to the guidance that uses them; ``value`` defaults to ``exact`` where it applies."""
        guidance, candidate_guidance = self.guidance, ("select", "smc")
        if self.guidance_start is not None and guidance not in candidate_guidance:
            raise ValueError(f"a guidance start applies to greedy candidate selection (select) and smc, not to "
                             f"{guidance!r}")
        if self.value is not None and guidance not in candidate_guidance:
            raise ValueError(f"a value estimate applies to greedy candidate selection (select) and smc, not to "
                             f"{guidance!r}")
        if self.guide is not None and guidance != "regressor":
            raise ValueError(f"a guide steers guidance 'regressor', not {guidance!r}")
        if guidance == "regressor" and self.guide is None:
            raise ValueError("--guidance regressor and --guide DIR go together: guidance 'regressor' needs a guide "
                             "(trained with rgdm train-guide)")
        if guidance in ("select", "smc", "gradient") and self.reward is None:
            raise ValueError(f"guidance {guidance!r} needs a reward (--reward NAME or FILE.py:FUNC)")
        if self.temperature == 0 and guidance in ("smc", "gradient", "regressor"):
            raise ValueError(f"guidance {guidance!r} divides by the temperature; only select takes 0 (the best "
                             "candidate)")
        if (self.corrector_steps is not None or self.corrector_start is not None) and self.corrector_snr is None:
            raise ValueError("corrector steps and start need a corrector signal-to-noise ratio (corrector_snr)")
        if self.corrector_snr is not None and guidance == "smc":
            raise ValueError("smc moves its particles by their own transitions; a corrector applies to the other "
                             "samplers")
        if self.corrector_snr is not None and self.corrector_steps is None:
            self.corrector_steps = 1
        if guidance in candidate_guidance and self.value is None:
            self.value = "exact"
        return self


def _describe(error: dict[str, Any], model: type[BaseModel], data: dict[str, Any]) -> str:
    """One validation problem of ``data`` (validated as ``model``) as a line naming its key."""
    loc = error["loc"]
    where = ".".join(str(part) for part in loc)
    if error["type"] == "extra_forbidden":
        owner, known = _keys_at(loc[:-1], model, data)
        return _unknown_key(where, str(loc[-1]), known, owner)
    if error["type"] == "value_error":  # a check's own message says what it got
        message = str(error["ctx"]["error"])
        return f"{where}: {message}" if where else message
    return f"{where or 'config'}: {error['msg']} (got {error.get('input')!r})"


def _unknown_key(where: str, key: str, known: list[str], owner: str = "") -> str:
    """An unknown ``key`` at ``where``, the known key closest to it, and every known key."""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{where}: unknown key{owner}; {hint}valid keys: {', '.join(known)}"


def _keys_at(section: tuple[Any, ...], model: type[BaseModel], data: dict[str, Any]) -> tuple[str, list[str]]:
    """The valid keys of a section of ``model`` (for ``algorithm``, the named algorithm's) and whose they are."""
    if model is RunConfig and section == ("algorithm",):
        name = data["algorithm"].get("name", "pretrain")
        return f" of algorithm {name!r}", list(config_class(name).model_fields)
    fields: Any = model
    for part in section:
        fields = fields.model_fields[part].annotation
    return "", list(fields.model_fields)


def validated(model: type[M], data: dict[str, Any], what: str = "config") -> M:
    """``data`` as a ``model``, or a ``ConfigError`` that names every problem (``invalid WHAT: ...``)."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "\n  ".join(_describe(e, model, data) for e in error.errors())
        raise ConfigError(f"invalid {what}:\n  {problems}") from None


def parse_config(data: dict[str, Any]) -> RunConfig:
    """A run's settings (sections as read from YAML) as a ``RunConfig``; the chosen algorithm's entry of
    ``algorithms`` applies beneath its ``algorithm`` section."""
    return validated(RunConfig, _with_algorithm_settings(data))


def _with_algorithm_settings(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without ``algorithms``, its entry for the chosen algorithm merged beneath ``algorithm``."""
    if "algorithms" not in data:
        return data
    data = dict(data)
    settings = data.pop("algorithms")
    if not isinstance(settings, dict) or not all(isinstance(keys, dict) for keys in settings.values()):
        raise ConfigError("algorithms: must map algorithm names to their settings, e.g. {rgdm-model: {rounds: 3}}")
    problems = []
    for name, keys in settings.items():
        try:
            known = list(config_class(name).model_fields)
        except registry.RegistryError as error:
            problems.append(f"algorithms.{name}: {error}")
            continue
        problems += [_unknown_key(f"algorithms.{name}.{key}", key, known, f" of algorithm {name!r}")
                     for key in keys if key not in known]
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    section = data.get("algorithm", {})
    if isinstance(section, dict):  # anything else is the section's own error
        data["algorithm"] = settings.get(section.get("name", "pretrain"), {}) | section
    return data


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
    """Read a YAML config (or start from defaults), with the files it extends, and apply ``overrides`` in
    order. A shipped preset read without overrides names itself as the ``recipe``; any other file names none,
    whatever it says (a run's ``config.yaml`` copied and edited is no longer its recipe; ``Trainer.resume``
    reads a run's own record with ``parse_config``)."""
    data = read_config_file(Path(path)) if path is not None else {}
    data.pop("recipe", None)
    if path is not None and not overrides and Path(path).resolve().parent == PRESETS.resolve():
        data["recipe"] = Path(path).stem
    for override in overrides or []:
        apply_override(data, override)
    return parse_config(data)


def read_config_file(path: Path, extended_by: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The settings of a YAML config file, merged over those of the file it ``extends`` (recursively)."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = _parse_yaml(path.read_text())
    except (yaml.YAMLError, ValueError) as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, not a "
                          f"{type(loaded).__name__}")
    data: dict[str, Any] = loaded or {}
    if "extends" not in data:
        return data
    base = _extended_file(data.pop("extends"), path)
    chain = (*extended_by, path.resolve())
    if base.resolve() in chain:
        raise ConfigError(f"config file {str(path)!r} extends {str(base)!r}, which extends it in turn")
    return merge_settings(read_config_file(base, chain), data)


def _extended_file(name: Any, path: Path) -> Path:
    """The file that ``extends: NAME`` in ``path`` names: a file next to it (``NAME`` or ``NAME.yaml``), else a
    shipped preset."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"config file {str(path)!r}: extends takes a preset name or a file, got {name!r}")
    for candidate in (path.parent / name, path.parent / f"{name}.yaml", PRESETS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    presets = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise ConfigError(f"config file {str(path)!r} extends {name!r}, which is neither a file next to it nor a "
                      f"preset ({presets})")


def preset_or_path(name: str | Path) -> Path:
    """A config path, or the name of a shipped preset (``rgdm/configs/NAME.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESETS / f"{name}.yaml"
    if preset.is_file():
        return preset
    presets = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise ConfigError(f"config {str(name)!r} is neither a file nor a preset; presets: {presets}")


def merge_settings(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``own`` settings over ``base``: mappings merge key by key (recursively), anything else replaces."""
    merged = dict(base)
    for key, value in own.items():
        inherited = merged.get(key)
        mappings = isinstance(inherited, dict) and isinstance(value, dict)
        merged[key] = merge_settings(inherited, value) if mappings else value
    return merged


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
