"""Domains plug into the engine through ``rgdm.domains.base.Domain``; ``build_domain`` finds them by name."""

from __future__ import annotations

from typing import Any

from rgdm.domains.base import Domain


def build_domain(options: dict[str, Any]) -> Domain:
    """The domain named by ``options['name']``, built from the rest of ``options``."""
    name = options.get("name")
    if name == "toy":
        from rgdm.domains.toy import ToyDomain

        return ToyDomain(options)
    if name == "molecules":
        from rgdm.domains.molecules.domain import MoleculeDomain

        return MoleculeDomain(options)
    if name == "shapes":
        from rgdm.domains.shapes.domain import ShapeDomain

        return ShapeDomain(options)
    raise ValueError(f"unknown domain {name!r}; available: toy, molecules, shapes")


__all__ = ["Domain", "build_domain"]
