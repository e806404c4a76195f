"""Matrix optimizers on a guide's parameters (issue 20): which leaves they take, and the exact answer they reach.

An AutoNormal guide on a Bayesian linear regression ``Y = X W + noise`` (``W`` of shape (5, 3), N(0, 1)
prior, known noise scale) has a closed-form optimum: the posterior of each column of ``W`` is
Gaussian with precision ``Λ = X^T X / σ² + I``, and the best mean-field Gaussian has ``loc`` the
posterior mean and ``scale_i = 1 / sqrt(Λ_ii)``.  SWAN's row centring cannot move the row sums of
``W_auto_loc``, so before the fix ``swan`` ended 20 posterior sds away; by default a matrix method now
leaves a guide's locations and scales to AdamW.
"""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_median

from numpyro_ext.optim import alice, ifshampoo, racs, sinkgd, swan
from numpyro_ext.optim.common import matrix_labels

P, K, N, SIGMA, STEPS = 5, 3, 100, 0.5, 400


def regression() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Data ``(X, Y)`` and the exact mean-field optimum ``(loc, scale)`` of ``W``."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, P))
    y = x @ rng.normal(size=(P, K)) + SIGMA * rng.normal(size=(N, K))
    precision = x.T @ x / SIGMA**2 + np.eye(P)
    loc = np.linalg.solve(precision, x.T @ y / SIGMA**2)
    scale = np.broadcast_to(1.0 / np.sqrt(np.diag(precision))[:, None], (P, K))
    return x, y, loc, scale


def model(x, y=None):
    w = numpyro.sample("W", dist.Normal(0.0, 1.0).expand([P, K]).to_event(2))
    numpyro.sample("y", dist.Normal(x @ w, SIGMA).to_event(2), obs=y)


def fit(optimizer: optax.GradientTransformation) -> tuple[np.ndarray, np.ndarray]:
    x, y, _, _ = regression()
    guide = AutoNormal(model, init_loc_fn=init_to_median)
    svi = SVI(model, guide, optimizer, Trace_ELBO(num_particles=8, vectorize_particles=True))
    result = svi.run(jax.random.PRNGKey(0), STEPS, x, y, progress_bar=False)
    return np.asarray(result.params["W_auto_loc"]), np.asarray(result.params["W_auto_scale"])


def schedule() -> optax.Schedule:
    """0.1 down to 0.002 over the run: the last steps average the ELBO gradient noise away."""
    return optax.exponential_decay(0.1, STEPS, 0.02)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda lr: swan(lr), id="swan"),
        pytest.param(lambda lr: sinkgd(lr), id="sinkgd", marks=pytest.mark.slow),
        pytest.param(lambda lr: racs(lr), id="racs"),
        pytest.param(lambda lr: alice(lr), id="alice"),
    ],
)
def test_matrix_method_reaches_exact_mean_field_optimum(make):
    # with 8 particles and the learning rate down to 0.002, AdamW's last iterate is within
    # 0.3 posterior sd of the optimum (and the scales within 20%); SWAN on W_auto_loc ends >10 sd off
    loc, scale = fit(make(schedule()))
    _, _, exact_loc, exact_scale = regression()
    assert np.max(np.abs(loc - exact_loc) / exact_scale) < 0.3
    assert np.max(np.abs(np.log(scale / exact_scale))) < 0.2


def test_matrix_labels_leave_guide_parameters_to_adamw():
    params = {
        "W_auto_loc": np.zeros((5, 3)),
        "W_auto_scale": np.ones((5, 3)),
        "auto_scale_tril": np.eye(4),
        "W_loc": np.zeros((5, 3)),
        "net$params": {"Dense_0": {"kernel": np.zeros((4, 8)), "bias": np.zeros(8)}},
        "W": np.zeros((5, 3)),
    }
    labels = matrix_labels(params)
    assert labels["W_auto_loc"] == labels["W_auto_scale"] == labels["auto_scale_tril"] == labels["W_loc"] == "fallback"
    assert labels["net$params"]["Dense_0"] == {"kernel": "matrix", "bias": "fallback"}
    assert labels["W"] == "matrix"
    everything = matrix_labels(params, "all")
    assert everything["W_auto_loc"] == everything["auto_scale_tril"] == "matrix"
    assert everything["net$params"]["Dense_0"]["bias"] == "fallback"
    chosen = matrix_labels(params, lambda name: name == "net$params/Dense_0/kernel")
    assert chosen["net$params"]["Dense_0"]["kernel"] == "matrix" and chosen["W"] == "fallback"


def test_matrix_params_opt_in_moves_guide_locations_with_swan():
    # opting in gives SWAN's centred update (a 5 x 3 leaf is whitened through its transpose, so its
    # columns are centred): the column sums of W_auto_loc can never move; by default AdamW moves them
    params = {"W_auto_loc": np.zeros((5, 3))}
    opt = swan(0.1, matrix_params="all")
    grads = {"W_auto_loc": np.arange(1.0, 16.0).reshape(5, 3)}
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(np.sum(updates["W_auto_loc"], axis=0), 0.0, atol=1e-5)
    default = swan(0.1)
    updates, _ = default.update(grads, default.init(params), params)
    np.testing.assert_allclose(updates["W_auto_loc"], -0.1, rtol=1e-5)  # AdamW's first step: -lr * sign(grad)


@pytest.mark.parametrize("make", [swan, sinkgd, racs, alice])
def test_matrix_params_must_be_none_all_or_callable(make):
    with pytest.raises(ValueError, match="matrix_params must be None"):
        make(0.01, matrix_params="weights")


def test_alice_default_rank_fits_every_matrix_shape():
    params = {"a": np.ones((2, 7)), "b": np.ones((9, 4)), "c": np.ones((3, 3))}
    opt = alice(0.01, matrix_params="all")
    updates, state = jax.jit(opt.update)(params, opt.init(params), params)
    # rank min(m, n) // 4, at least 1: the bases are 2 x 1, 4 x 1 (the 9 x 4 leaf through its transpose), 3 x 1
    bases = [leaf.basis.shape for leaf in state.inner_states["matrix"].inner_state[0].leaves]
    assert bases == [(2, 1), (4, 1), (3, 1)]
    assert all(np.all(np.isfinite(u)) for u in jax.tree_util.tree_leaves(updates))


def test_ifshampoo_on_a_summed_elbo_stops_with_what_to_pass():
    # the ELBO sums 100 data points; without loss_scale the root-free step blows up.  Before the fix the run
    # went on with NaN parameters; now the first non-finite update stops it with the torch optimizer's message
    x, y, _, _ = regression()
    svi = SVI(model, AutoNormal(model), ifshampoo(0.1), Trace_ELBO())
    with pytest.raises(Exception, match="IFShampoo: the update is not finite.*pass loss_scale=N"):
        jax.block_until_ready(svi.run(jax.random.PRNGKey(0), 10, x, y, progress_bar=False).params)


@pytest.mark.parametrize("make", [swan, sinkgd])
@pytest.mark.parametrize("value", ["0.1", None, -1.0])
def test_learning_rate_that_is_not_a_number_names_the_argument(make, value):
    # before: swan("0.1") and sinkgd("0.1") passed the check and failed later inside optax
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        make(value)
