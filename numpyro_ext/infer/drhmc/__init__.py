"""Delayed-rejection Hamiltonian Monte Carlo (DR-HMC) in JAX, and its NumPyro kernel.

Modi, Barnett & Carpenter, "Delayed rejection Hamiltonian Monte Carlo for sampling
multiscale distributions", Bayesian Analysis 18(4), 2023 (arXiv:2110.00610).

Three layers, each usable alone:

* :func:`delayed_rejection` - the meta-algorithm (Tierney & Mira 1999; Green & Mira 2001)
  for any sequence of deterministic, volume-preserving involutions on an extended state;
* :func:`init` / :func:`build_kernel` - DR-HMC's pure BlackJAX-style math core on a flat
  position vector (both in :mod:`numpyro_ext.infer.drhmc.core`, with the acceptance probability);
* :class:`DRHMC` - a :class:`numpyro.infer.mcmc.MCMCKernel` for ``numpyro.infer.MCMC``,
  with NumPyro's step-size/mass-matrix warmup and (when no trajectory length is given) a
  NUTS warmup that picks the trajectory length (:mod:`numpyro_ext.infer.drhmc.kernel`).
"""

from numpyro_ext.infer.drhmc.core import (
    DelayedRejectionInfo,
    DRHMCInfo,
    DRHMCState,
    StageAuxiliary,
    build_kernel,
    delayed_rejection,
    init,
    local_step_size_law,
    local_step_stages,
    stage_schedule,
)
from numpyro_ext.infer.drhmc.kernel import DRHMC, DRHMCKernelState
from numpyro_ext.infer.hmc_util import IntegratorState

__all__ = [
    "DRHMC",
    "DRHMCInfo",
    "DRHMCKernelState",
    "DRHMCState",
    "DelayedRejectionInfo",
    "IntegratorState",
    "StageAuxiliary",
    "build_kernel",
    "delayed_rejection",
    "init",
    "local_step_size_law",
    "local_step_stages",
    "stage_schedule",
]
