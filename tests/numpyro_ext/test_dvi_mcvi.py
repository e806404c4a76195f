"""MCVI, DVI's Monte Carlo baseline (local reparameterisation), in NumPyro.

Exact answers: where DVI's expected log-likelihood is exact -- no hidden layer (the output is Gaussian), or one
hidden layer with the homoscedastic likelihood (which needs only the output's exact mean and variance) -- the
MCVI estimate is unbiased for it, checked per datum to ``Z_MAX`` Monte Carlo standard errors from 4e4 draws.
"""

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import SVI  # noqa: E402

from numpyro_ext.infer.dvi.core import dvi_elbo_terms  # noqa: E402
from numpyro_ext.infer.dvi.mcvi import mcvi_elbo, mcvi_expected_log_likelihood, sample_outputs  # noqa: E402
from numpyro_ext.infer.dvi.network import DVIMLP, MCVI_ELBO  # noqa: E402

Z_MAX = 4.5
NUM_DRAWS = 40_000


def data(seed, n, d_in, d_out):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, d_in))), jnp.asarray(rng.normal(size=(n, d_out)))


@pytest.mark.parametrize(
    "sizes, likelihood",
    [((3, 4), "heteroscedastic"), ((3, 6, 2), "homoscedastic")],
    ids=["linear-heteroscedastic", "hidden-homoscedastic"],
)
def test_mcvi_is_unbiased_where_dvi_is_exact(sizes, likelihood):
    with jax.enable_x64():
        net = DVIMLP(sizes, covariance="diag", likelihood=likelihood, prior="gaussian")
        params = net.init(jax.random.PRNGKey(0), init_std_ratio=1.0, dtype=jnp.float64)
        if likelihood == "homoscedastic":
            params = params._replace(log_noise_variance=jnp.array([-0.5, 0.3]))
        x, y = data(1, 5, sizes[0], 2)
        exact = jax.jit(lambda p: dvi_elbo_terms(p, x, y, net.config))(params).expected_log_likelihood

        def draws(key):
            return jax.vmap(lambda k: mcvi_expected_log_likelihood(k, params, x, y, net.config))(
                jax.random.split(key, NUM_DRAWS)
            )

        samples = np.asarray(jax.jit(draws)(jax.random.PRNGKey(2)))
        z = np.abs(samples.mean(0) - np.asarray(exact)) / (samples.std(0) / math.sqrt(NUM_DRAWS))
        assert z.max() < Z_MAX, z


def test_local_reparameterisation_draws_have_the_linear_layers_moments():
    """(LR) for one layer: per-datum independent pre-activations with mean x mu + b, variance x^2 s^2 + v."""
    net = DVIMLP((2, 3), covariance="diag", likelihood="homoscedastic", prior="gaussian")
    params = net.init(jax.random.PRNGKey(4), init_std_ratio=1.0)
    x = jnp.array([[0.5, -1.0], [2.0, 0.0]])
    num = 40_000
    f = np.asarray(
        jax.vmap(lambda k: sample_outputs(k, params, x, net.config))(jax.random.split(jax.random.PRNGKey(5), num))
    )
    layer = params.layers[0]
    mean = np.asarray(x @ layer.weight_mean + layer.bias_mean)
    var = np.asarray((x * x) @ layer.weight_var + layer.bias_var)
    assert np.abs(f.mean(0) - mean).max() < Z_MAX * np.sqrt(var / num).max()
    np.testing.assert_allclose(f.var(0), var, rtol=Z_MAX * math.sqrt(2.0 / num))
    # two data get independent noise (their weights are drawn apart, unlike a shared weight draw)
    assert abs(np.corrcoef(f[:, 0, 0], f[:, 1, 0])[0, 1]) < Z_MAX / math.sqrt(num)


def test_mcvi_elbo_in_svi_and_its_errors():
    net = DVIMLP((1, 4, 2), covariance="diag", prior="gaussian")
    x, y = data(6, 16, 1, 1)
    y = y[:, 0]
    loss = MCVI_ELBO(num_particles=2, kl_warmup_steps=10)
    svi = SVI(net.model, net.guide, optax.adam(1e-2), loss)
    state = svi.init(jax.random.PRNGKey(7), x, y, num_data=32)
    params = net.params_from(svi.get_params(state))
    new_state, value = jax.jit(lambda s: svi.update(s, x, y, num_data=32))(state)
    assert int(new_state.mutable_state[net.step_name]) == 1
    # the step's loss is the estimate at the step's key and KL weight 0 (step 0 of the warm-up)
    _, key = jax.random.split(state.rng_key)
    estimate = jax.jit(lambda k, p: mcvi_elbo(k, p, x, y, net.config, num_samples=2, num_data=32, kl_weight=0.0))
    expected = -estimate(key, params)
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="num_particles"):
        MCVI_ELBO(num_particles=0)
    with pytest.raises(ValueError, match="num_samples"):
        mcvi_expected_log_likelihood(key, params, x, y, net.config, num_samples=0)
    with pytest.raises(ValueError, match="num_data"):
        mcvi_elbo(key, params, x, y, net.config, num_data=3)
    with pytest.raises(TypeError, match="guide must be a DVIMLP's guide method"):
        MCVI_ELBO().loss(key, {}, net.model, lambda x, y: None, x, y)


def test_log_predictive_density_is_the_exact_gaussian_predictive_without_hidden_layers():
    """No hidden layer, homoscedastic: y ~ N(x mu + b, x^2 s^2 + v + e^s) exactly, so the Monte Carlo log
    predictive density must match that log density to Z_MAX delta-method errors (sd of p(y|f) / (sqrt(S) mean))."""
    with jax.enable_x64():
        net = DVIMLP((3, 1), likelihood="homoscedastic", prior="gaussian")
        params = net.init(jax.random.PRNGKey(8), init_std_ratio=1.0, dtype=jnp.float64)
        params = params._replace(log_noise_variance=jnp.array([-1.0]))
        x, y = data(9, 6, 3, 1)
        num = 20_000
        estimate = np.asarray(net.log_predictive_density(jax.random.PRNGKey(10), params, x, y, num_samples=num))
        mean, var = net.predict(params, x)
        exact = -0.5 * (np.log(2 * np.pi * var[:, 0]) + (y[:, 0] - mean[:, 0]) ** 2 / var[:, 0])
        f = np.asarray(
            jax.vmap(lambda k: sample_outputs(k, params, x, net.config))(jax.random.split(jax.random.PRNGKey(11), num))
        )
        noise = np.exp(-1.0)
        density = np.exp(-0.5 * (np.log(2 * np.pi * noise) + (np.asarray(y) - f) ** 2 / noise))[..., 0]
        error = density.std(0) / (math.sqrt(num) * density.mean(0))
        assert np.all(np.abs(estimate - np.asarray(exact)) < Z_MAX * error), (estimate - exact, error)
        with pytest.raises(ValueError, match="num_samples"):
            net.log_predictive_density(jax.random.PRNGKey(10), params, x, y, num_samples=0)
