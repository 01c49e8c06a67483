"""The DALL-E 2 latent diffusion prior used by CLIPure-Diff: our implementation, loading
dalle2-pytorch 1.15.6 checkpoints strictly."""

from .catalog import KNOWN_PRIORS, cached_prior, prior_for, priors_dir
from .conditioning import TextCondition, null_condition
from .config import PriorConfig
from .loading import LAION_VIT_L14, load_prior
from .model import LatentPrior

__all__ = [
    "KNOWN_PRIORS",
    "LAION_VIT_L14",
    "LatentPrior",
    "PriorConfig",
    "TextCondition",
    "cached_prior",
    "load_prior",
    "null_condition",
    "prior_for",
    "priors_dir",
]
