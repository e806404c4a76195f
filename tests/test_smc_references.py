"""Self-tests of ``adapters/smc_reference.py`` against independent brute-force computations.

LGSSM: the whole model is one multivariate normal over z = (x_0, ..., x_T, y_1, ..., y_T),
z = B e with independent e = (x_0, w_1..w_T, v_1..v_T); every filter/smoother/twist quantity
is a marginal or conditional of it.  Token HMM: brute-force enumeration of all V^T sequences.
Monte Carlo checks allow 4 standard errors with a fixed seed.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg, stats
from scipy.special import logsumexp

from adapters.smc_reference import (
    LGSSM,
    TokenHMM,
    additive_log_phi,
    backward_information_filter,
    enumerate_log_optimal_twist,
    enumerate_log_Z,
    enumerate_target,
    exact_log_Z_additive,
    kalman_filter,
    log_optimal_twist_additive,
    optimal_log_twists_additive,
    random_lgssm,
    random_token_hmm,
    rts_smoother,
    sample_exact_additive,
    sample_posterior,
    scalar_lgssm,
)

Z_MAX = 4.0
T_GAUSS = 5


class JointGaussian:
    """Mean (n,) and covariance (n, n) of z = (x_{0:T}, y_{1:T}) with index helpers."""

    def __init__(self, model: LGSSM, T: int):
        d, m = model.state_dim, model.obs_dim
        self.d, self.m, self.T = d, m, T
        nx, ny = (T + 1) * d, T * m
        powers = [np.linalg.matrix_power(model.A, k) for k in range(T + 1)]
        lx = np.zeros((nx, nx))  # x_t = A^t x_0 + sum_{s=1}^t A^{t-s} w_s
        for t in range(T + 1):
            for s in range(t + 1):
                lx[t * d : (t + 1) * d, s * d : (s + 1) * d] = powers[t - s]
        c_block = np.kron(np.eye(T), model.C)
        b = np.zeros((nx + ny, nx + ny))
        b[:nx, :nx] = lx
        b[nx:, :nx] = c_block @ lx[d:]
        b[nx:, nx:] = np.eye(ny)
        noise_cov = linalg.block_diag(model.P0, *([model.Q] * T), *([model.R] * T))
        noise_mean = np.concatenate([model.m0, np.zeros(T * d + ny)])
        self.mean = b @ noise_mean
        self.cov = b @ noise_cov @ b.T

    def x(self, t: int) -> np.ndarray:
        return np.arange(t * self.d, (t + 1) * self.d)

    def y(self, start: int, stop: int) -> np.ndarray:
        """Indices of y_start..y_stop (1-based times, inclusive)."""
        offset = (self.T + 1) * self.d
        return np.arange(offset + (start - 1) * self.m, offset + stop * self.m)

    def conditional(self, a: np.ndarray, b: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of z_a | z_b = value."""
        s_ab = self.cov[np.ix_(a, b)]
        s_bb = self.cov[np.ix_(b, b)]
        mean = self.mean[a] + s_ab @ np.linalg.solve(s_bb, value - self.mean[b])
        cov = self.cov[np.ix_(a, a)] - s_ab @ np.linalg.solve(s_bb, s_ab.T)
        return mean, cov


def _models() -> dict[str, LGSSM]:
    rng = np.random.default_rng(0)
    # C sees only the first state and A is diagonal: the second state is never observed, so J_t is singular.
    partial = LGSSM(
        A=np.diag([0.8, 0.5]), Q=np.diag([1.0, 0.3]), C=[[1.0, 0.0]], R=[[0.5]], m0=[0.2, -1.0], P0=np.diag([1.5, 0.7])
    )
    return {
        "random_d2_m1": random_lgssm(rng, 2, 1),
        "random_d3_m2": random_lgssm(rng, 3, 2),
        "scalar": scalar_lgssm(),
        "partially_observed": partial,
    }


MODELS = _models()


@pytest.fixture(params=list(MODELS))
def case(request):
    model = MODELS[request.param]
    _, ys = model.simulate(np.random.default_rng(1), T_GAUSS)
    return model, ys, JointGaussian(model, T_GAUSS)


def test_simulate_shapes():
    xs, ys = random_lgssm(np.random.default_rng(2), 3, 2).simulate(np.random.default_rng(3), 7)
    assert xs.shape == (8, 3) and ys.shape == (7, 2)


def test_scalar_one_step_log_Z():
    a, q, c, r, m0, p0 = 0.7, 0.5, 2.0, 0.3, 1.0, 2.0
    y = np.array([[0.4]])
    expected = stats.norm(c * a * m0, np.sqrt(c**2 * (a**2 * p0 + q) + r)).logpdf(0.4)
    assert kalman_filter(scalar_lgssm(a, q, c, r, m0, p0), y).log_Z == pytest.approx(expected, rel=1e-12)


def test_kalman_matches_joint_gaussian(case):
    model, ys, joint = case
    result = kalman_filter(model, ys)
    y_all = joint.y(1, T_GAUSS)
    expected = stats.multivariate_normal(joint.mean[y_all], joint.cov[np.ix_(y_all, y_all)]).logpdf(ys.ravel())
    assert result.log_Z == pytest.approx(expected, rel=1e-10)
    assert result.log_Z == pytest.approx(np.sum(result.log_Z_increments), rel=1e-12)
    for t in range(1, T_GAUSS + 1):
        mean, cov = joint.conditional(joint.x(t), joint.y(1, t), ys[:t].ravel())
        np.testing.assert_allclose(result.filter_means[t - 1], mean, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(result.filter_covs[t - 1], cov, rtol=1e-9, atol=1e-10)
        if t > 1:
            mean, cov = joint.conditional(joint.x(t), joint.y(1, t - 1), ys[: t - 1].ravel())
        else:
            mean, cov = joint.mean[joint.x(1)], joint.cov[np.ix_(joint.x(1), joint.x(1))]
        np.testing.assert_allclose(result.pred_means[t - 1], mean, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(result.pred_covs[t - 1], cov, rtol=1e-9, atol=1e-10)


def test_backward_information_is_exact_future_likelihood(case):
    model, ys, joint = case
    info = backward_information_filter(model, ys)
    assert len(info) == T_GAUSS + 1
    J_T, h_T, c_T = info[T_GAUSS]
    assert not J_T.any() and not h_T.any() and c_T == 0.0
    points = np.random.default_rng(4).normal(scale=2.0, size=(3, model.state_dim))
    for t in range(T_GAUSS):
        J, h, c = info[t]
        np.testing.assert_allclose(J, J.T, atol=1e-12)
        assert np.linalg.eigvalsh(J).min() > -1e-10
        future = joint.y(t + 1, T_GAUSS)
        for x in points:
            mean, cov = joint.conditional(future, joint.x(t), x)
            expected = stats.multivariate_normal(mean, cov).logpdf(ys[t:].ravel())
            assert -0.5 * x @ J @ x + h @ x + c == pytest.approx(expected, rel=1e-9)
        np.testing.assert_allclose(info.log_twist(t, points), [-0.5 * x @ J @ x + h @ x + c for x in points])


def test_backward_information_integrates_to_log_Z(case):
    """log p(y_{1:T}) = log of the integral of N(x_0; m0, P0) exp(-0.5 x^T J_0 x + h_0^T x + c_0)."""
    model, ys, _ = case
    J, h, c = backward_information_filter(model, ys)[0]
    p0_inv = np.linalg.inv(model.P0)
    b = p0_inv @ model.m0 + h
    log_integral = (
        c
        - 0.5 * np.linalg.slogdet(np.eye(model.state_dim) + model.P0 @ J)[1]
        + 0.5 * b @ np.linalg.solve(p0_inv + J, b)
        - 0.5 * model.m0 @ p0_inv @ model.m0
    )
    assert log_integral == pytest.approx(kalman_filter(model, ys).log_Z, rel=1e-10)


def test_partially_observed_twist_is_singular():
    model = MODELS["partially_observed"]
    _, ys = model.simulate(np.random.default_rng(5), T_GAUSS)
    J = backward_information_filter(model, ys).J
    assert np.all(np.abs(J[:T_GAUSS, 1, :]) < 1e-14) and np.all(J[:T_GAUSS, 0, 0] > 0)


def test_rts_matches_joint_gaussian(case):
    model, ys, joint = case
    means, covs = rts_smoother(model, ys)
    assert means.shape == (T_GAUSS + 1, model.state_dim)
    for t in range(T_GAUSS + 1):
        mean, cov = joint.conditional(joint.x(t), joint.y(1, T_GAUSS), ys.ravel())
        np.testing.assert_allclose(means[t], mean, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(covs[t], cov, rtol=1e-9, atol=1e-10)


def test_ffbs_draws_match_joint_posterior():
    """Means, variances and lag-one cross-covariances of FFBS draws vs the exact joint posterior."""
    model = MODELS["random_d2_m1"]
    _, ys = model.simulate(np.random.default_rng(6), T_GAUSS)
    joint = JointGaussian(model, T_GAUSS)
    n = 4000
    xs = sample_posterior(model, ys, np.random.default_rng(7), n)
    assert xs.shape == (n, T_GAUSS + 1, model.state_dim)
    nx = (T_GAUSS + 1) * model.state_dim
    mean, cov = joint.conditional(np.arange(nx), joint.y(1, T_GAUSS), ys.ravel())
    means_rts, covs_rts = rts_smoother(model, ys)
    np.testing.assert_allclose(mean.reshape(T_GAUSS + 1, -1), means_rts, rtol=1e-9, atol=1e-10)
    flat = xs.reshape(n, nx)
    sd = np.sqrt(np.diag(cov))
    z_mean = (flat.mean(axis=0) - mean) / (sd / np.sqrt(n))
    assert np.abs(z_mean).max() < Z_MAX, z_mean
    centred = flat - mean
    d = model.state_dim
    for i in range(nx):
        for j in range(i, min(nx, i + 2 * d)):  # within-time and lag-one blocks
            products = centred[:, i] * centred[:, j]
            se = np.sqrt((cov[i, i] * cov[j, j] + cov[i, j] ** 2) / n)
            z = (products.mean() - cov[i, j]) / se
            assert abs(z) < Z_MAX, (i, j, z)


# ---------------------------------------------------------------------------------------------
# Token HMM
# ---------------------------------------------------------------------------------------------

V, T_TOK = 3, 4


@pytest.fixture
def hmm_and_g():
    rng = np.random.default_rng(10)
    return random_token_hmm(rng, V), rng.normal(size=(T_TOK, V))


def _brute_log_twist(hmm: TokenHMM, log_phi_fn, prefix: np.ndarray) -> float:
    """log psi*(prefix) = log Z + log sigma(x_{0:k-1} = prefix) - log p0(prefix), from the enumerated target."""
    sequences, probs = enumerate_target(hmm, log_phi_fn, T_TOK)
    k = len(prefix)
    mass = probs[np.all(sequences[:, :k] == prefix, axis=1)].sum()
    return enumerate_log_Z(hmm, log_phi_fn, T_TOK) + np.log(mass) - hmm.log_prob(np.asarray(prefix))


def test_token_hmm_prior_sums_to_one(hmm_and_g):
    hmm, _ = hmm_and_g
    sequences, probs = enumerate_target(hmm, lambda x: 0.0, T_TOK)
    assert sequences.shape == (V**T_TOK, T_TOK)
    np.testing.assert_allclose(probs, np.exp(hmm.log_prob(sequences)), rtol=1e-12)
    assert enumerate_log_Z(hmm, lambda x: 0.0, T_TOK) == pytest.approx(0.0, abs=1e-12)


def test_additive_log_Z_matches_enumeration(hmm_and_g):
    hmm, g = hmm_and_g
    brute = logsumexp([hmm.log_prob(x) + np.sum(g[np.arange(T_TOK), x]) for x in np.ndindex(*([V] * T_TOK))])
    assert exact_log_Z_additive(hmm, g) == pytest.approx(brute, rel=1e-12)
    assert enumerate_log_Z(hmm, additive_log_phi(g), T_TOK) == pytest.approx(brute, rel=1e-12)


def test_additive_optimal_twists_match_enumeration(hmm_and_g):
    hmm, g = hmm_and_g
    L = optimal_log_twists_additive(hmm, g)
    assert L.shape == (T_TOK, V) and not L[-1].any()
    log_phi = additive_log_phi(g)
    rng = np.random.default_rng(11)
    prefixes = [rng.integers(V, size=T_TOK - 1) for _ in range(3)]  # t = T-1
    prefixes += [rng.integers(V, size=k) for k in (1, 2, 1, 2)]
    for prefix in prefixes:
        expected = _brute_log_twist(hmm, log_phi, prefix)
        assert log_optimal_twist_additive(hmm, g, prefix) == pytest.approx(expected, rel=1e-10)
        assert enumerate_log_optimal_twist(hmm, log_phi, T_TOK, prefix) == pytest.approx(expected, rel=1e-10)
    full = rng.integers(V, size=T_TOK)
    assert log_optimal_twist_additive(hmm, g, full) == pytest.approx(log_phi(full), rel=1e-12)
    assert log_optimal_twist_additive(hmm, g, []) == pytest.approx(exact_log_Z_additive(hmm, g), rel=1e-12)


def test_enumerated_twist_is_a_martingale_for_general_potential(hmm_and_g):
    """psi*(x_{0:k-1}) = sum_v M[x_{k-1}, v] psi*(x_{0:k-1}, v) for a non-additive potential."""
    hmm, _ = hmm_and_g

    def log_phi(x):
        return -1.5 * float(np.sum(x[1:] == x[:-1])) + 0.7 * float(x[0] == x[-1])

    for prefix in ([2], [0, 1], [1, 1, 0]):
        children = [enumerate_log_optimal_twist(hmm, log_phi, T_TOK, [*prefix, v]) for v in range(V)]
        expected = logsumexp(np.array(children) + hmm.log_M[prefix[-1]])
        assert enumerate_log_optimal_twist(hmm, log_phi, T_TOK, prefix) == pytest.approx(expected, rel=1e-10)
        assert _brute_log_twist(hmm, log_phi, np.array(prefix)) == pytest.approx(expected, rel=1e-10)
    children = [enumerate_log_optimal_twist(hmm, log_phi, T_TOK, [v]) for v in range(V)]
    assert logsumexp(np.array(children) + hmm.log_pi) == pytest.approx(enumerate_log_Z(hmm, log_phi, T_TOK))


def test_exact_additive_samples_match_enumeration(hmm_and_g):
    hmm, g = hmm_and_g
    n = 20_000
    draws = sample_exact_additive(hmm, g, np.random.default_rng(12), n)
    assert draws.shape == (n, T_TOK) and draws.dtype.kind == "i"
    sequences, probs = enumerate_target(hmm, additive_log_phi(g), T_TOK)
    codes = draws @ (V ** np.arange(T_TOK - 1, -1, -1))  # lexicographic index, as in enumerate_target
    counts = np.bincount(codes, minlength=V**T_TOK)
    assert stats.chisquare(counts, probs * n).pvalue > 1e-4
    for t in range(T_TOK):
        marginal = np.array([probs[sequences[:, t] == v].sum() for v in range(V)])
        freq = np.bincount(draws[:, t], minlength=V) / n
        z = (freq - marginal) / np.sqrt(marginal * (1 - marginal) / n)
        assert np.abs(z).max() < Z_MAX, (t, z)


def test_enumeration_guard():
    with pytest.raises(ValueError, match="exceeds"):
        enumerate_log_Z(random_token_hmm(np.random.default_rng(0), 10), lambda x: 0.0, 6)
