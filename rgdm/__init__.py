"""rgdm: reward-guided diffusion models (Zhang & Xu, 2023) for black-box rewards.

The public API: ``load``, ``finetune``, ``sample`` and ``evaluate`` (``rgdm.api``), the ``Domain`` and
``Reward`` a plugin implements, and the ``register_*`` functions of the registries. Each is imported on
first use, so that ``import rgdm`` (and every reward worker process) stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_EXPORTS = {
    "load": "rgdm.api",
    "finetune": "rgdm.api",
    "sample": "rgdm.api",
    "evaluate": "rgdm.api",
    "Samples": "rgdm.api",
    "Domain": "rgdm.domains.base",
    "Reward": "rgdm.rewards.base",
    "register_domain": "rgdm.registry",
    "register_algorithm": "rgdm.registry",
    "register_reward": "rgdm.registry",
    "register_commands": "rgdm.registry",
}

__all__ = [
    "Domain",
    "Reward",
    "Samples",
    "__version__",
    "evaluate",
    "finetune",
    "load",
    "register_algorithm",
    "register_commands",
    "register_domain",
    "register_reward",
    "sample",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rgdm' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
