"""Toy domain: Gaussian mixtures with exactly known pay-off distributions."""

from rgdm.domains.toy.domain import ToyDomain, energy_distance

__all__ = ["ToyDomain", "energy_distance"]
