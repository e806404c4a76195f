"""eight_schools_noncentered: the non-centred 8 schools model, theta = mu + tau * theta_trans."""

import pyro
import pyro.distributions as dist

from pyro_ext.models.posteriordb._util import as_float


def model(J, y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("J", J):
        theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", theta_trans * tau + mu)
        pyro.sample("y", dist.Normal(theta, as_float(sigma)), obs=as_float(y))
