"""eight_schools_centered: the centred hierarchical model of the 8 schools (Rubin 1981)."""

import pyro
import pyro.distributions as dist

from pyro_ext.models.posteriordb._util import as_float


def model(J, y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))  # Stan: real<lower=0> tau ~ cauchy(0, 5)
    with pyro.plate("J", J):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, as_float(sigma)), obs=as_float(y))
