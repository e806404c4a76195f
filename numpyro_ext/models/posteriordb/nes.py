"""nes: party identification on ideology, race, age group, education, gender and income (NES, Gelman & Hill).

Follows ``posterior_database/models/stan/nes.stan`` in ``stan-dev/posteriordb``: the
transformed data are computed once with numpy, the mean is ``x @ beta`` with ``x``'s
columns in the order of Stan's ``beta[1..9]``.
"""

import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from numpyro_ext.models.posteriordb._util import as_float


def model(N, partyid7, real_ideo, race_adj, educ1, gender, income, age_discrete):
    age = np.asarray(age_discrete)
    columns = [real_ideo, race_adj, age == 2, age == 3, age == 4, educ1, gender, income]
    x = np.stack([np.ones(N)] + [np.asarray(c, dtype=np.float64) for c in columns], axis=-1)
    x, y = as_float(x), as_float(partyid7)
    # Stan gives beta and sigma no prior: flat densities on R^9 and (0, inf)
    beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), (9,)))
    sigma = numpyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    with numpyro.plate("N", N):
        numpyro.sample("partyid7", dist.Normal(x @ beta, sigma), obs=y)
