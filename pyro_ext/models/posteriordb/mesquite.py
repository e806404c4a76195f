"""mesquite: linear regression of mesquite bush weight on six measurements, flat priors (Gelman & Hill).

Follows ``posterior_database/models/stan/mesquite.stan`` in ``stan-dev/posteriordb``: the
transformed data are computed once with numpy, the mean is ``x @ beta`` with ``x``'s
columns in the order of Stan's ``beta[1..7]``.
"""

import numpy as np
import pyro
import pyro.distributions as dist
from pyro.distributions import constraints

from pyro_ext.models.posteriordb._util import Flat, as_float


def model(N, weight, diam1, diam2, canopy_height, total_height, density, group):
    columns = [diam1, diam2, canopy_height, total_height, density, group]
    x = np.stack([np.ones(N)] + [np.asarray(c, dtype=np.float64) for c in columns], axis=-1)
    x, y = as_float(x), as_float(weight)
    # Stan gives beta and sigma no prior: flat densities on R^7 and (0, inf)
    beta = pyro.sample("beta", Flat(constraints.real, (), (7,)))
    sigma = pyro.sample("sigma", Flat(constraints.positive, (), ()))
    with pyro.plate("N", N):
        pyro.sample("weight", dist.Normal(x @ beta, sigma), obs=y)
