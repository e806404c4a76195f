"""gp_regr: Gaussian-process regression with an exponentiated-quadratic kernel, y ~ MVN(0, K + sigma I).

Follows ``posterior_database/models/stan/gp_regr.stan``: ``rho ~ gamma(25, 4)`` (shape,
rate), ``alpha ~ normal(0, 2)`` and ``sigma ~ normal(0, 1)`` on (0, inf) (half-normals, the
same density up to a constant), ``K[i, j] = alpha^2 exp(-(x[i] - x[j])^2 / (2 rho^2))``.
As in the Stan program, ``sigma`` itself (not ``sigma^2``) is added to the diagonal, and
``y`` is a multivariate normal through the Cholesky factor of that covariance.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_ext.models.posteriordb._util import as_float


def exp_quad_cov(x, alpha, rho):
    """Stan's ``gp_exp_quad_cov(x, alpha, rho)`` for 1-d inputs ``x``."""
    return alpha**2 * torch.exp(-0.5 * torch.square((x[:, None] - x[None, :]) / rho))


def model(N, x, y):
    x, y = as_float(x), as_float(y)
    rho = pyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = pyro.sample("alpha", dist.HalfNormal(2.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    cov = exp_quad_cov(x, alpha, rho) + sigma * torch.eye(N, dtype=x.dtype)
    pyro.sample(
        "y", dist.MultivariateNormal(torch.zeros(N, dtype=x.dtype), scale_tril=torch.linalg.cholesky(cov)), obs=y
    )
