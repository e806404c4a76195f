"""arma11: ARMA(1, 1) time series, y[t] ~ normal(mu + phi y[t-1] + theta err[t-1], sigma).

Follows ``posterior_database/models/stan/arma11.stan`` in ``stan-dev/posteriordb``: the
prediction ``nu[1] = mu + phi * mu`` (``err[0] = 0``), ``err[t] = y[t] - nu[t]``, and
``err ~ normal(0, sigma)``, written here as ``y ~ normal(nu, sigma)`` (the same density:
``y`` is data).
"""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from numpyro_ext.models.posteriordb._util import as_float


def model(T, y):
    y = as_float(y)
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    phi = numpyro.sample("phi", dist.Normal(0.0, 2.0))
    theta = numpyro.sample("theta", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))  # Stan: real<lower=0> sigma, cauchy(0, 2.5)

    def step(err_prev, y_pair):
        y_prev, y_t = y_pair
        nu_t = mu + phi * y_prev + theta * err_prev
        return y_t - nu_t, nu_t

    nu1 = mu + phi * mu
    _, nu_rest = jax.lax.scan(step, y[0] - nu1, (y[:-1], y[1:]))
    nu = jnp.concatenate([jnp.reshape(nu1, (1,)), nu_rest])
    with numpyro.plate("T", T):
        numpyro.sample("y", dist.Normal(nu, sigma), obs=y)
