"""eight_schools_centered: the centred hierarchical model of the 8 schools (Rubin 1981)."""

import numpyro
import numpyro.distributions as dist

from numpyro_ext.models.posteriordb._util import as_float


def model(J, y, sigma):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))  # Stan: real<lower=0> tau ~ cauchy(0, 5)
    with numpyro.plate("J", J):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, as_float(sigma)), obs=as_float(y))
