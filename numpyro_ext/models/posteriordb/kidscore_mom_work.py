"""kidscore_mom_work: child's test score on indicators of the mother's work category 2-4, flat priors.

Follows ``posterior_database/models/stan/kidscore_mom_work.stan`` in ``stan-dev/posteriordb``: the
transformed data are computed once with numpy, the mean is ``x @ beta`` with ``x``'s
columns in the order of Stan's ``beta[1..4]``.
"""

import numpy as np

from numpyro_ext.models.posteriordb._util import normal_regression


def model(N, kid_score, mom_work):
    mom_work = np.asarray(mom_work)
    x = np.stack([np.ones(N), mom_work == 2, mom_work == 3, mom_work == 4], axis=-1)
    # Stan gives beta and sigma no prior: flat densities on R^4 and (0, inf)
    normal_regression("kid_score", x, kid_score, N)
