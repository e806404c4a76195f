"""hmm_example: a two-state hidden Markov model with unit-variance normal emissions.

Follows ``posterior_database/models/stan/hmm_example.stan``: the rows of the transition
matrix, ``theta1`` and ``theta2``, are simplexes with Stan's implicit flat prior (here
``Dirichlet(1, ..., 1)``, the same density up to a constant); the emission means ``mu`` are
``positive_ordered`` with normal(3, 1) and normal(10, 1) densities on ``mu[1]`` and ``mu[2]``
(no other prior).  The hidden states are summed out with the forward algorithm in log space,
as in the Stan program, and the result enters through ``pyro.factor``.

Pyro unconstrains ``positive_ordered`` as ``log(mu)`` ordered (as NumPyro does), where Stan
uses ``mu[1] = exp(u[1])``, ``mu[k] = mu[k-1] + exp(u[k])``: the density on ``mu`` is the
same, the unconstrained coordinates differ.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyro_ext.models.posteriordb._util import Flat, as_float


def forward_log_likelihood(log_theta, log_emission):
    """``log p(y)`` of an HMM: ``log_theta[j, k] = log P(z_t = k | z_{t-1} = j)``, ``log_emission[t, k]``.

    Stan's forward algorithm: no initial-state distribution (``gamma[1] = log_emission[1]``).
    """
    gamma = log_emission[0]
    for t in range(1, log_emission.shape[0]):
        gamma = torch.logsumexp(gamma[:, None] + log_theta, dim=0) + log_emission[t]
    return torch.logsumexp(gamma, dim=0)


def model(N, K, y):
    y = as_float(y)
    theta1 = pyro.sample("theta1", dist.Dirichlet(torch.ones(K)))
    theta2 = pyro.sample("theta2", dist.Dirichlet(torch.ones(K)))
    mu = pyro.sample("mu", Flat(constraints.positive_ordered_vector, (), (K,)))
    pyro.factor("mu_prior", dist.Normal(3.0, 1.0).log_prob(mu[0]) + dist.Normal(10.0, 1.0).log_prob(mu[1]))
    log_theta = torch.log(torch.stack([theta1, theta2]))
    log_emission = dist.Normal(mu, 1.0).log_prob(y[:, None])  # (N, K)
    pyro.factor("forward", forward_log_likelihood(log_theta, log_emission))
