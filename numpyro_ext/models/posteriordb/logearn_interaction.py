"""logearn_interaction: regression of log(earnings) on height, sex and their interaction, flat priors.

Follows ``posterior_database/models/stan/logearn_interaction.stan`` in ``stan-dev/posteriordb``: the
transformed data are computed once with numpy, the mean is ``x @ beta`` with ``x``'s
columns in the order of Stan's ``beta[1..4]``.
"""

import numpy as np

from numpyro_ext.models.posteriordb._util import normal_regression


def model(N, earn, height, male):
    height, male = np.asarray(height, dtype=np.float64), np.asarray(male, dtype=np.float64)
    x = np.stack([np.ones(N), height, male, height * male], axis=-1)
    # Stan gives beta and sigma no prior: flat densities on R^4 and (0, inf)
    normal_regression("log_earn", x, np.log(np.asarray(earn, dtype=np.float64)), N)
