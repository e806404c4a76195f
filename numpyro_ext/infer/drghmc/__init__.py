"""Delayed-rejection generalized Hamiltonian Monte Carlo (DR-G-HMC) in JAX, and its NumPyro kernel.

Turok, Modi & Carpenter, "Sampling From Multiscale Densities With Delayed Rejection Generalized
Hamiltonian Monte Carlo", AISTATS 2025 (arXiv:2406.02741).

* :func:`init` / :func:`build_kernel` - the pure BlackJAX-style core on a flat position vector,
  built from :mod:`numpyro_ext.infer.hmc_util`'s leapfrog involution and DR-HMC's
  :func:`~numpyro_ext.infer.drhmc.delayed_rejection` (:mod:`numpyro_ext.infer.drghmc.core`, whose
  docstring records what the reference code does);
* :class:`DRGHMC` - a :class:`numpyro.infer.mcmc.MCMCKernel` for ``numpyro.infer.MCMC`` with the
  reference recipe's NUTS warmup (:mod:`numpyro_ext.infer.drghmc.kernel`).
"""

from numpyro_ext.infer.drghmc.core import (
    DRGHMCInfo,
    DRGHMCState,
    build_kernel,
    init,
    partial_refresh,
    stage_step,
)
from numpyro_ext.infer.drghmc.kernel import DRGHMC, DRGHMCKernelState

__all__ = [
    "DRGHMC",
    "DRGHMCInfo",
    "DRGHMCKernelState",
    "DRGHMCState",
    "build_kernel",
    "init",
    "partial_refresh",
    "stage_step",
]
