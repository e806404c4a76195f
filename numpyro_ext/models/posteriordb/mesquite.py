"""mesquite: linear regression of mesquite bush weight on six measurements, flat priors (Gelman & Hill).

Follows ``posterior_database/models/stan/mesquite.stan`` in ``stan-dev/posteriordb``: the
transformed data are computed once with numpy, the mean is ``x @ beta`` with ``x``'s
columns in the order of Stan's ``beta[1..7]``.
"""

import numpy as np

from numpyro_ext.models.posteriordb._util import normal_regression


def model(N, weight, diam1, diam2, canopy_height, total_height, density, group):
    columns = [diam1, diam2, canopy_height, total_height, density, group]
    x = np.stack([np.ones(N)] + [np.asarray(c, dtype=np.float64) for c in columns], axis=-1)
    # Stan gives beta and sigma no prior: flat densities on R^7 and (0, inf)
    normal_regression("weight", x, weight, N)
