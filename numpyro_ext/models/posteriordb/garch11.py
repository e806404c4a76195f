"""garch11: GARCH(1,1) volatility model, with beta1 constrained to (0, 1 - alpha1).

Stan declares ``real<lower=0, upper=(1 - alpha1)> beta1``.  NumPyro's potential follows a
support that depends on another latent, but the constrained draws that ``MCMC`` reports
for such a site came out wrong here (numpyro 0.22: ``initialize_model``'s
``postprocess_fn``), so the port draws ``beta1_unit`` flat on (0, 1), reports
``beta1 = (1 - alpha1) * beta1_unit`` and adds the Jacobian ``log(1 - alpha1)``: the same
density as Stan's on the same unconstrained coordinate ``logit(beta1 / (1 - alpha1))``,
and the same parameterisation as the Pyro port.
"""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from numpyro_ext.models.posteriordb._util import as_float

# Stan's beta1 is <lower=0>; here it is a deterministic site, which carries no support
POSITIVE_DETERMINISTIC = ("beta1",)


def model(T, y, sigma1):
    y = as_float(y)
    # Stan declares the parameters with bounds and no priors: flat densities on their supports.
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
    alpha0 = numpyro.sample("alpha0", dist.ImproperUniform(constraints.positive, (), ()))
    alpha1 = numpyro.sample("alpha1", dist.ImproperUniform(constraints.unit_interval, (), ()))
    beta1_unit = numpyro.sample("beta1_unit", dist.ImproperUniform(constraints.unit_interval, (), ()))
    beta1 = numpyro.deterministic("beta1", (1.0 - alpha1) * beta1_unit)
    numpyro.factor("beta1_jacobian", jnp.log1p(-alpha1))

    def variance_step(var_prev, y_prev):
        var = alpha0 + alpha1 * (y_prev - mu) ** 2 + beta1 * var_prev
        return var, var

    var1 = jnp.square(as_float(sigma1))
    _, variances = jax.lax.scan(variance_step, var1, y[:-1])
    sigma = jnp.sqrt(jnp.concatenate([var1[None], variances]))
    with numpyro.plate("T", T):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)
