"""blr: Bayesian linear regression with normal priors (posteriordb's sblrc/sblri data)."""

import pyro
import pyro.distributions as dist

from pyro_ext.models.posteriordb._util import as_float


def model(N, D, X, y):
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([D]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(10.0))  # Stan: real<lower=0> sigma, normal(0, 10)
    with pyro.plate("N", N):
        pyro.sample("y", dist.Normal(as_float(X) @ beta, sigma), obs=as_float(y))
