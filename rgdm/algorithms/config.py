"""The typed config of a training algorithm: its settings, their defaults and checks, and its constructor.

Every algorithm's config sits next to it (``DataPayoffConfig`` beside ``DataPayoff`` in ``rgdm_data.py``) and
subclasses ``AlgorithmConfig``: it declares ``name: Literal["NAME"]``, its own fields, and ``build``, which
makes the algorithm from plain values (never a domain: algorithms do not import domains). The registry maps
each name to its config class, and a plugin registers its own the same way::

    class MyConfig(AlgorithmConfig):
        name: Literal["my-estimator"] = "my-estimator"
        strength: float = Field(1.0, gt=0)

        def build(self, total_steps: int, num_targets: int) -> Algorithm:
            return MyEstimator(self.strength)

    register_algorithm("my-estimator", MyConfig)

The configs form a union discriminated on ``name`` through the registry: ``AlgorithmConfig(name="rgdm-data",
...)`` returns a ``DataPayoffConfig`` (as ``Path(...)`` returns a ``PosixPath``), and ``config_class`` looks
one up without building it. A plugin that registers a bare factory ``factory(config, total_steps, domain)``
instead is configured by ``AlgorithmConfig`` itself: the fields every algorithm shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from rgdm import registry

if TYPE_CHECKING:
    from rgdm.algorithms.base import Algorithm


def _even(candidates: int) -> int:
    if candidates % 2:
        raise ValueError(f"candidates must be even (antithetic pairs), got {candidates}")
    return candidates


#: ``K`` candidate transitions, drawn in antithetic pairs ``(z, -z)``.
Candidates = Annotated[int, Field(ge=2), AfterValidator(_even)]
#: The KL anchor's weight ``lambda`` on the plain denoising loss of unweighted data (0: none).
Anchor = Annotated[float, Field(ge=0, allow_inf_nan=False, description="weight of the KL anchor on unweighted "
                                                                       "data (0: none)")]
#: Gamma of input perturbation (DDPM-IP, docs/design.md §1.8) in a denoising loss.
InputPerturbation = Annotated[float, Field(
    ge=0, allow_inf_nan=False, description="gamma of input perturbation (DDPM-IP): the input is noised by "
    "eps + gamma xi while the target stays eps, against exposure bias (0: none; the paper's 0.1)")]
#: How many data rows are scored once (``None``: every row).
ScoredSize = Annotated[int | None, Field(ge=1, description="data rows scored once (null: all)")]


class AlgorithmConfig(BaseModel):
    """What every algorithm's config holds: its registered ``name``, the conditional ``targets`` the network
    learns, and the pay-off temperature; ``AlgorithmConfig(name=NAME, ...)`` is the config of that name."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a registered algorithm (rgdm list)")
    targets: list[int] | list[float] | None = Field(
        None, description="conditional targets the network learns, drawn uniformly: classes, or values of the "
                          "domain's target property (null: unconditional)")
    temperature: float = Field(0.3, gt=0, allow_inf_nan=False,
                               description="tau of the pay-off p_ref exp(r / tau) the run aims at: the pay-off "
                                           "estimators weight by it, and model.json records it for evaluate")

    def __new__(cls, *args: Any, **data: Any) -> AlgorithmConfig:
        """``AlgorithmConfig(name=NAME, ...)`` makes the config class registered as ``NAME``; copies and
        unpickling (no data) keep their class."""
        if cls is AlgorithmConfig and isinstance(data.get("name"), str):
            cls = config_class(data["name"])
        return super().__new__(cls)

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        """Names come from the algorithm registry, so a plugin's algorithm is as valid as rgdm's own."""
        return registry.algorithms.require(name)

    @field_validator("targets", mode="before")
    @classmethod
    def _numbers(cls, targets: Any) -> Any:
        """One clear message for a target that is no number (the union would name both list types)."""
        if isinstance(targets, list):
            for target in targets:
                if isinstance(target, bool) or not isinstance(target, int | float):
                    raise ValueError(f"a target is a class index or a property value (got {target!r})")
        return targets

    def build(self, total_steps: int, num_targets: int) -> Algorithm:
        """The algorithm, for a run of ``total_steps`` on a domain of ``num_targets`` targets (0: none)."""
        raise NotImplementedError(f"algorithm {self.name!r} is built by its registered factory, not by its config")


def config_class(name: str) -> type[AlgorithmConfig]:
    """The config class registered as ``name`` (``AlgorithmConfig`` for a plugin's bare factory); a
    ``RegistryError`` naming the registered algorithms for an unknown name."""
    registered = registry.algorithms.get(name)
    if isinstance(registered, type) and issubclass(registered, AlgorithmConfig):
        return registered
    return AlgorithmConfig
