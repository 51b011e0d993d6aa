"""rgdm: reward-guided diffusion models (Zhang & Xu, 2023) for black-box rewards."""

__version__ = "0.1.0"
