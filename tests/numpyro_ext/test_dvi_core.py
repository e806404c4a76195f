"""DVI likelihoods, KL terms, ELBO and predictions (NumPyro core) against Monte Carlo and exact answers.

Monte Carlo uses 2e5 draws with fixed seeds and allows ``Z_MAX`` standard errors measured from the draws.
Exact given Gaussian outputs: the regression expected log-likelihoods (G1).  Exact through a network with
one hidden layer (certain inputs make the hidden units independent, so the output's first two moments are
exact): the predictive mean and variance and the homoscedastic expected log-likelihood.  Approximate: the
categorical E[log softmax] (C1), whose measured error is documented below.
"""

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import log_softmax, logsumexp

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
import jax.numpy as jnp  # noqa: E402

from adapters.dvi import DVIConfig  # noqa: E402
from numpyro_ext.infer.dvi.core import (  # noqa: E402
    DVIParams,
    LayerParams,
    dvi_elbo,
    dvi_elbo_terms,
    dvi_kl,
    dvi_predict,
    init_params,
)
from numpyro_ext.infer.dvi.likelihoods import (  # noqa: E402
    categorical_expected_log_likelihood,
    expected_log_softmax,
    heteroscedastic_expected_log_likelihood,
    homoscedastic_expected_log_likelihood,
)
from numpyro_ext.infer.dvi.moments import GaussianMoments  # noqa: E402
from numpyro_ext.infer.dvi.priors import empirical_bayes_kl, empirical_bayes_prior_variance, gaussian_kl  # noqa: E402

Z_MAX = 4.5
NUM_DRAWS = 200_000
# |(C1) - E[log softmax]| measured with 4e5 control-variate draws for K = 4 logits whose variances average 0.1
# (0.0009 at the worst class), rounded up: (C1)'s error is O(||S||^2).
LOG_SOFTMAX_BOUND = 0.0015


def assert_within_mc(estimate, exact, se, label, slack=0.0):
    worst = float(np.max((np.abs(np.asarray(estimate) - np.asarray(exact)) - slack) / se))
    assert worst < Z_MAX, f"{label}: {worst:.2f} standard errors off (beyond slack {slack})"


def random_gaussian(seed, n, d, scale):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(n, d))
    factors = rng.normal(size=(n, d, d)) * scale / math.sqrt(d)
    cov = factors @ np.swapaxes(factors, 1, 2) + 0.1 * scale**2 * np.eye(d)
    return mean, cov


def sample_gaussian(rng, mean, cov, num):
    chol = np.linalg.cholesky(cov)
    return mean[:, None, :] + np.einsum("nij,nsj->nsi", chol, rng.standard_normal((mean.shape[0], num, mean.shape[1])))


def test_heteroscedastic_expected_log_likelihood_matches_monte_carlo():
    """(G1) with correlated (mean, log variance) outputs, D = 2 targets, full and diagonal covariances."""
    mean, cov = random_gaussian(0, 3, 4, 0.6)
    mean[:, 2:] -= 1.0  # log noise variances around -1
    y = np.random.default_rng(1).normal(size=(3, 2))
    rng = np.random.default_rng(2)
    for full in (True, False):
        c = cov if full else np.einsum("nii->ni", cov)
        got = jax.jit(heteroscedastic_expected_log_likelihood)(GaussianMoments(jnp.asarray(mean), jnp.asarray(c)), y)
        f = sample_gaussian(rng, mean, cov if full else np.einsum("ni,ij->nij", c, np.eye(4)), NUM_DRAWS)
        logp = stats.norm.logpdf(y[:, None, :], f[..., :2], np.exp(0.5 * f[..., 2:])).sum(-1)
        assert_within_mc(got, logp.mean(1), logp.std(1) / math.sqrt(NUM_DRAWS), f"full={full}")


def test_homoscedastic_expected_log_likelihood_matches_monte_carlo():
    mean, cov = random_gaussian(3, 2, 2, 0.8)
    y = np.array([[0.3, -1.0], [1.5, 0.2]])
    log_noise = np.array([-0.5, 0.3])
    got = homoscedastic_expected_log_likelihood(GaussianMoments(jnp.asarray(mean), jnp.asarray(cov)), y, log_noise)
    f = sample_gaussian(np.random.default_rng(4), mean, cov, NUM_DRAWS)
    logp = stats.norm.logpdf(y[:, None, :], f, np.exp(0.5 * log_noise)).sum(-1)
    assert_within_mc(got, logp.mean(1), logp.std(1) / math.sqrt(NUM_DRAWS), "homoscedastic")


def test_categorical_expected_log_likelihood_error_is_small_and_exact_for_a_common_shift():
    """(C1) vs Monte Carlo with the control variate p^T (f - mu) (mean 0) for lse(f); exact when S = c 1 1^T."""
    mu = np.array([[0.5, -0.3, 1.0, 0.0]])
    rng = np.random.default_rng(5)
    factors = rng.normal(size=(4, 4))
    cov = 0.1 * (factors @ factors.T / 4 + 0.5 * np.eye(4))
    got = np.asarray(expected_log_softmax(GaussianMoments(jnp.asarray(mu), jnp.asarray(cov[None]))))[0]
    f = rng.multivariate_normal(mu[0], cov, size=2 * NUM_DRAWS)
    p = np.exp(log_softmax(mu[0]))
    lse = logsumexp(f, axis=1) - (f - mu[0]) @ p
    mc = mu[0] - lse.mean()
    se = lse.std() / math.sqrt(lse.size)
    error = np.abs(got - mc)
    assert_within_mc(got, mc, se, "E[log softmax]", slack=LOG_SOFTMAX_BOUND)
    assert error.max() > 5 * se  # the approximation's error is visible above the Monte Carlo error
    labels = np.array([2])
    ell = categorical_expected_log_likelihood(GaussianMoments(jnp.asarray(mu), jnp.asarray(cov[None])), labels)
    assert float(ell[0]) == pytest.approx(got[2], rel=1e-14)
    # a common shift of all logits leaves softmax unchanged: (C1) is exact, E[log softmax] = log softmax(mu)
    shift = GaussianMoments(jnp.asarray(mu), jnp.full((1, 4, 4), 0.7))
    np.testing.assert_allclose(expected_log_softmax(shift), log_softmax(mu, axis=1), rtol=1e-13)


def test_empirical_bayes_kl_is_gaussian_kl_at_the_optimal_prior_variance():
    """s* of (K2) minimises KL(q || N(0, s)) - log InvGamma(s; alpha, beta) (1-d scan), and the empirical-Bayes
    KL equals KL(q || N(0, s*))."""
    rng = np.random.default_rng(6)
    mean, var = rng.normal(0, 0.7, size=(5, 3)), rng.uniform(0.01, 0.3, size=(5, 3))
    alpha, beta = 4.4798, 5.4798 * 0.5
    s_star = float(empirical_bayes_prior_variance(jnp.asarray(mean), jnp.asarray(var), alpha, beta))
    grid = np.linspace(0.5 * s_star, 2.0 * s_star, 20001)
    kl = np.asarray(jax.vmap(gaussian_kl, (None, None, 0))(jnp.asarray(mean), jnp.asarray(var), jnp.asarray(grid)))
    objective = kl - stats.invgamma.logpdf(grid, alpha, scale=beta)
    assert abs(grid[np.argmin(objective)] - s_star) <= grid[1] - grid[0]
    eb = float(empirical_bayes_kl(jnp.asarray(mean), jnp.asarray(var), alpha, beta))
    assert eb == pytest.approx(float(numpy_gaussian_kl(mean, var, s_star)), rel=1e-13)


def test_gaussian_kl_matches_monte_carlo():
    rng = np.random.default_rng(7)
    mean, var, prior_var = np.array([0.3, -1.2, 0.0]), np.array([0.2, 0.05, 1.5]), 0.8
    w = mean + np.sqrt(var) * rng.standard_normal((NUM_DRAWS, 3))
    log_ratio = (stats.norm.logpdf(w, mean, np.sqrt(var)) - stats.norm.logpdf(w, 0.0, math.sqrt(prior_var))).sum(1)
    got = float(gaussian_kl(mean, var, prior_var))
    assert_within_mc(got, log_ratio.mean(), log_ratio.std() / math.sqrt(NUM_DRAWS), "KL")


def one_hidden_layer(config, seed):
    """Random q for the network of ``config`` (one hidden layer in most tests; weights spread so that ReLU units
    are partly active)."""
    rng = np.random.default_rng(seed)
    layers = []
    for d_in, d_out in zip(config.sizes[:-1], config.sizes[1:], strict=True):
        layers.append(
            LayerParams(
                jnp.asarray(rng.normal(size=(d_in, d_out))),
                jnp.asarray(rng.uniform(-2.0, -0.5, size=(d_in, d_out))),
                jnp.asarray(rng.normal(size=d_out)),
                jnp.asarray(rng.uniform(-2.0, -0.5, size=d_out)),
            )
        )
    noise = jnp.asarray([-0.7]) if config.likelihood == "homoscedastic" else None
    return DVIParams(tuple(layers), noise)


def network_outputs(params, x, rng, num):
    """Monte Carlo network outputs (num, n, d_L) with weights drawn from q."""
    h = np.broadcast_to(x, (num,) + x.shape)
    for i, layer in enumerate(params.layers):
        w = np.asarray(layer.weight_mean) + np.exp(np.asarray(layer.weight_log_std)) * rng.standard_normal(
            (num,) + layer.weight_mean.shape
        )
        b = np.asarray(layer.bias_mean) + np.exp(np.asarray(layer.bias_log_std)) * rng.standard_normal(
            (num, 1) + layer.bias_mean.shape
        )
        h = np.einsum("snd,sde->sne", h, w) + b
        if i < len(params.layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def test_one_hidden_layer_predictions_and_expected_log_likelihood_match_monte_carlo():
    """Exact for one hidden layer: predictive mean and variance of y and the homoscedastic ELBO's data term.
    The hidden units are independent there, so DVI and dDVI agree."""
    full_config = DVIConfig((2, 6, 1), likelihood="homoscedastic", prior="gaussian")
    diag_config = DVIConfig((2, 6, 1), covariance="diag", likelihood="homoscedastic", prior="gaussian")
    params = one_hidden_layer(full_config, 8)
    x = jnp.array([[0.5, -1.0], [1.2, 0.4], [-0.3, 0.0]])
    y = np.array([0.4, -1.0, 2.0])

    @jax.jit
    def both(params):
        return [(dvi_predict(params, x, c), dvi_elbo_terms(params, x, y, c)) for c in (full_config, diag_config)]

    ((mean, var), terms), ((diag_mean, diag_var), diag_terms) = both(params)
    np.testing.assert_allclose(diag_mean, mean, rtol=1e-13)
    np.testing.assert_allclose(diag_var, var, rtol=1e-13)
    np.testing.assert_allclose(diag_terms.expected_log_likelihood, terms.expected_log_likelihood, rtol=1e-13)
    f = network_outputs(params, np.asarray(x), np.random.default_rng(9), NUM_DRAWS)[..., 0]
    noise_var = math.exp(-0.7)
    y_draws = f + math.sqrt(noise_var) * np.random.default_rng(10).standard_normal(f.shape)
    assert_within_mc(mean[:, 0], y_draws.mean(0), y_draws.std(0) / math.sqrt(NUM_DRAWS), "E[y]")
    squares = (y_draws - y_draws.mean(0)) ** 2
    assert_within_mc(var[:, 0], squares.mean(0), squares.std(0) / math.sqrt(NUM_DRAWS), "Var[y]")
    logp = stats.norm.logpdf(y, f, math.sqrt(noise_var))
    assert_within_mc(terms.expected_log_likelihood, logp.mean(0), logp.std(0) / math.sqrt(NUM_DRAWS), "E[log p]")


def numpy_gaussian_kl(mean, var, prior_var):
    """(K1) in numpy: an independent check of the library's KL."""
    mean, var = np.asarray(mean), np.asarray(var)
    return 0.5 * np.sum((var + mean**2) / prior_var - 1.0 - np.log(var / prior_var))


ELBO_CONFIG = DVIConfig((2, 4, 4, 2), likelihood="heteroscedastic", prior="empirical_bayes", prior_variance=0.5)


def elbo_problem():
    rng = np.random.default_rng(11)
    x, y = jnp.asarray(rng.normal(size=(7, 2))), jnp.asarray(rng.normal(size=7))
    return one_hidden_layer(ELBO_CONFIG, 14), x, y


def test_elbo_parts_kl_weight_and_minibatch_scaling():
    config = ELBO_CONFIG
    params, x, y = elbo_problem()

    @jax.jit
    def parts(params):
        return dvi_elbo_terms(params, x, y, config), dvi_elbo(params, x, y, config, num_data=70, kl_weight=0.25)

    terms, scaled = parts(params)
    assert float(scaled) == pytest.approx(float(10 * terms.expected_log_likelihood.sum() - 0.25 * terms.kl), rel=1e-13)
    expected_kl = 0.0
    for i, layer in enumerate(params.layers):
        for m, v in ((layer.weight_mean, layer.weight_var), (layer.bias_mean, layer.bias_var)):
            s_star = (np.sum(np.asarray(v) + np.asarray(m) ** 2) + 2 * config.eb_beta(i)) / (
                np.size(m) + 2 * config.eb_alpha + 2
            )
            expected_kl += numpy_gaussian_kl(m, v, s_star)
    assert float(terms.kl) == pytest.approx(expected_kl, rel=1e-12)


@pytest.mark.slow
def test_elbo_gradients_are_finite_and_match_finite_differences():
    """Through two hidden layers (full covariance, rho = 0 entries from the first layer) and s* of (K2)."""
    params, x, y = elbo_problem()
    elbo = jax.jit(lambda p: dvi_elbo(p, x, y, ELBO_CONFIG))
    grads = jax.jit(jax.grad(lambda p: dvi_elbo(p, x, y, ELBO_CONFIG)))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves) and all(np.any(g != 0) for g in leaves)
    step = 1e-6
    for i in range(len(params.layers)):
        for field in ("weight_mean", "weight_log_std"):
            value = getattr(params.layers[i], field)
            shifted = [
                params._replace(
                    layers=tuple(
                        layer._replace(**{field: value.at[0, 0].add(sign * step)}) if j == i else layer
                        for j, layer in enumerate(params.layers)
                    )
                )
                for sign in (1.0, -1.0)
            ]
            fd = (float(elbo(shifted[0])) - float(elbo(shifted[1]))) / (2 * step)
            assert float(getattr(grads.layers[i], field)[0, 0]) == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_gaussian_prior_kl_sums_the_tensors():
    config = DVIConfig((2, 6, 1), likelihood="homoscedastic", prior="gaussian", prior_variance=(2.0, 0.5))
    params = one_hidden_layer(config, 12)
    expected = sum(
        numpy_gaussian_kl(m, v, config.prior_variance[i])
        for i, layer in enumerate(params.layers)
        for m, v in ((layer.weight_mean, layer.weight_var), (layer.bias_mean, layer.bias_var))
    )
    assert float(jax.jit(dvi_kl, static_argnums=1)(params, config)) == pytest.approx(expected, rel=1e-13)


def test_bad_inputs_name_the_argument():
    config = DVIConfig((2, 4, 2), likelihood="heteroscedastic")
    params = one_hidden_layer(config, 13)
    x, y = np.zeros((3, 2)), np.zeros(3)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        dvi_elbo(params, np.zeros((3, 5)), y, config)
    with pytest.raises(ValueError, match=r"y must have shape \(3,\) or \(3, 1\)"):
        dvi_elbo(params, x, np.zeros(4), config)
    with pytest.raises(ValueError, match="y must be finite"):
        dvi_elbo(params, x, np.array([0.0, np.nan, 1.0]), config)
    with pytest.raises(ValueError, match=r"params.layers\[0\].weight_mean must have shape \(2, 4\)"):
        dvi_elbo(one_hidden_layer(DVIConfig((3, 4, 2)), 13), x, y, config)
    with pytest.raises(ValueError, match="num_data must be an integer >= the batch size 3"):
        dvi_elbo(params, x, y, config, num_data=2)
    with pytest.raises(ValueError, match="kl_weight must be a finite number >= 0"):
        dvi_elbo(params, x, y, config, kl_weight=-1.0)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        DVIConfig((2, 4, 2), likelihood="poisson")
    with pytest.raises(ValueError, match="prior_variance must be a finite number > 0"):
        DVIConfig((2, 4, 2), prior_variance=0.0)
    with pytest.raises(ValueError, match="var must be > 0"):
        gaussian_kl(np.zeros(3), np.array([1.0, 0.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="prior_var must be > 0"):
        gaussian_kl(np.zeros(3), np.ones(3), -1.0)
    with pytest.raises(TypeError, match="config must be an adapters.dvi.DVIConfig"):
        init_params(jax.random.PRNGKey(0), {"sizes": (2, 4, 2)})
    labels_config = DVIConfig((2, 3), likelihood="categorical")
    with pytest.raises(ValueError, match=r"y must hold class labels in \[0, 3\)"):
        dvi_elbo(one_hidden_layer(labels_config, 13), x, np.array([0, 3, 1]), labels_config)


@pytest.mark.slow
def test_two_hidden_layers_full_covariance_beats_diagonal_against_monte_carlo():
    """Beyond one hidden layer DVI is an approximation (Gaussian pre-activations, (R4)); its off-diagonal
    covariances matter.  Measured for this (2, 8, 8, 1) network against 2e5 weight draws: DVI's predictive
    variances are within 3.2% (worst of 3 inputs), dDVI's are off by up to 26%; both means are within 0.025."""
    full_config = DVIConfig((2, 8, 8, 1), likelihood="homoscedastic", prior="gaussian")
    diag_config = DVIConfig((2, 8, 8, 1), covariance="diag", likelihood="homoscedastic", prior="gaussian")
    params = one_hidden_layer(full_config, 22)
    x = jnp.array([[0.5, -1.0], [1.2, 0.4], [-0.3, 0.0]])
    predict = jax.jit(dvi_predict, static_argnums=2)
    (full_mean, full_var), (diag_mean, diag_var) = predict(params, x, full_config), predict(params, x, diag_config)
    f = network_outputs(params, np.asarray(x), np.random.default_rng(9), NUM_DRAWS)[..., 0]
    mc_var = f.var(0) + math.exp(-0.7)
    full_error = np.abs(np.asarray(full_var[:, 0]) / mc_var - 1.0).max()
    diag_error = np.abs(np.asarray(diag_var[:, 0]) / mc_var - 1.0).max()
    assert full_error < 0.05 and diag_error > 0.15, (full_error, diag_error)
    assert np.abs(np.asarray(full_mean[:, 0]) - f.mean(0)).max() < 0.025 + Z_MAX * f.std(0).max() / math.sqrt(NUM_DRAWS)
    np.testing.assert_allclose(diag_mean, full_mean, rtol=1e-12)  # means need only the variances of layer 2
