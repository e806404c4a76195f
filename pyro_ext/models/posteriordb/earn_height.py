"""earn_height: linear regression of earnings on height, flat priors (Gelman & Hill, earnings data).

Follows ``posterior_database/models/stan/earn_height.stan`` in ``stan-dev/posteriordb``: the
transformed data are computed once with numpy, the mean is ``x @ beta`` with ``x``'s
columns in the order of Stan's ``beta[1..2]``.
"""

import numpy as np
import pyro
import pyro.distributions as dist
from pyro.distributions import constraints

from pyro_ext.models.posteriordb._util import Flat, as_float


def model(N, earn, height):
    x = np.stack([np.ones(N), np.asarray(height, dtype=np.float64)], axis=-1)
    x, y = as_float(x), as_float(earn)
    # Stan gives beta and sigma no prior: flat densities on R^2 and (0, inf)
    beta = pyro.sample("beta", Flat(constraints.real, (), (2,)))
    sigma = pyro.sample("sigma", Flat(constraints.positive, (), ()))
    with pyro.plate("N", N):
        pyro.sample("earn", dist.Normal(x @ beta, sigma), obs=y)
