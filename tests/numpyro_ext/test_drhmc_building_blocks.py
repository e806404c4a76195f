"""The NumPyro building blocks DR-HMC, AIS and MINE-AIS share: numpyro_ext.infer.hmc_util and model_util.

Exact identities where there are some (the leapfrog-and-flip map is an involution; a momentum
``r = C^{-T} e`` from noise ``e`` has ``r^T M^{-1} r = e^T e``), the Metropolis test's rules on
non-finite and divergent proposals, and the prior/likelihood split of a model against scipy.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

from numpyro_ext.infer.hmc_util import (
    IntegratorState,
    hmc_proposal,
    kinetic_energy,
    leapfrog_involution,
    metropolis_test,
    momentum_from_noise,
    sample_momentum,
)
from numpyro_ext.infer.model_util import check_continuous_latents, check_latent_samples, flat_model, trace_model

DENSE = jnp.array([[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]])
DIAG = jnp.array([2.0, 1.0, 0.5])


def log_density(x):
    return -0.5 * jnp.sum(x**2 * jnp.arange(1.0, 4.0)) - 0.1 * jnp.sum(x**4)


def start_point(momentum):
    position = jnp.array([0.3, -1.0, 0.8])
    value, grad = jax.value_and_grad(log_density)(position)
    return IntegratorState(position, momentum, value, grad)


@pytest.mark.parametrize("inverse_mass_matrix", [DIAG, DENSE], ids=["diag", "dense"])
def test_leapfrog_with_flip_is_an_involution(inverse_mass_matrix):
    start = start_point(jnp.array([0.5, 0.2, -1.1]))
    involution = leapfrog_involution(log_density, inverse_mass_matrix, 0.1, 7)
    once, steps = involution(start)
    twice, _ = involution(once)
    assert int(steps) == 7 and not np.allclose(once.position, start.position)
    for got, want in zip(twice, start, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("inverse_mass_matrix", [DIAG, DENSE], ids=["diag", "dense"])
def test_momentum_from_noise_has_covariance_m(inverse_mass_matrix):
    """``2 K(r) = r^T M^{-1} r = e^T e`` exactly, and a batch of noise is the batch of momenta."""
    noise = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    momenta = momentum_from_noise(noise, inverse_mass_matrix)
    one_by_one = jnp.stack([momentum_from_noise(e, inverse_mass_matrix) for e in noise])
    np.testing.assert_allclose(momenta, one_by_one, rtol=1e-12)
    np.testing.assert_allclose(2 * kinetic_energy(inverse_mass_matrix, momenta), jnp.sum(noise**2, -1), rtol=1e-12)
    single = jnp.stack([kinetic_energy(inverse_mass_matrix, r) for r in momenta])
    np.testing.assert_allclose(kinetic_energy(inverse_mass_matrix, momenta), single, rtol=1e-12)
    key = jax.random.PRNGKey(1)
    np.testing.assert_array_equal(
        sample_momentum(key, inverse_mass_matrix, noise[0]),
        momentum_from_noise(jax.random.normal(key, (3,)), inverse_mass_matrix),
    )


def test_metropolis_test_rules():
    log_u = jnp.log(jnp.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.999]))
    start = jnp.array([0.0, 0.0, 0.0, -jnp.inf, 0.0, 0.0])
    end = jnp.array([1.0, jnp.nan, jnp.inf, -3.0, -2000.0, -0.5])
    info = metropolis_test(log_u, start, end, max_delta_energy=1000.0)
    # uphill: accepted with probability 1; NaN or +inf: zero density, rejected and divergent; from a
    # zero-density start any finite proposal; an energy error above 1000: divergent; else a coin flip
    np.testing.assert_array_equal(info.is_accepted, [True, False, False, True, False, False])
    np.testing.assert_array_equal(info.is_divergent, [False, True, True, False, True, False])
    np.testing.assert_allclose(info.log_accept_prob, [0.0, -np.inf, -np.inf, 0.0, -2000.0, -0.5])
    np.testing.assert_allclose(np.asarray(info.energy_error)[[0, 4, 5]], [-1.0, 2000.0, 0.5])


def test_hmc_proposal_on_independent_chains_side_by_side_is_each_chains_proposal():
    """Chains ``(N, d)`` with one vector-Jacobian product give each chain's own proposal and test."""
    positions = jax.random.normal(jax.random.PRNGKey(2), (4, 3))
    momenta = jax.random.normal(jax.random.PRNGKey(3), (4, 3))
    log_u = jnp.log(jax.random.uniform(jax.random.PRNGKey(4), (4,)))

    def batched(x):
        return jax.vmap(log_density)(x)

    def value_and_grad(x):
        values, vjp = jax.vjp(batched, x)
        return values, vjp(jnp.ones_like(values))[0]

    values, grads = value_and_grad(positions)
    start = IntegratorState(positions, momenta, values, grads)
    end, info = hmc_proposal(start, log_u, None, DIAG, 0.2, 5, value_and_grad=value_and_grad)
    for i in range(4):
        one_start = IntegratorState(positions[i], momenta[i], values[i], grads[i])
        one_end, one_info = hmc_proposal(one_start, log_u[i], log_density, DIAG, 0.2, 5)
        np.testing.assert_allclose(end.position[i], one_end.position, rtol=1e-12)
        assert bool(info.is_accepted[i]) == bool(one_info.is_accepted)
        np.testing.assert_allclose(info.log_accept_prob[i], one_info.log_accept_prob, rtol=1e-10, atol=1e-12)


# ---- model_util ------------------------------------------------------------------------------
def gamma_normal(y):
    scale = numpyro.sample("scale", dist.Gamma(2.0, 1.0))
    loc = numpyro.sample("loc", dist.Normal(0.0, 3.0))
    numpyro.deterministic("precision", 1.0 / scale**2)
    numpyro.sample("y", dist.Normal(loc, scale), obs=y)


def test_flat_model_splits_prior_and_likelihood():
    y = jnp.array([0.4, -1.2, 2.0])
    flat = flat_model(gamma_normal, (y,), {}, "AIS")
    assert flat.latent == ["loc", "scale"] and flat.observed == ["y"]
    x = jnp.array([0.7, math.log(1.5)])  # sorted sites: loc, then log(scale)
    # the prior in the unconstrained space carries the log Jacobian of exp (+ log scale)
    prior = stats.gamma(2.0).logpdf(1.5) + math.log(1.5) + stats.norm(0.0, 3.0).logpdf(0.7)
    likelihood = stats.norm(0.7, 1.5).logpdf(np.asarray(y)).sum()
    np.testing.assert_allclose(flat.log_prior(x), prior, rtol=1e-12)
    np.testing.assert_allclose(flat.log_likelihood(x), likelihood, rtol=1e-10)
    np.testing.assert_allclose(flat.log_joint(x), prior + likelihood, rtol=1e-12)
    values = flat.constrain(x)
    np.testing.assert_allclose([values["scale"], values["precision"]], [1.5, 1.0 / 1.5**2], rtol=1e-12)
    np.testing.assert_allclose(flat.unconstrain({"loc": 0.7, "scale": 1.5}), x, rtol=1e-12)
    draw = flat.sample_prior(jax.random.PRNGKey(0))
    assert draw.shape == (2,) and np.all(np.isfinite(draw))


def test_discrete_latents_missing_latents_and_samples_are_named():
    def discrete(y):
        k = numpyro.sample("k", dist.Poisson(3.0))
        numpyro.sample("y", dist.Normal(k, 1.0), obs=y)

    message = r"model: DRHMC needs continuous latent sites, but \['k'\] are discrete; marginalise them out"
    with pytest.raises(ValueError, match=message):
        check_continuous_latents(trace_model(discrete, (1.0,), {}), "DRHMC")
    with pytest.raises(ValueError, match=r"AIS needs continuous latent sites, but \['k'\]"):
        flat_model(discrete, (1.0,), {}, "AIS")
    with pytest.raises(ValueError, match="AIS needs at least one latent sample site"):
        flat_model(lambda: numpyro.sample("y", dist.Normal(), obs=1.0), (), {}, "AIS")
    with pytest.raises(ValueError, match=r"posterior_samples is missing the latent sites \['scale'\]"):
        check_latent_samples({"loc": jnp.zeros(2)}, ["loc", "scale"])
    with pytest.raises(ValueError, match="posterior_samples must be a dict of constrained latent sites"):
        check_latent_samples(jnp.zeros((2, 2)), ["loc", "scale"])
