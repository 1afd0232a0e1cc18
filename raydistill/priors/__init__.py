"""Priors: autoencoders between images and latents, optionally with a class-conditional denoiser; loaded by spec
string ("NAME" or "NAME:ARG")."""

from raydistill.priors import autoencoders as _autoencoders  # noqa: F401  (fills PRIORS)
from raydistill.priors import diffusion as _diffusion  # noqa: F401  (fills PRIORS)
from raydistill.priors.base import PRIORS, Prior, list_priors, load_prior, prior_traits

__all__ = ["PRIORS", "Prior", "list_priors", "load_prior", "prior_traits"]
