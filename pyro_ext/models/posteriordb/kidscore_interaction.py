"""kidscore_interaction: child's test score on mother's high school, IQ and their interaction (Gelman & Hill).

Follows ``posterior_database/models/stan/kidscore_interaction.stan`` in ``stan-dev/posteriordb``: the
transformed data are computed once with numpy, the mean is ``x @ beta`` with ``x``'s
columns in the order of Stan's ``beta[1..4]``.
"""

import numpy as np
import pyro
import pyro.distributions as dist
from pyro.distributions import constraints

from pyro_ext.models.posteriordb._util import Flat, as_float


def model(N, kid_score, mom_iq, mom_hs):
    mom_iq, mom_hs = np.asarray(mom_iq, dtype=np.float64), np.asarray(mom_hs, dtype=np.float64)
    x = np.stack([np.ones(N), mom_hs, mom_iq, mom_hs * mom_iq], axis=-1)
    x, y = as_float(x), as_float(kid_score)
    # Stan gives beta no prior: a flat (improper) density on R^4
    beta = pyro.sample("beta", Flat(constraints.real, (), (4,)))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))  # Stan: real<lower=0> sigma, cauchy(0, 2.5)
    with pyro.plate("N", N):
        pyro.sample("kid_score", dist.Normal(x @ beta, sigma), obs=y)
