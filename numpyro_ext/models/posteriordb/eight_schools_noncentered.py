"""eight_schools_noncentered: the non-centred 8 schools model, theta = mu + tau * theta_trans."""

import numpyro
import numpyro.distributions as dist

from numpyro_ext.models.posteriordb._util import as_float


def model(J, y, sigma):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", J):
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", theta_trans * tau + mu)
        numpyro.sample("y", dist.Normal(theta, as_float(sigma)), obs=as_float(y))
