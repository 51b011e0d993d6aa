"""Registries of domains, algorithms and rewards, by name, so that a separate package can add any of them.

Each registry holds named factories from three places, all through one machinery:

* rgdm's own, declared below as entry points (``BUILTIN_DOMAINS``, ``BUILTIN_ALGORITHMS``,
  ``BUILTIN_COMMANDS``), so that they resolve without installed package metadata (a source checkout on
  ``PYTHONPATH``);
* the Python entry points of installed packages in the groups ``rgdm.domains``, ``rgdm.algorithms``,
  ``rgdm.rewards`` and ``rgdm.commands``, e.g. in a plugin's ``pyproject.toml``::

      [project.entry-points."rgdm.domains"]
      proteins = "rgdm_proteins:ProteinDomain"

* ``register_domain``, ``register_algorithm``, ``register_reward`` and ``register_commands`` called in code.

Entry points are discovered on the first lookup and each is imported only when its name is first
looked up, so listing names imports nothing. A domain factory takes the domain's options
(``factory(options) -> Domain``); an algorithm is its config class (``rgdm.algorithms.config``), whose
``build`` makes it, or a bare factory ``(config, total_steps, domain) -> Algorithm``; a reward is a
``Reward`` spec, or a factory ``factory(domain) -> Reward`` of the domain instance it scores, for every
domain or for one (``RewardEntry``); a domain's commands are ``add_commands(subparsers)``, which adds its
own ``rgdm`` subcommands (the molecules' ``train-predictor``), so that ``rgdm.cli`` holds only the engine's.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from rgdm.rewards.base import Reward

log = logging.getLogger("rgdm.registry")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DOMAIN_GROUP = "rgdm.domains"
ALGORITHM_GROUP = "rgdm.algorithms"
REWARD_GROUP = "rgdm.rewards"
COMMAND_GROUP = "rgdm.commands"

#: rgdm's domains, as the entry points a plugin would declare.
BUILTIN_DOMAINS = {
    "toy": "rgdm.domains.toy:ToyDomain",
    "molecules": "rgdm.domains.molecules.domain:MoleculeDomain",
    "shapes": "rgdm.domains.shapes.domain:ShapeDomain",
}
#: rgdm's training algorithms, RGDM's estimators and the training peers, by their config classes.
BUILTIN_ALGORITHMS = {
    "pretrain": "rgdm.algorithms.pretrain:PretrainConfig",
    "rgdm-data": "rgdm.algorithms.rgdm_data:DataPayoffConfig",
    "rgdm-model": "rgdm.algorithms.rgdm_model:ModelPayoffConfig",
    "rgdm-stepwise": "rgdm.algorithms.rgdm_stepwise:StepwiseConfig",
    "cfg": "rgdm.algorithms.cfg:CFGConfig",
    "rwr": "rgdm.algorithms.rwr:RWRConfig",
    "ddpo": "rgdm.algorithms.ddpo:DDPOConfig",
}
#: The ``rgdm`` subcommands rgdm's domains add, by domain: light modules that import the domain only when
#: a command runs, since every ``rgdm`` invocation builds the parser.
BUILTIN_COMMANDS = {
    "molecules": "rgdm.domains.molecules.commands:add_commands",
}


class RegistryError(ValueError):
    """An unknown, clashing or broken registration; the message names what is available."""


@dataclass(frozen=True)
class RewardEntry:
    """A registered reward: a ``Reward`` spec or a factory of it from the domain instance it scores.

    ``domain`` limits it to the domain of that name; ``None`` offers it to every domain. A plugin may
    point its ``rgdm.rewards`` entry point at a ``RewardEntry`` to limit a reward to its domain.
    """

    reward: Reward | Callable[[Any], Reward]
    domain: str | None = None

    def build(self, domain: Any) -> Reward | None:
        """The reward for ``domain`` (an instance), or ``None`` where it is registered for another domain."""
        if self.domain is not None and self.domain != domain.name:
            return None
        if isinstance(self.reward, Reward):
            return self.reward
        reward = self.reward(domain)
        if not isinstance(reward, Reward):
            raise RegistryError(f"reward factory {self.reward!r} returned a {type(reward).__name__}, not a "
                                "rgdm.rewards.Reward")
        return reward


@dataclass
class _Entry:
    """One name: where it comes from and how to load it, loaded (and checked) once."""

    source: str
    load: Callable[[], Any]
    value: Any = None
    loaded: bool = False


@dataclass
class Registry(Generic[T]):
    """Named objects of one ``kind``: rgdm's ``builtins`` and the entry points of ``group``, discovered on
    first use, and registrations in code; ``check(name, obj)`` validates each and returns what is stored."""

    kind: str
    group: str
    check: Callable[[str, Any], T]
    builtins: Mapping[str, str] = field(default_factory=dict)
    _entries: dict[str, _Entry] | None = field(default=None, init=False, repr=False)

    def _table(self) -> dict[str, _Entry]:
        if self._entries is None:
            entries: dict[str, _Entry] = {}
            builtin = [EntryPoint(name, value, self.group) for name, value in self.builtins.items()]
            for point in [*builtin, *entry_points(group=self.group)]:
                source = f"{point.dist.name} {point.dist.version}" if point.dist is not None else "rgdm"
                if point.name in entries:
                    log.warning("%s %r of %s (%s) is ignored: %s already offers that name", self.kind,
                                point.name, source, point.value, entries[point.name].source)
                    continue
                entries[point.name] = _Entry(source, point.load)
            self._entries = entries
        return self._entries

    def names(self) -> list[str]:
        """Every registered name, sorted; imports nothing."""
        return sorted(self._table())

    def source(self, name: str) -> str:
        """Where ``name`` comes from: ``rgdm``, a plugin distribution and version, or a call in code."""
        return self._entry(name).source

    def require(self, name: str) -> str:
        """``name`` if it is registered (imports nothing), else a ``RegistryError`` naming those that are."""
        self._entry(name)
        return name

    def register(self, name: str, obj: Any) -> None:
        """Add ``obj`` under ``name``; a name can be registered once."""
        value = self.check(name, obj)
        table = self._table()
        if name in table:
            raise RegistryError(f"{self.kind} {name!r} is already registered ({table[name].source}); "
                                "choose another name")
        table[name] = _Entry(f"register_{self.kind}()", lambda: value)

    def register_or_decorate(self, name: str, obj: Any = None) -> Any:
        """``register(name, obj)`` and return ``obj``; without ``obj``, a decorator that registers what it
        decorates."""
        if obj is None:
            def decorate(target: Any) -> Any:
                self.register(name, target)
                return target

            return decorate
        self.register(name, obj)
        return obj

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing its entry point on first use."""
        entry = self._entry(name)
        if not entry.loaded:
            try:
                raw = entry.load()
            except Exception as error:
                raise RegistryError(f"{self.kind} {name!r} from {entry.source} failed to load: "
                                    f"{type(error).__name__}: {error}") from error
            entry.value, entry.loaded = self.check(name, raw), True
        return entry.value

    def _entry(self, name: str) -> _Entry:
        table = self._table()
        if name not in table:
            close = difflib.get_close_matches(str(name), list(table), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RegistryError(f"unknown {self.kind} {name!r}{hint}; available: {', '.join(sorted(table)) or 'none'}. "
                                f"Packages add one with an entry point in the group {self.group!r}, code with "
                                f"register_{self.kind}()")
        return table[name]


def _factory(kind: str) -> Callable[[str, Any], Callable[..., Any]]:
    def check(name: str, obj: Any) -> Callable[..., Any]:
        if not callable(obj):
            raise RegistryError(f"{kind} {name!r} must be a factory (a class or function), got a "
                                f"{type(obj).__name__}")
        return obj

    return check


def _reward_entry(name: str, obj: Any) -> RewardEntry:
    if ":" in name:
        raise RegistryError(f"reward name {name!r} may not hold ':', which separates a parametrised reward's "
                            "argument (NAME:ARG)")
    entry = obj if isinstance(obj, RewardEntry) else RewardEntry(obj)
    if not (isinstance(entry.reward, Reward) or callable(entry.reward)):
        raise RegistryError(f"reward {name!r} must be a rgdm.rewards.Reward, a factory of one from the domain, or "
                            f"a RewardEntry of either; got a {type(entry.reward).__name__}")
    return entry


domains: Registry[Callable[..., Any]] = Registry("domain", DOMAIN_GROUP, _factory("domain"), BUILTIN_DOMAINS)
algorithms: Registry[Callable[..., Any]] = Registry("algorithm", ALGORITHM_GROUP, _factory("algorithm"),
                                                    BUILTIN_ALGORITHMS)
rewards: Registry[RewardEntry] = Registry("reward", REWARD_GROUP, _reward_entry)
commands: Registry[Callable[..., Any]] = Registry("commands", COMMAND_GROUP, _factory("commands"), BUILTIN_COMMANDS)


def register_domain(name: str, factory: F | None = None) -> Any:
    """Register a domain: ``factory(options) -> Domain``, usually the domain's class.

    Called with the name alone it is a class decorator: ``@register_domain("proteins")``.
    """
    return domains.register_or_decorate(name, factory)


def register_algorithm(name: str, factory: F | None = None) -> Any:
    """Register a training algorithm: its config class (an ``AlgorithmConfig`` subclass with
    ``name: Literal[NAME]``, whose ``build`` makes the algorithm), or a bare ``factory(config, total_steps,
    domain) -> Algorithm`` configured by ``AlgorithmConfig`` itself. Called with the name alone it is a
    decorator."""
    return algorithms.register_or_decorate(name, factory)


def register_reward(name: str, reward: Reward | Callable[[Any], Reward], domain: str | None = None) -> None:
    """Register a reward under ``name``: a ``Reward`` spec, or ``factory(domain) -> Reward`` for rewards that
    need the domain instance (its data, its trained models). ``domain`` limits it to the domain of that name;
    by default every domain offers it. A domain's own reward of the same name takes precedence."""
    rewards.register(name, RewardEntry(reward, domain))


def rewards_for(domain: Any) -> dict[str, Reward]:
    """Every reward a domain instance offers: the registered ones that apply to it and its own
    (``domain.rewards()``), which take precedence on a shared name."""
    registered = {name: rewards.get(name).build(domain) for name in rewards.names()}
    return {name: reward for name, reward in registered.items() if reward is not None} | domain.rewards()


def register_commands(domain: str, add: F | None = None) -> Any:
    """Register the ``rgdm`` subcommands of the domain ``domain``: ``add(subparsers)`` adds each with
    ``subparsers.add_parser(...)`` and ``set_defaults(func=handler)``, ``handler(args)`` running it. Called
    with the name alone it is a decorator."""
    return commands.register_or_decorate(domain, add)
