"""Likelihood-free inference (ABC) in JAX: simulator problems, likelihoods from simulations, and
the methods built on them.  See docs/abc.rst."""

from numpyro_ext.infer.abc.avabc import AVABC, synthetic_likelihood_model
from numpyro_ext.infer.abc.gpsabc import GPSABC
from numpyro_ext.infer.abc.habc import HABC
from numpyro_ext.infer.abc.likelihoods import (
    gaussian_kernel_log_likelihood,
    one_sided_log_likelihood,
    synthetic_log_likelihood,
)
from numpyro_ext.infer.abc.omc import OMC
from numpyro_ext.infer.abc.pope import POPE
from numpyro_ext.infer.abc.problem import LikelihoodFreeProblem
from numpyro_ext.infer.abc.rejection import RejectionABC
from numpyro_ext.infer.abc.smc_abc import SMCABC
from numpyro_ext.infer.abc.spsa import spsa_grad

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
