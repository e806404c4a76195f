"""log10earn_height: linear regression of log10(earnings) on height, flat priors (Gelman & Hill).

Follows ``posterior_database/models/stan/log10earn_height.stan`` in ``stan-dev/posteriordb``: the
transformed data are computed once with numpy, the mean is ``x @ beta`` with ``x``'s
columns in the order of Stan's ``beta[1..2]``.
"""

import numpy as np

from pyro_ext.models.posteriordb._util import normal_regression


def model(N, earn, height):
    x = np.stack([np.ones(N), np.asarray(height, dtype=np.float64)], axis=-1)
    # Stan gives beta and sigma no prior: flat densities on R^2 and (0, inf)
    normal_regression("log10_earn", x, np.log10(np.asarray(earn, dtype=np.float64)), N)
