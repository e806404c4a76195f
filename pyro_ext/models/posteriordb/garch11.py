"""garch11: GARCH(1,1) volatility model, with beta1 constrained to (0, 1 - alpha1).

Pyro's HMC/NUTS fix each site's bijection at the prototype trace, so a support that
depends on another latent (Stan's ``real<lower=0, upper=(1 - alpha1)> beta1``) cannot be
declared directly.  The port draws ``beta1_unit`` flat on (0, 1), sets
``beta1 = (1 - alpha1) * beta1_unit`` and adds the Jacobian ``log(1 - alpha1)``: the same
density as Stan's, on the same unconstrained coordinate ``logit(beta1 / (1 - alpha1))``.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyro_ext.models.posteriordb._util import Flat, as_float

# Stan's beta1 is <lower=0>; here it is a deterministic site, which carries no support
POSITIVE_DETERMINISTIC = ("beta1",)


def model(T, y, sigma1):
    y = as_float(y)
    mu = pyro.sample("mu", Flat(constraints.real, (), ()))
    alpha0 = pyro.sample("alpha0", Flat(constraints.positive, (), ()))
    alpha1 = pyro.sample("alpha1", Flat(constraints.unit_interval, (), ()))
    beta1_unit = pyro.sample("beta1_unit", Flat(constraints.unit_interval, (), ()))
    beta1 = pyro.deterministic("beta1", (1.0 - alpha1) * beta1_unit)
    pyro.factor("beta1_jacobian", torch.log1p(-alpha1))

    variances = [as_float(sigma1) ** 2]
    for t in range(1, T):
        variances.append(alpha0 + alpha1 * (y[t - 1] - mu) ** 2 + beta1 * variances[-1])
    sigma = torch.sqrt(torch.stack(variances))
    with pyro.plate("T", T):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)
