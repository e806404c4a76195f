"""hmm_drive_0: a two-state HMM of basketball drives with exponential emissions (1/speed, hoop distance).

Follows ``posterior_database/models/stan/hmm_drive_0.stan``: the transition rows ``theta1``
and ``theta2`` are simplexes with ``dirichlet(alpha[k])`` priors; the emission rates ``phi``
(of ``u``) and ``lambda`` (of ``v``) are ``positive_ordered`` (which stops label switching)
with normal(0, 1) and normal(3, 1) densities on their first and second entries.  The hidden
states are summed out with Stan's forward algorithm in log space (``pyro.factor``).

Pyro unconstrains ``positive_ordered`` as ``log(x)`` ordered (as NumPyro does), where Stan
uses ``x[1] = exp(u[1])``, ``x[k] = x[k-1] + exp(u[k])``: same density on ``x``, different
unconstrained coordinates.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyro_ext.models.posteriordb._util import Flat, as_float
from pyro_ext.models.posteriordb.hmm_example import forward_log_likelihood


def drive_priors(K, alpha, rates_support):
    """The drive HMMs' priors: sites ``theta1``, ``theta2`` (Dirichlet rows), ``phi``, ``lambda``.

    ``phi`` and ``lambda`` are flat on ``rates_support`` (an ordered vector of length ``K``)
    with normal(0, 1) and normal(3, 1) factors on their first and second entries.  Returns
    ``(log_theta, phi, lam)``, ``log_theta`` the log transition matrix (rows ``theta1``, ``theta2``).
    """
    theta1 = pyro.sample("theta1", dist.Dirichlet(alpha[0]))
    theta2 = pyro.sample("theta2", dist.Dirichlet(alpha[1]))
    phi = pyro.sample("phi", Flat(rates_support, (), (K,)))
    lam = pyro.sample("lambda", Flat(rates_support, (), (K,)))
    first, second = dist.Normal(0.0, 1.0), dist.Normal(3.0, 1.0)
    pyro.factor("phi_prior", first.log_prob(phi[0]) + second.log_prob(phi[1]))
    pyro.factor("lambda_prior", first.log_prob(lam[0]) + second.log_prob(lam[1]))
    return torch.log(torch.stack([theta1, theta2])), phi, lam


def model(K, N, u, v, alpha):
    u, v, alpha = as_float(u), as_float(v), as_float(alpha)
    log_theta, phi, lam = drive_priors(K, alpha, constraints.positive_ordered_vector)
    log_emission = dist.Exponential(phi).log_prob(u[:, None]) + dist.Exponential(lam).log_prob(v[:, None])
    pyro.factor("forward", forward_log_likelihood(log_theta, log_emission))
