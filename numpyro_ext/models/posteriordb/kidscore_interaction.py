"""kidscore_interaction: child's test score on mother's high school, IQ and their interaction (Gelman & Hill).

Follows ``posterior_database/models/stan/kidscore_interaction.stan`` in ``stan-dev/posteriordb``: the
transformed data are computed once with numpy, the mean is ``x @ beta`` with ``x``'s
columns in the order of Stan's ``beta[1..4]``.
"""

import numpy as np
import numpyro.distributions as dist

from numpyro_ext.models.posteriordb._util import normal_regression


def model(N, kid_score, mom_iq, mom_hs):
    mom_iq, mom_hs = np.asarray(mom_iq, dtype=np.float64), np.asarray(mom_hs, dtype=np.float64)
    x = np.stack([np.ones(N), mom_hs, mom_iq, mom_hs * mom_iq], axis=-1)
    # Stan gives beta no prior: a flat (improper) density on R^4; real<lower=0> sigma ~ cauchy(0, 2.5)
    normal_regression("kid_score", x, kid_score, N, sigma_prior=dist.HalfCauchy(2.5))
