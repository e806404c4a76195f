"""kilpisjarvi: linear trend of Kilpisjärvi summer temperatures on year, with priors given as data.

Follows ``posterior_database/models/stan/kilpisjarvi.stan`` in ``stan-dev/posteriordb``:
``alpha ~ normal(pmualpha, psalpha)``, ``beta ~ normal(pmubeta, psbeta)``, a flat prior on
``sigma > 0`` and ``y ~ normal(alpha + beta * x, sigma)``.  ``xpred`` is unused by the model block.
"""

import pyro
import pyro.distributions as dist
from pyro.distributions import constraints

from pyro_ext.models.posteriordb._util import Flat, as_float


def model(N, x, y, pmualpha, psalpha, pmubeta, psbeta):
    alpha = pyro.sample("alpha", dist.Normal(as_float(pmualpha), as_float(psalpha)))
    beta = pyro.sample("beta", dist.Normal(as_float(pmubeta), as_float(psbeta)))
    sigma = pyro.sample("sigma", Flat(constraints.positive, (), ()))  # no prior in Stan
    with pyro.plate("N", N):
        pyro.sample("y", dist.Normal(alpha + beta * as_float(x), sigma), obs=as_float(y))
