"""kidscore_momiq: linear regression of a child's test score on the mother's IQ (Gelman & Hill)."""

import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from numpyro_ext.models.posteriordb._util import as_float


def model(N, kid_score, mom_iq):
    # Stan gives beta no prior: a flat (improper) density on R^2
    beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), (2,)))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    with numpyro.plate("N", N):
        numpyro.sample(
            "kid_score", dist.Normal(beta[..., 0] + beta[..., 1] * as_float(mom_iq), sigma), obs=as_float(kid_score)
        )
