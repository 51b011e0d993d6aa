"""Domains plug into the engine through ``rgdm.domains.base.Domain``; ``build_domain`` finds them by name
in the domain registry (``rgdm.registry``: rgdm's own, plugins' entry points, ``register_domain``)."""

from __future__ import annotations

from typing import Any

from rgdm import registry
from rgdm.domains.base import Domain


def build_domain(options: dict[str, Any]) -> Domain:
    """The domain named by ``options['name']``, built by its registered factory from all of ``options``."""
    name = options.get("name")
    if name is None:
        raise ValueError(f"domain options need a name; available: {', '.join(registry.domains.names())}")
    return registry.domains.get(name)(options)


__all__ = ["Domain", "build_domain"]
