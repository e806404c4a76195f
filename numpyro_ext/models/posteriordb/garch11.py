"""garch11: GARCH(1,1) volatility model, with beta1 constrained to (0, 1 - alpha1)."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from numpyro_ext.models.posteriordb._util import as_float


def model(T, y, sigma1):
    y = as_float(y)
    # Stan declares the four parameters with bounds and no priors: flat densities on their supports.
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
    alpha0 = numpyro.sample("alpha0", dist.ImproperUniform(constraints.positive, (), ()))
    alpha1 = numpyro.sample("alpha1", dist.ImproperUniform(constraints.unit_interval, (), ()))
    # the upper bound depends on alpha1; NumPyro re-derives the bijection at every evaluation
    beta1 = numpyro.sample("beta1", dist.ImproperUniform(constraints.interval(0.0, 1.0 - alpha1), (), ()))

    def variance_step(var_prev, y_prev):
        var = alpha0 + alpha1 * (y_prev - mu) ** 2 + beta1 * var_prev
        return var, var

    var1 = jnp.square(as_float(sigma1))
    _, variances = jax.lax.scan(variance_step, var1, y[:-1])
    sigma = jnp.sqrt(jnp.concatenate([var1[None], variances]))
    with numpyro.plate("T", T):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)
