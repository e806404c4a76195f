"""The stochastic-volatility test problem: its centered and non-centered forms are one posterior.

The non-centered form writes ``h = mu + L h_std`` with ``L`` lower triangular (the AR(1) recursion), whose
Jacobian is ``stationary_sd * sigma^(T-1)``; so at corresponding points the two log joint densities
differ by exactly that log-Jacobian.  A wrong recursion, prior or scale breaks the identity.
"""

import jax.numpy as jnp
import numpy as np
from numpyro.infer.util import log_density

from numpyro_ext.models import test_problems


def test_centered_and_noncentered_forms_are_one_posterior():
    y = test_problems.stochastic_volatility_data(30, seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        mu, phi, sigma = rng.normal(-1, 0.5), rng.uniform(-0.95, 0.95), rng.uniform(0.1, 1.0)
        h_std = rng.normal(size=30)
        params = {"mu": jnp.asarray(mu), "phi": jnp.asarray(phi), "sigma": jnp.asarray(sigma), "h_std": h_std}
        log_nc, trace = log_density(test_problems.stochastic_volatility, (y,), {"centered": False}, params)
        h = trace["h"]["value"]
        assert np.isclose(h[0], mu + sigma / np.sqrt(1 - phi**2) * h_std[0])
        assert np.isclose(h[5], mu + phi * (h[4] - mu) + sigma * h_std[5])
        centered = {k: params[k] for k in ("mu", "phi", "sigma")} | {"h": h}
        log_c, _ = log_density(test_problems.stochastic_volatility, (y,), {}, centered)
        log_jacobian = np.log(sigma / np.sqrt(1 - phi**2)) + 29 * np.log(sigma)
        np.testing.assert_allclose(float(log_c), float(log_nc) - log_jacobian, rtol=1e-9, atol=1e-9)


def test_simulated_returns_follow_the_volatility():
    """y_t / exp(h_t / 2) ~ N(0, 1): the simulated returns' scale matches exp(mu / 2) on average in logs."""
    y = test_problems.stochastic_volatility_data(20000, mu=-1.0, phi=0.5, sigma=0.3, seed=1)
    # E[log y^2] = E[h] + E[log chi2_1] = mu - 1.2704 (Kim, Shephard & Chib 1998); sd of the mean ~ 2.3 / sqrt(n)
    z = (np.mean(np.log(y**2)) - (-1.0 - 1.2704)) / (2.3 / np.sqrt(20000))
    assert abs(z) < 4, z
