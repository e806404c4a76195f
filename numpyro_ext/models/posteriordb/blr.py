"""blr: Bayesian linear regression with normal priors (posteriordb's sblrc/sblri data)."""

import numpyro
import numpyro.distributions as dist

from numpyro_ext.models.posteriordb._util import as_float


def model(N, D, X, y):
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([D]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))  # Stan: real<lower=0> sigma, normal(0, 10)
    with numpyro.plate("N", N):
        numpyro.sample("y", dist.Normal(as_float(X) @ beta, sigma), obs=as_float(y))
