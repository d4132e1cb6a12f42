"""SeedPolicy: Diffusion Policy conditioned through SEGA, a recurrent latent state
(:mod:`robopolicy.nn.sega`). Importing registers ``"seed"``."""

from robopolicy.policies.seed.config import SeedConfig
from robopolicy.policies.seed.model import SeedPolicy

__all__ = ["SeedConfig", "SeedPolicy"]
