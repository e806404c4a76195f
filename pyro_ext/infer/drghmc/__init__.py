"""Delayed-rejection generalized Hamiltonian Monte Carlo (DR-G-HMC) in torch, and its Pyro kernel.

Turok, Modi & Carpenter, "Sampling From Multiscale Densities With Delayed Rejection Generalized
Hamiltonian Monte Carlo", AISTATS 2025 (arXiv:2406.02741).  The torch twin of
:mod:`numpyro_ext.infer.drghmc`:

* :func:`init` / :func:`build_kernel` / :func:`stage_step` - the math core on a flat position vector
  (:mod:`pyro_ext.infer.drghmc.core`), built from :mod:`pyro_ext.infer.hmc_util`'s
  :func:`~pyro_ext.infer.hmc_util.partial_refresh` and DR-HMC's
  :func:`~pyro_ext.infer.drhmc.delayed_rejection`;
* :class:`DRGHMC` - a :class:`pyro.infer.mcmc.mcmc_kernel.MCMCKernel` for :class:`pyro.infer.MCMC` with the
  reference recipe's NUTS warmup (:mod:`pyro_ext.infer.drghmc.kernel`).
"""

from pyro_ext.infer.drghmc.core import DRGHMCInfo, DRGHMCState, build_kernel, init, stage_step
from pyro_ext.infer.drghmc.kernel import DRGHMC
from pyro_ext.infer.hmc_util import partial_refresh

__all__ = ["DRGHMC", "DRGHMCInfo", "DRGHMCState", "build_kernel", "init", "partial_refresh", "stage_step"]
