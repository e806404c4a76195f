"""gp_pois_regr: Poisson regression with a latent Gaussian process, non-centred, k ~ poisson_log(f).

Follows ``posterior_database/models/stan/gp_pois_regr.stan``: ``rho ~ gamma(25, 4)`` (shape,
rate), ``alpha ~ normal(0, 2)`` on (0, inf) (a half-normal, the same density up to a
constant), ``f_tilde ~ normal(0, 1)`` and the transformed parameter ``f = L f_tilde``
(a deterministic site), ``L`` the Cholesky factor of Stan's ``gp_exp_quad_cov(x, alpha, rho)``
plus ``1e-10`` on the diagonal.
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from numpyro_ext.models.posteriordb._util import as_float
from numpyro_ext.models.posteriordb.gp_regr import exp_quad_cov


def model(N, x, k):
    x = as_float(x)
    rho = numpyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
    f_tilde = numpyro.sample("f_tilde", dist.Normal(0.0, 1.0).expand([N]).to_event(1))
    cov = exp_quad_cov(x, alpha, rho) + 1e-10 * jnp.eye(N)
    f = numpyro.deterministic("f", jnp.linalg.cholesky(cov) @ f_tilde)
    with numpyro.plate("N", N):
        numpyro.sample("k", dist.Poisson(jnp.exp(f)), obs=as_float(k))
