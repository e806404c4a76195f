"""The Pyro building blocks AIS and the MI bounds stand on: ``pyro_ext.infer.hmc_util`` and ``model_util``.

* HMC pieces: one chain ``(d,)`` and a batch ``(K, d)`` agree row by row, a diagonal inverse
  mass matrix is the dense one with that diagonal, ``None`` is the identity; momenta have
  covariance ``M``; the leapfrog is reversible and nearly conserves energy; the Metropolis test
  rejects invalid proposals and flags divergences.
* Model plumbing: the flat prior and likelihood of a small model against hand-written densities
  (Jacobian included), constrain/unconstrain round trip, the discrete-latent message.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_ext.infer.hmc_util import (
    IntegratorState,
    finite_or_neg_inf,
    kinetic_energy,
    leapfrog,
    metropolis_test,
    sample_momentum,
    velocity,
)
from pyro_ext.infer.model_util import check_continuous_latents, flat_model

F64 = torch.float64
DENSE = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 2.0]], dtype=F64)
DIAG = torch.tensor([0.7, 1.3, 2.0], dtype=F64)


@pytest.mark.parametrize("imm", [None, DIAG, DENSE], ids=["identity", "diagonal", "dense"])
def test_one_chain_and_a_batch_agree(imm):
    momenta = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    batched_v, batched_k = velocity(imm, momenta), kinetic_energy(imm, momenta)
    assert batched_v.shape == (5, 3) and batched_k.shape == (5,)
    for row in range(5):
        torch.testing.assert_close(velocity(imm, momenta[row]), batched_v[row], rtol=1e-14, atol=1e-14)
        one = kinetic_energy(imm, momenta[row])
        assert one.dim() == 0
        torch.testing.assert_close(one, batched_k[row], rtol=1e-14, atol=1e-14)
    full = torch.eye(3, dtype=F64) if imm is None else (torch.diag(imm) if imm.dim() == 1 else imm)
    torch.testing.assert_close(batched_k, 0.5 * torch.einsum("ki,ij,kj->k", momenta, full, momenta))


def test_diagonal_is_the_dense_matrix_with_that_diagonal():
    momenta = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(velocity(DIAG, momenta), velocity(torch.diag(DIAG), momenta))
    torch.testing.assert_close(kinetic_energy(DIAG, momenta), kinetic_energy(torch.diag(DIAG), momenta))
    ones = torch.ones(3, dtype=F64)
    assert torch.equal(velocity(None, momenta), velocity(ones, momenta))


def test_sample_momentum_has_covariance_m_and_one_randn():
    """``r ~ N(0, M)`` with ``M = inv(M^{-1})``: empirical covariance of 200k draws within 2%.

    One draw is one ``randn`` of ``like``'s shape: the same generator state gives the same noise."""
    like = torch.zeros(200_000, 3, dtype=F64)
    draws = sample_momentum(torch.Generator().manual_seed(1), DENSE, like)
    torch.testing.assert_close(torch.cov(draws.T), torch.linalg.inv(DENSE), rtol=0.02, atol=0.01)
    noise = torch.randn(like.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert torch.equal(sample_momentum(torch.Generator().manual_seed(1), None, like), noise)
    torch.testing.assert_close(
        sample_momentum(torch.Generator().manual_seed(1), DIAG, like), noise / DIAG.sqrt(), rtol=0, atol=0
    )
    # one chain (d,): the same triangular solve, one column
    single = sample_momentum(torch.Generator().manual_seed(2), DENSE, torch.zeros(3, dtype=F64))
    noise = torch.randn(3, generator=torch.Generator().manual_seed(2), dtype=F64)
    cholesky = torch.linalg.cholesky(DENSE)
    torch.testing.assert_close(single, torch.linalg.solve(cholesky.T, noise), rtol=1e-13, atol=1e-13)


def _gaussian(q, p, i):
    """``log pi = -|q|^2 / 2`` of a batch, for :func:`leapfrog`."""
    return q, -0.5 * (q**2).sum(-1), -q


def test_leapfrog_is_reversible_and_nearly_conserves_energy():
    q0 = torch.randn(6, 3, dtype=F64)
    p0 = sample_momentum(None, DENSE, q0)
    start = IntegratorState(q0, p0, -0.5 * (q0**2).sum(-1), -q0)
    end = leapfrog(start, _gaussian, 0.05, DENSE, 40)
    energy = lambda s: -s.logdensity + kinetic_energy(DENSE, s.momentum)  # noqa: E731
    assert torch.all((energy(end) - energy(start)).abs() < 1e-2)
    back = leapfrog(end._replace(momentum=-end.momentum), _gaussian, 0.05, DENSE, 40)
    torch.testing.assert_close(back.position, q0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(-back.momentum, p0, rtol=1e-10, atol=1e-10)


def test_leapfrog_lets_evaluate_replace_the_position():
    """A chain that ``evaluate`` freezes stays at its start (AIS's handling of non-finite points)."""
    q0 = torch.zeros(2, 3, dtype=F64)

    def frozen_row_one(q, p, i):
        q = torch.where(torch.tensor([[False], [True]]), q0, q)
        return q, -0.5 * (q**2).sum(-1), -q

    end = leapfrog(
        IntegratorState(q0, torch.ones(2, 3, dtype=F64), torch.zeros(2, dtype=F64), q0), frozen_row_one, 0.1, None, 5
    )
    assert torch.equal(end.position[1], q0[1]) and not torch.equal(end.position[0], q0[0])


def test_metropolis_test_rejects_invalid_and_flags_divergences():
    delta = torch.tensor([0.0, -2000.0, math.nan, 1.0, -0.5], dtype=F64)
    valid = torch.tensor([True, True, True, False, True])
    info = metropolis_test(torch.Generator().manual_seed(0), delta, delta, valid, max_delta_energy=1000.0)
    assert info.is_accepted[0] and not info.is_accepted[1:4].any()
    assert info.log_accept_prob[3] == -math.inf and info.log_accept_prob[0] == 0.0
    # rejected with an energy error of 2000 > 1000, and invalid: divergent; a NaN the caller calls valid is not
    assert info.is_divergent.tolist() == [False, True, False, True, False]
    # the default validity is a finite delta: NaN is rejected and divergent
    default = metropolis_test(None, torch.tensor([math.nan, 0.0], dtype=F64), torch.zeros(2, dtype=F64))
    assert default.is_divergent.tolist() == [True, False] and default.is_accepted.tolist() == [False, True]


def test_finite_or_neg_inf_maps_nan_and_plus_inf_to_zero_density():
    value = torch.tensor([1.5, math.nan, math.inf, -math.inf], dtype=F64)
    assert finite_or_neg_inf(value).tolist() == [1.5, -math.inf, -math.inf, -math.inf]


# ---------------------------------------------------------------------------------------
# Model plumbing
# ---------------------------------------------------------------------------------------
def _model(y):
    scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=F64), 1.0))
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
    pyro.deterministic("total", loc.sum())
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(loc.sum(), scale), obs=y)


def test_flat_model_splits_prior_and_likelihood_with_the_jacobian():
    """``x = (loc (2,), log scale)`` (latent sites sorted): the prior includes ``log|d scale / d log scale|``."""
    y = torch.tensor([0.2, -0.4, 1.0], dtype=F64)
    flat = flat_model(_model, (y,), {}, "AIS")
    # Pyro records a deterministic site as an observed Delta site (log probability 0)
    assert flat.latent == ["loc", "scale"] and flat.observed == ["total", "y"]
    x = torch.tensor([[0.1, -0.3, 0.4], [1.0, 0.5, -1.2]], dtype=F64)
    loc, log_scale = x[:, :2], x[:, 2]
    scale = log_scale.exp()
    prior = (
        dist.Normal(0.0, 1.0).log_prob(loc).sum(-1)
        + dist.LogNormal(torch.tensor(0.0, dtype=F64), 1.0).log_prob(scale)
        + log_scale
    )
    likelihood = dist.Normal(loc.sum(-1, keepdim=True), scale[:, None]).log_prob(y).sum(-1)
    torch.testing.assert_close(flat.log_prior(x), prior)
    torch.testing.assert_close(flat.log_likelihood(x), likelihood)
    values = flat.constrain(x)
    torch.testing.assert_close(values["total"], loc.sum(-1))
    torch.testing.assert_close(flat.unconstrain({"loc": values["loc"], "scale": values["scale"]}), x)
    pyro.set_rng_seed(0)
    assert flat.sample_prior(4).shape == (4, 3)


def test_discrete_latent_sites_are_named():
    def discrete():
        k = pyro.sample("k", dist.Poisson(3.0))
        pyro.sample("y", dist.Normal(k, 1.0), obs=torch.tensor(2.0))

    trace = pyro.poutine.trace(discrete).get_trace()
    with pytest.raises(ValueError, match=r"^model: AIS needs continuous latent sites, but \['k'\] are discrete; "):
        check_continuous_latents(trace, "AIS")
    with pytest.raises(ValueError, match=r"needs at least one latent sample site"):
        flat_model(lambda: pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0)), (), {})
