"""kidscore_interaction_c: kidscore_interaction with centred predictors, flat priors (Gelman & Hill).

Follows ``posterior_database/models/stan/kidscore_interaction_c.stan`` in ``stan-dev/posteriordb``: the
transformed data are computed once with numpy, the mean is ``x @ beta`` with ``x``'s
columns in the order of Stan's ``beta[1..4]``.
"""

import numpy as np

from numpyro_ext.models.posteriordb._util import normal_regression


def model(N, kid_score, mom_hs, mom_iq):
    mom_hs, mom_iq = np.asarray(mom_hs, dtype=np.float64), np.asarray(mom_iq, dtype=np.float64)
    c_mom_hs, c_mom_iq = mom_hs - mom_hs.mean(), mom_iq - mom_iq.mean()
    x = np.stack([np.ones(N), c_mom_hs, c_mom_iq, c_mom_hs * c_mom_iq], axis=-1)
    # Stan gives beta and sigma no prior: flat densities on R^4 and (0, inf)
    normal_regression("kid_score", x, kid_score, N)
