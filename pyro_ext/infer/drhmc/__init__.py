"""Delayed-rejection Hamiltonian Monte Carlo (DR-HMC) in torch, and its Pyro kernel.

Modi, Barnett & Carpenter, "Delayed rejection Hamiltonian Monte Carlo for sampling
multiscale distributions", Bayesian Analysis 18(4), 2023 (arXiv:2110.00610). The torch twin
of :mod:`numpyro_ext.infer.drhmc`, in three modules:

* :mod:`pyro_ext.infer.drhmc.core` - the math: :func:`delayed_rejection`, :func:`init`,
  :func:`build_kernel`, :func:`stage_schedule` on a flat position vector;
* :mod:`pyro_ext.infer.drhmc.kernel` - :class:`DRHMC`, a
  :class:`pyro.infer.mcmc.mcmc_kernel.MCMCKernel` for :class:`pyro.infer.MCMC`;
* :mod:`pyro_ext.infer.drhmc.warmup` - Pyro's NUTS warmup (which chooses the trajectory
  length) and step-size search, from Pyro's public API.
"""

from pyro_ext.infer.drhmc import core
from pyro_ext.infer.drhmc.core import *  # noqa: F403  (the math core's public names, core.__all__)
from pyro_ext.infer.drhmc.kernel import DRHMC

__all__ = ["DRHMC", *core.__all__]
