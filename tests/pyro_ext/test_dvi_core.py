"""DVI likelihoods, KL terms, ELBO and the MCVI baseline (Pyro/torch core) against Monte Carlo and exact answers.

Monte Carlo uses >= 1e5 draws with fixed seeds and allows ``Z_MAX`` standard errors measured from the draws.
Exact given Gaussian outputs: the regression expected log-likelihoods (G1).  Approximate: the categorical
E[log softmax] (C1), within ``LOG_SOFTMAX_BOUND`` (measured).  MCVI is unbiased for the ELBO; where DVI's output
moments are exact (no hidden layer; one hidden layer with a homoscedastic likelihood) its mean over draws must
match DVI's closed form within the Monte Carlo error.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import log_softmax, logsumexp

from adapters.dvi import DVIConfig
from pyro_ext.infer.dvi.core import (
    DVIParams,
    LayerParams,
    convert_params,
    dvi_elbo,
    dvi_elbo_terms,
    dvi_kl,
    dvi_predict,
    init_params,
    params_as_dict,
)
from pyro_ext.infer.dvi.likelihoods import (
    categorical_expected_log_likelihood,
    expected_log_softmax,
    heteroscedastic_expected_log_likelihood,
    homoscedastic_expected_log_likelihood,
)
from pyro_ext.infer.dvi.mcvi import log_predictive_density, mcvi_elbo, mcvi_expected_log_likelihood, sample_outputs
from pyro_ext.infer.dvi.moments import GaussianMoments
from pyro_ext.infer.dvi.priors import empirical_bayes_kl, empirical_bayes_prior_variance, gaussian_kl

Z_MAX = 4.5
NUM_DRAWS = 200_000
# |(C1) - E[log softmax]| for K = 4 logits whose variances average 0.1 (0.0009 measured at the worst class).
LOG_SOFTMAX_BOUND = 0.0015


def t(array):
    return torch.tensor(np.array(array), dtype=torch.float64)


def assert_within_mc(estimate, exact, se, label, slack=0.0):
    worst = float(np.max((np.abs(np.asarray(estimate) - np.asarray(exact)) - slack) / se))
    assert worst < Z_MAX, f"{label}: {worst:.2f} standard errors off (beyond slack {slack})"


def random_gaussian(seed, n, d, scale):
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n, d, d)) * scale / math.sqrt(d)
    return rng.normal(size=(n, d)), factors @ np.swapaxes(factors, 1, 2) + 0.1 * scale**2 * np.eye(d)


def sample_gaussian(rng, mean, cov, num):
    chol = np.linalg.cholesky(cov)
    return mean[:, None, :] + np.einsum("nij,nsj->nsi", chol, rng.standard_normal((mean.shape[0], num, mean.shape[1])))


def test_heteroscedastic_and_homoscedastic_expected_log_likelihoods_match_monte_carlo():
    """(G1) with correlated (mean, log variance) outputs, D = 2 targets, full and diagonal covariances; and the
    homoscedastic case with a fixed log noise variance per target."""
    mean, cov = random_gaussian(0, 3, 4, 0.6)
    mean[:, 2:] -= 1.0  # log noise variances around -1
    y = np.random.default_rng(1).normal(size=(3, 2))
    rng = np.random.default_rng(2)
    for full in (True, False):
        c = cov if full else np.einsum("nii->ni", cov)
        got = heteroscedastic_expected_log_likelihood(GaussianMoments(t(mean), t(c)), t(y))
        f = sample_gaussian(rng, mean, cov if full else np.einsum("ni,ij->nij", c, np.eye(4)), NUM_DRAWS)
        logp = stats.norm.logpdf(y[:, None, :], f[..., :2], np.exp(0.5 * f[..., 2:])).sum(-1)
        assert_within_mc(got, logp.mean(1), logp.std(1) / math.sqrt(NUM_DRAWS), f"heteroscedastic, full={full}")
    mean, cov = random_gaussian(3, 2, 2, 0.8)
    y, log_noise = np.array([[0.3, -1.0], [1.5, 0.2]]), np.array([-0.5, 0.3])
    got = homoscedastic_expected_log_likelihood(GaussianMoments(t(mean), t(cov)), t(y), t(log_noise))
    logp = stats.norm.logpdf(y[:, None, :], sample_gaussian(rng, mean, cov, NUM_DRAWS), np.exp(0.5 * log_noise))
    assert_within_mc(got, logp.sum(-1).mean(1), logp.sum(-1).std(1) / math.sqrt(NUM_DRAWS), "homoscedastic")


def test_categorical_expected_log_likelihood_error_is_small_and_exact_for_a_common_shift():
    """(C1) vs Monte Carlo (4e5 draws, control variate p^T (f - mu) of mean 0 for lse(f)); exact for S = c 1 1^T."""
    mu = np.array([[0.5, -0.3, 1.0, 0.0]])
    rng = np.random.default_rng(5)
    factors = rng.normal(size=(4, 4))
    cov = 0.1 * (factors @ factors.T / 4 + 0.5 * np.eye(4))
    got = expected_log_softmax(GaussianMoments(t(mu), t(cov[None]))).numpy()[0]
    f = rng.multivariate_normal(mu[0], cov, size=2 * NUM_DRAWS)
    p = np.exp(log_softmax(mu[0]))
    lse = logsumexp(f, axis=1) - (f - mu[0]) @ p
    se = lse.std() / math.sqrt(lse.size)
    assert_within_mc(got, mu[0] - lse.mean(), se, "E[log softmax]", slack=LOG_SOFTMAX_BOUND)
    assert np.abs(got - (mu[0] - lse.mean())).max() > 5 * se  # the approximation's error is visible
    ell = categorical_expected_log_likelihood(GaussianMoments(t(mu), t(cov[None])), torch.tensor([2]))
    assert float(ell[0]) == pytest.approx(got[2], rel=1e-14)
    diag = expected_log_softmax(GaussianMoments(t(mu), t(np.diag(cov)[None]))).numpy()[0]
    assert np.all(diag < log_softmax(mu[0]))  # independent logits: E[lse] above lse(mu) (Jensen)
    shift = GaussianMoments(t(mu), torch.full((1, 4, 4), 0.7))
    np.testing.assert_allclose(expected_log_softmax(shift).numpy(), log_softmax(mu, axis=1), rtol=1e-13)


def numpy_gaussian_kl(mean, var, prior_var):
    """(K1) in numpy: an independent check of the library's KL."""
    return 0.5 * np.sum((var + mean**2) / prior_var - 1.0 - np.log(var / prior_var))


def test_empirical_bayes_kl_is_gaussian_kl_at_its_minimiser_and_gaussian_kl_matches_monte_carlo():
    """s* of (K2) minimises KL(q || N(0, s)) - log InvGamma(s; alpha, beta) (scan of 20001 points) and the
    empirical-Bayes KL equals KL(q || N(0, s*)); (K1) against 2e5 draws of log q - log p."""
    rng = np.random.default_rng(6)
    mean, var = rng.normal(0, 0.7, size=(5, 3)), rng.uniform(0.01, 0.3, size=(5, 3))
    alpha, beta = 4.4798, 5.4798 * 0.5
    s_star = float(empirical_bayes_prior_variance(t(mean), t(var), alpha, beta))
    grid = np.linspace(0.5 * s_star, 2.0 * s_star, 20001)
    kl = np.array([numpy_gaussian_kl(mean, var, s) for s in grid])
    objective = kl - stats.invgamma.logpdf(grid, alpha, scale=beta)
    assert abs(grid[np.argmin(objective)] - s_star) <= grid[1] - grid[0]
    assert float(empirical_bayes_kl(t(mean), t(var), alpha, beta)) == pytest.approx(
        numpy_gaussian_kl(mean, var, s_star), rel=1e-13
    )
    assert float(gaussian_kl(t(mean), t(var), s_star)) == pytest.approx(numpy_gaussian_kl(mean, var, s_star), rel=1e-13)
    mean, var, prior_var = np.array([0.3, -1.2, 0.0]), np.array([0.2, 0.05, 1.5]), 0.8
    w = mean + np.sqrt(var) * rng.standard_normal((NUM_DRAWS, 3))
    log_ratio = (stats.norm.logpdf(w, mean, np.sqrt(var)) - stats.norm.logpdf(w, 0.0, math.sqrt(prior_var))).sum(1)
    got = float(gaussian_kl(t(mean), t(var), prior_var))
    assert_within_mc(got, log_ratio.mean(), log_ratio.std() / math.sqrt(NUM_DRAWS), "KL")


def random_params(config, seed):
    """Random q for ``config`` (weights spread so that ReLU units are partly active)."""
    rng = np.random.default_rng(seed)
    layers = []
    for d_in, d_out in zip(config.sizes[:-1], config.sizes[1:], strict=True):
        layers.append(
            LayerParams(
                t(rng.normal(size=(d_in, d_out))),
                t(rng.uniform(-2.0, -0.5, size=(d_in, d_out))),
                t(rng.normal(size=d_out)),
                t(rng.uniform(-2.0, -0.5, size=d_out)),
            )
        )
    noise = t([-0.7] * config.num_targets) if config.likelihood == "homoscedastic" else None
    return DVIParams(tuple(layers), noise)


def test_elbo_parts_kl_weight_minibatch_scaling_and_empirical_bayes_kl():
    config = DVIConfig((2, 4, 4, 2), likelihood="heteroscedastic", prior="empirical_bayes", prior_variance=0.5)
    params = random_params(config, 14)
    rng = np.random.default_rng(11)
    x, y = t(rng.normal(size=(7, 2))), t(rng.normal(size=7))
    terms = dvi_elbo_terms(params, x, y, config)
    scaled = dvi_elbo(params, x, y, config, num_data=70, kl_weight=0.25)
    assert float(scaled) == pytest.approx(float(10 * terms.expected_log_likelihood.sum() - 0.25 * terms.kl), rel=1e-13)
    expected_kl = 0.0
    for i, layer in enumerate(params.layers):
        for m, v in ((layer.weight_mean, layer.weight_var), (layer.bias_mean, layer.bias_var)):
            m, v = m.numpy(), v.numpy()
            s_star = (np.sum(v + m**2) + 2 * config.eb_beta(i)) / (m.size + 2 * config.eb_alpha + 2)
            expected_kl += numpy_gaussian_kl(m, v, s_star)
    assert float(terms.kl) == pytest.approx(expected_kl, rel=1e-12)
    gaussian = DVIConfig((2, 4, 4, 2), prior="gaussian", prior_variance=(2.0, 0.5, 1.0))
    expected = sum(
        numpy_gaussian_kl(m.numpy(), v.numpy(), gaussian.prior_variance[i])
        for i, layer in enumerate(params.layers)
        for m, v in ((layer.weight_mean, layer.weight_var), (layer.bias_mean, layer.bias_var))
    )
    assert float(dvi_kl(params, gaussian)) == pytest.approx(expected, rel=1e-13)


def test_elbo_gradients_match_finite_differences():
    """Through two hidden layers (full covariance, rho = 0 entries from the first layer) and s* of (K2)."""
    config = DVIConfig((2, 4, 4, 2), likelihood="heteroscedastic", prior_variance=0.5)
    rng = np.random.default_rng(11)
    x, y = t(rng.normal(size=(7, 2))), t(rng.normal(size=7))
    params = random_params(config, 14)
    leaves = [leaf.requires_grad_() for layer in params.layers for leaf in layer]
    grads = torch.autograd.grad(dvi_elbo(params, x, y, config), leaves)
    assert all(torch.isfinite(g).all() and (g != 0).any() for g in grads)
    step = 1e-6
    with torch.no_grad():
        for index in (0, 1, 4, 5, 8, 9):  # weight means and log stds of every layer
            leaf = leaves[index]
            leaf[0, 0] += step
            up = float(dvi_elbo(params, x, y, config))
            leaf[0, 0] -= 2 * step
            down = float(dvi_elbo(params, x, y, config))
            leaf[0, 0] += step
            assert float(grads[index][0, 0]) == pytest.approx((up - down) / (2 * step), rel=1e-5, abs=1e-8)


def mcvi_mean_and_se(params, x, y, config, num_batches=100, batch=1000):
    """Mean of ``num_batches`` MCVI estimates (``batch`` draws each, 1e5 in all) and its standard error."""
    generator = torch.Generator().manual_seed(17)
    draws = torch.stack(
        [mcvi_expected_log_likelihood(params, x, y, config, batch, generator=generator) for _ in range(num_batches)]
    ).numpy()
    return draws.mean(0), draws.std(0, ddof=1) / math.sqrt(num_batches)


@pytest.mark.parametrize(
    ("sizes", "likelihood"),
    [((3, 2), "heteroscedastic"), ((3, 4), "heteroscedastic"), ((2, 6, 1), "homoscedastic"), ((3, 3), "categorical")],
)
def test_mcvi_is_unbiased_where_dvi_is_exact(sizes, likelihood):
    """No hidden layer (the output is exactly Gaussian: (G1) exact for D = 1 and D = 2 heteroscedastic targets) and
    one hidden layer with a homoscedastic likelihood (the first two output moments are exact, and (G1) needs no
    more): 1e5 MCVI draws per datum agree with DVI's expected log-likelihood within Z_MAX standard errors.
    Categorical (no hidden layer): DVI's (C1) is an approximation, so MCVI agrees up to its error only: 0.022 nats
    measured at the worst datum (logit variances averaging 0.56, 7 standard errors), allowed 0.03."""
    config = DVIConfig(sizes, likelihood=likelihood, prior="gaussian")
    params = random_params(config, 21)
    rng = np.random.default_rng(22)
    x = t(rng.normal(size=(4, sizes[0])))
    if likelihood == "categorical":
        y = torch.tensor([0, 2, 1, 2])
    else:
        y = t(rng.normal(size=(4, config.num_targets)))
    exact = dvi_elbo_terms(params, x, y, config).expected_log_likelihood.numpy()
    mean, se = mcvi_mean_and_se(params, x, y, config)
    slack = 0.03 if likelihood == "categorical" else 0.0
    assert_within_mc(mean, exact, se, f"MCVI vs DVI {sizes} {likelihood}", slack=slack)
    # the ELBO: same KL, scaled expected log-likelihood, unbiased
    torch.manual_seed(3)
    elbo = mcvi_elbo(params, x, y, config, num_samples=20_000, num_data=40, kl_weight=0.5)
    dvi = dvi_elbo(params, x, y, config, num_data=40, kl_weight=0.5)
    assert abs(float(elbo) - float(dvi)) < Z_MAX * 10 * float(np.sqrt((se**2).sum() * 5)) + 10 * slack * 4


def test_sample_outputs_are_local_reparameterisation_draws():
    """The first layer's pre-activations are N(x M + m, x^2 V + v) per datum: the draws' mean and variance match
    (1e5 draws) and two data's draws are uncorrelated (independent noise, not shared weights)."""
    config = DVIConfig((2, 2), likelihood="heteroscedastic")
    params = random_params(config, 23)
    x = t([[0.5, -1.0], [0.5, -1.0]])
    draws = sample_outputs(params, x, config, 100_000, generator=torch.Generator().manual_seed(4)).numpy()
    layer = params.layers[0]
    mean = (x @ layer.weight_mean + layer.bias_mean).numpy()
    var = ((x * x) @ layer.weight_var + layer.bias_var).numpy()
    assert_within_mc(draws.mean(0), mean, np.sqrt(var / 1e5), "E[a]")
    assert_within_mc(draws.var(0), var, var * math.sqrt(2 / 1e5), "Var[a]")
    corr = np.corrcoef(draws[:, 0, 0], draws[:, 1, 0])[0, 1]
    assert abs(corr) < Z_MAX / math.sqrt(1e5)


def test_log_predictive_density_is_the_exact_gaussian_predictive_without_hidden_layers(monkeypatch):
    """No hidden layer, homoscedastic: y ~ N(x M + m, x^2 V + v + e^s) exactly, so the Monte Carlo log predictive
    density (2e4 draws, in chunks of 3000) matches that log density within Z_MAX delta-method errors (sd of
    p(y | f) / (sqrt(S) mean))."""
    import pyro_ext.infer.dvi.mcvi as mcvi

    config = DVIConfig((3, 1), likelihood="homoscedastic", prior="gaussian")
    params = random_params(config, 8)._replace(log_noise_variance=t([-1.0]))
    rng = np.random.default_rng(9)
    x, y = t(rng.normal(size=(6, 3))), t(rng.normal(size=(6, 1)))
    num = 20_000
    monkeypatch.setattr(mcvi, "_CHUNK_ACTIVATIONS", 3000 * 6 * 3)  # seven chunks, the last one short
    estimate = log_predictive_density(params, x, y, config, num, generator=torch.Generator().manual_seed(10))
    mean, var = (v[:, 0].numpy() for v in dvi_predict(params, x, config))
    exact = stats.norm.logpdf(y[:, 0].numpy(), mean, np.sqrt(var))
    f = sample_outputs(params, x, config, num, generator=torch.Generator().manual_seed(11))[..., 0].numpy()
    density = stats.norm.pdf(y[:, 0].numpy(), f, math.exp(-0.5))
    error = density.std(0) / (math.sqrt(num) * density.mean(0))
    assert np.all(np.abs(estimate.numpy() - exact) < Z_MAX * error), (estimate.numpy() - exact, error)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        log_predictive_density(params, x, y, config, 0)


def test_params_convert_from_dicts_and_objects_and_back():
    config = DVIConfig((2, 3, 1), likelihood="homoscedastic")
    params = init_params(config, generator=torch.Generator().manual_seed(0))
    mapping = params_as_dict(params, name="net")
    assert sorted(mapping) == sorted(
        [f"net.layers.{i}.{f}" for i in range(2) for f in LayerParams._fields] + ["net.log_noise_variance"]
    )
    back = convert_params(mapping, config, name="net")
    for a, b in zip(back.layers, params.layers, strict=True):
        for u, v in zip(a, b, strict=True):
            assert torch.equal(u, v)
    assert torch.equal(back.log_noise_variance, params.log_noise_variance)
    assert convert_params(params, config, dtype=torch.float32).layers[0].weight_mean.dtype == torch.float32
    with pytest.raises(KeyError, match="value lacks the parameters"):
        convert_params(mapping, config)  # site prefix "dvi", keys are "net.*"
    with pytest.raises(ValueError, match=r"params.layers\[0\].weight_mean must have shape \(2, 3\)"):
        convert_params(init_params(DVIConfig((3, 3, 1), likelihood="homoscedastic")), config)
    with pytest.raises(ValueError, match=r"value: layers\[1\].bias_log_std must be finite"):
        convert_params({**mapping, "net.layers.1.bias_log_std": np.array([np.nan])}, config, name="net")
    with pytest.raises(TypeError, match="value must be a DVIParams"):
        convert_params([1.0, 2.0], config)


def test_bad_inputs_name_the_argument():
    config = DVIConfig((2, 4, 2), likelihood="heteroscedastic")
    params = random_params(config, 13)
    x, y = torch.zeros(3, 2), torch.zeros(3)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        dvi_elbo(params, torch.zeros(3, 5), y, config)
    with pytest.raises(ValueError, match=r"y must have shape \(3,\) or \(3, 1\)"):
        dvi_elbo(params, x, torch.zeros(4), config)
    with pytest.raises(ValueError, match="y must be finite"):
        dvi_elbo(params, x, t([0.0, np.nan, 1.0]), config)
    with pytest.raises(ValueError, match="x must be finite"):
        dvi_predict(params, t([[0.0, 1.0], [np.inf, 0.0]]), config)
    with pytest.raises(ValueError, match=r"params.layers\[0\].weight_mean must have shape \(2, 4\)"):
        dvi_elbo(random_params(DVIConfig((3, 4, 2)), 13), x, y, config)
    with pytest.raises(ValueError, match="num_data must be an integer >= the batch size 3"):
        dvi_elbo(params, x, y, config, num_data=2)
    with pytest.raises(ValueError, match="kl_weight must be a finite number >= 0"):
        mcvi_elbo(params, x, y, config, kl_weight=-1.0)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        mcvi_expected_log_likelihood(params, x, y, config, 0)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        DVIConfig((2, 4, 2), likelihood="poisson")
    with pytest.raises(ValueError, match="var must be > 0"):
        gaussian_kl(torch.zeros(3), t([1.0, 0.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="prior_var must be > 0"):
        gaussian_kl(torch.zeros(3), torch.ones(3), -1.0)
    with pytest.raises(TypeError, match="config must be an adapters.dvi.DVIConfig"):
        init_params({"sizes": (2, 4, 2)})
    labels_config = DVIConfig((2, 3), likelihood="categorical")
    with pytest.raises(ValueError, match=r"y must hold class labels in \[0, 3\)"):
        dvi_elbo(random_params(labels_config, 13), x, torch.tensor([0, 3, 1]), labels_config)
    with pytest.raises(TypeError, match="y must be integer class labels"):
        dvi_elbo(random_params(labels_config, 13), x, torch.zeros(3), labels_config)
