"""kidscore_momiq: linear regression of a child's test score on the mother's IQ (Gelman & Hill)."""

import pyro
import pyro.distributions as dist
from pyro.distributions import constraints

from pyro_ext.models.posteriordb._util import Flat, as_float


def model(N, kid_score, mom_iq):
    # Stan gives beta no prior: a flat (improper) density on R^2
    beta = pyro.sample("beta", Flat(constraints.real, (), (2,)))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    with pyro.plate("N", N):
        pyro.sample(
            "kid_score", dist.Normal(beta[..., 0] + beta[..., 1] * as_float(mom_iq), sigma), obs=as_float(kid_score)
        )
