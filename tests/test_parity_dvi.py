"""The two DVI twins give the same numbers on the same weights (float64).

``numpyro_ext.infer.dvi`` and ``pyro_ext.infer.dvi`` compute the same deterministic ELBO (expected log-likelihood
and KL) and the same closed-form predictions for every covariance x likelihood x prior, on a network with two
hidden layers (so the full-covariance ReLU approximation (R4) is exercised), to ``RTOL``.  Weights move between
the backends as the docs say: Pyro's ``DVIMLP.load_params`` reads NumPyro's ``DVIParams`` (and NumPyro's
``svi.get_params`` dictionary), NumPyro's ``DVIMLP.params_from`` reads Pyro's ``DVIMLP.param_dict()``.  Both
models (``net.model``, the Bayesian MLP) have the same log joint at the same weights.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
torch = pytest.importorskip("torch", reason="the pyro extra is not installed")
import jax.numpy as jnp  # noqa: E402
import pyro  # noqa: E402

import numpyro_ext.infer.dvi as jdvi  # noqa: E402
import pyro_ext.infer.dvi as tdvi  # noqa: E402

RTOL = 1e-6
OUTPUTS = {"heteroscedastic": 2, "homoscedastic": 1, "categorical": 3}


def random_params(sizes, likelihood, seed):
    """NumPyro DVIParams of random numpy float64 weights (ReLU units partly active, log stds in [-2, -0.5])."""
    rng = np.random.default_rng(seed)
    layers = tuple(
        jdvi.LayerParams(
            jnp.asarray(rng.normal(size=(d_in, d_out))),
            jnp.asarray(rng.uniform(-2.0, -0.5, size=(d_in, d_out))),
            jnp.asarray(rng.normal(size=d_out)),
            jnp.asarray(rng.uniform(-2.0, -0.5, size=d_out)),
        )
        for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True)
    )
    noise = jnp.asarray([-0.4]) if likelihood == "homoscedastic" else None
    return jdvi.DVIParams(layers, noise)


def data(likelihood, seed, n=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = rng.integers(0, 3, size=n) if likelihood == "categorical" else rng.normal(size=n)
    return x, y


# Default: one case per likelihood, covering both covariances and both priors (one JAX compilation each, 2-3 s a
# case on 2 cores); the other nine combinations are slow.
DEFAULT_CASES = {
    ("full", "heteroscedastic", "empirical_bayes"),
    ("diag", "homoscedastic", "gaussian"),
    ("full", "categorical", "gaussian"),
}
ALL_CASES = [
    pytest.param(*case, marks=() if case in DEFAULT_CASES else pytest.mark.slow)
    for case in itertools.product(("full", "diag"), OUTPUTS, ("empirical_bayes", "gaussian"))
]


@pytest.mark.parametrize(("covariance", "likelihood", "prior"), ALL_CASES)
def test_same_elbo_and_predictions_on_the_same_weights(covariance, likelihood, prior):
    sizes = (2, 4, 3, OUTPUTS[likelihood])
    kwargs = {"covariance": covariance, "likelihood": likelihood, "prior": prior, "prior_variance": (1.0, 0.5, 2.0)}
    params = random_params(sizes, likelihood, seed=1)
    x, y = data(likelihood, seed=2)
    jnet = jdvi.DVIMLP(sizes, **kwargs)

    @jax.jit  # one compilation: eager JAX compiles every new operation, several times slower here
    def numpyro_side(params, x, y):
        terms = jdvi.dvi_elbo_terms(params, x, y, jnet.config)
        return terms, jnet.elbo(params, x, y, num_data=30, kl_weight=0.3), jnet.predict(params, x)

    j_terms, j_elbo, (j_mean, j_var) = numpyro_side(params, jnp.asarray(x), jnp.asarray(y))

    pyro.clear_param_store()
    tnet = tdvi.DVIMLP(sizes, **kwargs).load_params(params)
    tx, ty = torch.tensor(x), torch.tensor(y)
    t_terms = tdvi.dvi_elbo_terms(tnet.get_params(), tx, ty, tnet.config)
    np.testing.assert_allclose(t_terms.expected_log_likelihood.detach(), j_terms.expected_log_likelihood, rtol=RTOL)
    assert float(t_terms.kl.detach()) == pytest.approx(float(j_terms.kl), rel=RTOL)
    assert float(tnet.elbo(tx, ty, num_data=30, kl_weight=0.3).detach()) == pytest.approx(float(j_elbo), rel=RTOL)
    t_mean, t_var = (v.detach().numpy() for v in tnet.predict(tx))
    np.testing.assert_allclose(t_mean, j_mean, rtol=RTOL)
    np.testing.assert_allclose(t_var, j_var, rtol=RTOL)
    # and back: NumPyro reads Pyro's parameter dictionary (same site names)
    back = jnet.params_from({k: jnp.asarray(v) for k, v in tnet.param_dict().items()})
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("likelihood", "prior"),
    [
        ("heteroscedastic", "empirical_bayes"),
        pytest.param("homoscedastic", "gaussian", marks=pytest.mark.slow),
        pytest.param("categorical", "empirical_bayes", marks=pytest.mark.slow),
    ],
)
def test_same_model_log_joint_at_the_same_weights(likelihood, prior):
    """The Bayesian MLP of both backends (prior, hyperprior, likelihood scaled to num_data) at fixed weights and
    prior variances; NumPyro's SVI parameter dictionary loads into the Pyro network."""
    from numpyro.infer.util import log_density

    sizes = (2, 3, OUTPUTS[likelihood])
    x, y = data(likelihood, seed=3)
    rng = np.random.default_rng(4)
    values = {}
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        for part, shape in (("weight", (d_in, d_out)), ("bias", (d_out,))):
            values[f"dvi.layers.{i}.{part}"] = rng.normal(size=shape)
            if prior == "empirical_bayes":
                values[f"dvi.layers.{i}.{part}_prior_variance"] = rng.uniform(0.5, 2.0)
    params = {}
    if likelihood == "homoscedastic":
        params["dvi.log_noise_variance"] = np.array([-0.3])
    jnet = jdvi.DVIMLP(sizes, likelihood=likelihood, prior=prior)
    j_values = {k: jnp.asarray(v) for k, v in {**values, **params}.items()}
    log_joint = jax.jit(lambda v: log_density(jnet.model, (jnp.asarray(x), jnp.asarray(y)), {"num_data": 12}, v)[0])
    expected = log_joint(j_values)

    pyro.clear_param_store()
    tnet = tdvi.DVIMLP(sizes, likelihood=likelihood, prior=prior)
    j_params = jnet.init(jax.random.PRNGKey(0), dtype=jnp.float64)
    flat = [value for layer in j_params.layers for value in layer]  # DVIParams order, as param_names()
    svi_dict = {**dict(zip(jnet.param_names(), flat, strict=False)), **params}
    tnet.load_params(svi_dict)
    conditioned = pyro.poutine.condition(tnet.model, data={k: torch.tensor(v) for k, v in values.items()})
    trace = pyro.poutine.trace(conditioned).get_trace(torch.tensor(x), torch.tensor(y), num_data=12)
    assert float(trace.log_prob_sum().detach()) == pytest.approx(float(expected), rel=1e-12)
    assert float(tnet.get_params().layers[0].weight_mean.detach()[0, 0]) == float(j_params.layers[0].weight_mean[0, 0])
