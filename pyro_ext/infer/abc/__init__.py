"""Likelihood-free inference (ABC) in torch: simulator problems, likelihoods from simulations, and
the methods built on them (the twins of :mod:`numpyro_ext.infer.abc`).  See docs/abc.rst."""

from pyro_ext.infer.abc.avabc import AVABC, synthetic_likelihood_model
from pyro_ext.infer.abc.gpsabc import GPSABC
from pyro_ext.infer.abc.habc import HABC
from pyro_ext.infer.abc.likelihoods import (
    gaussian_kernel_log_likelihood,
    one_sided_log_likelihood,
    synthetic_log_likelihood,
)
from pyro_ext.infer.abc.omc import OMC
from pyro_ext.infer.abc.pope import POPE
from pyro_ext.infer.abc.problem import LikelihoodFreeProblem
from pyro_ext.infer.abc.rejection import RejectionABC
from pyro_ext.infer.abc.smc_abc import SMCABC
from pyro_ext.infer.abc.spsa import spsa_grad

__all__ = [
    "AVABC",
    "GPSABC",
    "HABC",
    "LikelihoodFreeProblem",
    "OMC",
    "POPE",
    "RejectionABC",
    "SMCABC",
    "gaussian_kernel_log_likelihood",
    "one_sided_log_likelihood",
    "spsa_grad",
    "synthetic_likelihood_model",
    "synthetic_log_likelihood",
]
