"""arma11: ARMA(1, 1) time series, y[t] ~ normal(mu + phi y[t-1] + theta err[t-1], sigma).

Follows ``posterior_database/models/stan/arma11.stan`` in ``stan-dev/posteriordb``: the
prediction ``nu[1] = mu + phi * mu`` (``err[0] = 0``), ``err[t] = y[t] - nu[t]``, and
``err ~ normal(0, sigma)``, written here as ``y ~ normal(nu, sigma)`` (the same density:
``y`` is data).
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_ext.models.posteriordb._util import as_float


def model(T, y):
    y = as_float(y)
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    phi = pyro.sample("phi", dist.Normal(0.0, 2.0))
    theta = pyro.sample("theta", dist.Normal(0.0, 2.0))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))  # Stan: real<lower=0> sigma, cauchy(0, 2.5)

    nu = [mu + phi * mu]
    err = y[0] - nu[0]
    for t in range(1, T):
        nu.append(mu + phi * y[t - 1] + theta * err)
        err = y[t] - nu[t]
    with pyro.plate("T", T):
        pyro.sample("y", dist.Normal(torch.stack(nu), sigma), obs=y)
