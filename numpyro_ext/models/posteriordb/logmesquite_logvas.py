"""logmesquite_logvas: log(weight) of mesquite bushes on log canopy volume, area, shape, height, density, group.

Follows ``posterior_database/models/stan/logmesquite_logvas.stan`` in ``stan-dev/posteriordb``: the
transformed data are computed once with numpy, the mean is ``x @ beta`` with ``x``'s
columns in the order of Stan's ``beta[1..7]``.
"""

import numpy as np

from numpyro_ext.models.posteriordb._util import normal_regression


def model(N, weight, diam1, diam2, canopy_height, total_height, density, group):
    diam1, diam2 = np.asarray(diam1, dtype=np.float64), np.asarray(diam2, dtype=np.float64)
    columns = [
        np.ones(N),
        np.log(diam1 * diam2 * np.asarray(canopy_height, dtype=np.float64)),  # log canopy volume
        np.log(diam1 * diam2),  # log canopy area
        np.log(diam1 / diam2),  # log canopy shape
        np.log(np.asarray(total_height, dtype=np.float64)),
        np.log(np.asarray(density, dtype=np.float64)),
        np.asarray(group, dtype=np.float64),
    ]
    x = np.stack(columns, axis=-1)
    # Stan gives beta and sigma no prior: flat densities on R^7 and (0, inf)
    normal_regression("log_weight", x, np.log(np.asarray(weight, dtype=np.float64)), N)
