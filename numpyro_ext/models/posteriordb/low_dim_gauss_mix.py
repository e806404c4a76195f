"""low_dim_gauss_mix: two-component normal mixture with ordered means, sum_n log_mix(theta, ...).

Follows ``posterior_database/models/stan/low_dim_gauss_mix.stan`` in ``stan-dev/posteriordb``:
``ordered[2] mu ~ normal(0, 2)``, ``sigma[k] > 0 ~ normal(0, 2)``, ``theta in (0, 1) ~
beta(5, 5)``; ``theta`` weighs the component of ``mu[1]``.  NumPyro's ``ordered_vector``
bijection is Stan's (``mu[2] = mu[1] + exp(u[2])``), so the unconstrained coordinates match.
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from numpyro_ext.models.posteriordb._util import as_float


def model(N, y):
    # mu: the ordered support with Stan's normal(0, 2) density on both coordinates
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.ordered_vector, (), (2,)))
    numpyro.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum(-1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
    theta = numpyro.sample("theta", dist.Beta(5.0, 5.0))
    mixing = dist.Categorical(probs=jnp.stack([theta, 1.0 - theta], axis=-1))
    with numpyro.plate("N", N):
        numpyro.sample("y", dist.MixtureSameFamily(mixing, dist.Normal(mu, sigma)), obs=as_float(y))
