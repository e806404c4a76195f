"""kilpisjarvi: linear trend of Kilpisjärvi summer temperatures on year, with priors given as data.

Follows ``posterior_database/models/stan/kilpisjarvi.stan`` in ``stan-dev/posteriordb``:
``alpha ~ normal(pmualpha, psalpha)``, ``beta ~ normal(pmubeta, psbeta)``, a flat prior on
``sigma > 0`` and ``y ~ normal(alpha + beta * x, sigma)``.  ``xpred`` is unused by the model block.
"""

import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from numpyro_ext.models.posteriordb._util import as_float


def model(N, x, y, pmualpha, psalpha, pmubeta, psbeta):
    alpha = numpyro.sample("alpha", dist.Normal(as_float(pmualpha), as_float(psalpha)))
    beta = numpyro.sample("beta", dist.Normal(as_float(pmubeta), as_float(psbeta)))
    sigma = numpyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))  # no prior in Stan
    with numpyro.plate("N", N):
        numpyro.sample("y", dist.Normal(alpha + beta * as_float(x), sigma), obs=as_float(y))
