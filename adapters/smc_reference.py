"""Exact ground-truth references for (twisted) sequential Monte Carlo, shared by tests and benchmarks.

Two model families whose normalising constants, optimal twists and posteriors are known
exactly, written in plain NumPy/SciPy float64 so they are independent of the JAX/torch code
they check (backend-free: no JAX or torch import).

**Linear-Gaussian state-space model (LGSSM)**, state dimension ``d``, observation dimension ``m``::

    x_0 ~ N(m0, P0)
    x_t = A x_{t-1} + w_t,   w_t ~ N(0, Q),     t = 1..T
    y_t = C x_t + v_t,       v_t ~ N(0, R),     t = 1..T

There is no observation of ``x_0``.  Provided: the Kalman filter (exact ``log p(y_{1:T})``),
the backward information filter (exact ``log p(y_{t+1:T} | x_t)``, i.e. the optimal twists),
the Rauch-Tung-Striebel smoother and exact joint posterior draws (forward filtering,
backward sampling).

**Token HMM ("toy language model")**, vocabulary size ``V``, sequences ``x_{1:T}`` with::

    p0(x_1) = pi[x_1],   p0(x_t | x_{t-1}) = M[x_{t-1}, x_t]

and a potential ``phi(x_{1:T})`` defining the target ``sigma(x) = p0(x) phi(x) / Z``.  For an
additive log-potential ``log phi(x) = sum_t g[t, x_t]`` everything is exact by forward/backward
recursions; for an arbitrary ``log phi`` callable everything is by brute-force enumeration of
all ``V^T`` sequences.  Arrays use 0-based time: row ``t`` of ``g`` belongs to token ``x_{t+1}``.

Optimal-twist convention (both families): ``psi*_t(x_{1:t}) = E_{p0}[phi(x_{1:T}) | x_{1:t}]``,
the expected potential of the completions of a prefix; with it, twisted SMC has zero-variance
weights, ``psi*_0 = Z`` and ``psi*_T = phi``.  For the LGSSM, ``phi = p(y_{1:T} | x_{0:T})`` and
the part of ``psi*_t`` that depends on the future is ``p(y_{t+1:T} | x_t)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import linalg
from scipy.special import logsumexp

_LOG_2PI = float(np.log(2.0 * np.pi))


# ---------------------------------------------------------------------------------------------
# Linear-algebra helpers
# ---------------------------------------------------------------------------------------------


def _symmetrize(matrix: np.ndarray) -> np.ndarray:
    """(S + S^T) / 2."""
    return 0.5 * (matrix + matrix.T)


def _mvn_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    """log N(x; mean, cov) = -0.5 [k log 2 pi + log|cov| + (x - mean)^T cov^{-1} (x - mean)], x (k,)."""
    chol = linalg.cholesky(cov, lower=True)
    z = linalg.solve_triangular(chol, x - mean, lower=True)
    return float(-0.5 * (x.size * _LOG_2PI + z @ z) - np.sum(np.log(np.diag(chol))))


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """A factor S with S S^T = cov, by eigh with negative round-off eigenvalues clipped to 0; cov (k, k)."""
    eigvals, eigvecs = np.linalg.eigh(_symmetrize(cov))
    return eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))


def _mvn_sample(rng: np.random.Generator, means: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Draws N(means[n], cov) for each row n of means (N, k); cov (k, k) may be singular."""
    noise = rng.standard_normal(means.shape)
    return means + noise @ _psd_sqrt(cov).T


# ---------------------------------------------------------------------------------------------
# Linear-Gaussian state-space model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LGSSM:
    """x_0 ~ N(m0, P0); x_t = A x_{t-1} + N(0, Q); y_t = C x_t + N(0, R) for t = 1..T.

    Shapes: A (d, d), Q (d, d) SPD, C (m, d), R (m, m) SPD, m0 (d,), P0 (d, d) SPD.  Inputs are
    converted to float64 arrays.  ``eq=False``: instances compare (and hash) by identity.
    """

    A: np.ndarray
    Q: np.ndarray
    C: np.ndarray
    R: np.ndarray
    m0: np.ndarray
    P0: np.ndarray

    def __post_init__(self) -> None:
        for name in ("A", "Q", "C", "R", "m0", "P0"):
            object.__setattr__(self, name, np.array(getattr(self, name), dtype=np.float64))
        d, m = self.state_dim, self.obs_dim
        expected = {"A": (d, d), "Q": (d, d), "C": (m, d), "R": (m, m), "m0": (d,), "P0": (d, d)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"LGSSM.{name} has shape {getattr(self, name).shape}, expected {shape}")

    @property
    def state_dim(self) -> int:
        """d."""
        return int(self.m0.shape[0])

    @property
    def obs_dim(self) -> int:
        """m."""
        return int(self.C.shape[0])

    def simulate(self, rng: np.random.Generator, T: int) -> tuple[np.ndarray, np.ndarray]:
        """One draw from the model: states xs (T+1, d) for t = 0..T and observations ys (T, m) for t = 1..T."""
        d, m = self.state_dim, self.obs_dim
        xs = np.empty((T + 1, d))
        ys = np.empty((T, m))
        xs[0] = _mvn_sample(rng, self.m0[None], self.P0)[0]
        for t in range(1, T + 1):
            xs[t] = _mvn_sample(rng, (self.A @ xs[t - 1])[None], self.Q)[0]
            ys[t - 1] = _mvn_sample(rng, (self.C @ xs[t])[None], self.R)[0]
        return xs, ys


def scalar_lgssm(
    a: float = 0.9, q: float = 1.0, c: float = 1.0, r: float = 1.0, m0: float = 0.0, p0: float = 1.0
) -> LGSSM:
    """The d = m = 1 model x_t = a x_{t-1} + N(0, q), y_t = c x_t + N(0, r), x_0 ~ N(m0, p0)."""
    return LGSSM(A=[[a]], Q=[[q]], C=[[c]], R=[[r]], m0=[m0], P0=[[p0]])


def _random_spd(rng: np.random.Generator, k: int) -> np.ndarray:
    """B B^T / k + 0.1 I with B (k, k) standard normal: SPD with eigenvalues >= 0.1."""
    b = rng.standard_normal((k, k))
    return b @ b.T / k + 0.1 * np.eye(k)


def random_lgssm(rng: np.random.Generator, d: int, m: int) -> LGSSM:
    """A random stable LGSSM: A has spectral radius uniform in [0.5, 0.95]; Q, R, P0 random SPD.

    C (m, d) and m0 (d,) are standard normal.
    """
    a = rng.standard_normal((d, d))
    radius = float(np.max(np.abs(np.linalg.eigvals(a))))
    a *= rng.uniform(0.5, 0.95) / radius
    return LGSSM(
        A=a,
        Q=_random_spd(rng, d),
        C=rng.standard_normal((m, d)),
        R=_random_spd(rng, m),
        m0=rng.standard_normal(d),
        P0=_random_spd(rng, d),
    )


@dataclass(frozen=True, eq=False)
class KalmanResult:
    """Kalman filter output for observations y_{1:T}; row t-1 of every array belongs to time t.

    - ``log_Z``: log p(y_{1:T}) = sum_t log_Z_increments[t-1].
    - ``log_Z_increments`` (T,): log p(y_t | y_{1:t-1}) = log N(y_t; C mp_t, C Pp_t C^T + R).
    - ``pred_means`` (T, d), ``pred_covs`` (T, d, d): mp_t, Pp_t of p(x_t | y_{1:t-1}).
    - ``filter_means`` (T, d), ``filter_covs`` (T, d, d): mf_t, Pf_t of p(x_t | y_{1:t}).
    """

    log_Z: float
    log_Z_increments: np.ndarray
    pred_means: np.ndarray
    pred_covs: np.ndarray
    filter_means: np.ndarray
    filter_covs: np.ndarray


def kalman_filter(model: LGSSM, ys: np.ndarray) -> KalmanResult:
    """Exact filtering distributions and log p(y_{1:T}) for ys (T, m).

    With mf_0 = m0, Pf_0 = P0, for t = 1..T::

        mp_t = A mf_{t-1},              Pp_t = A Pf_{t-1} A^T + Q
        S_t  = C Pp_t C^T + R,          K_t = Pp_t C^T S_t^{-1}
        mf_t = mp_t + K_t (y_t - C mp_t)
        Pf_t = (I - K_t C) Pp_t (I - K_t C)^T + K_t R K_t^T     (Joseph form)
        log p(y_t | y_{1:t-1}) = log N(y_t; C mp_t, S_t)
    """
    ys = np.asarray(ys, dtype=np.float64).reshape(-1, model.obs_dim)
    T, d = ys.shape[0], model.state_dim
    A, Q, C, R = model.A, model.Q, model.C, model.R
    pred_means, pred_covs = np.empty((T, d)), np.empty((T, d, d))
    filter_means, filter_covs = np.empty((T, d)), np.empty((T, d, d))
    increments = np.empty(T)
    mean, cov = model.m0, model.P0
    eye = np.eye(d)
    for t in range(T):
        mean = A @ mean
        cov = _symmetrize(A @ cov @ A.T + Q)
        pred_means[t], pred_covs[t] = mean, cov
        s = _symmetrize(C @ cov @ C.T + R)
        increments[t] = _mvn_logpdf(ys[t], C @ mean, s)
        gain = linalg.solve(s, C @ cov, assume_a="pos").T  # Pp C^T S^{-1}, using symmetry of Pp and S
        mean = mean + gain @ (ys[t] - C @ mean)
        i_kc = eye - gain @ C
        cov = _symmetrize(i_kc @ cov @ i_kc.T + gain @ R @ gain.T)
        filter_means[t], filter_covs[t] = mean, cov
    return KalmanResult(
        log_Z=float(np.sum(increments)),
        log_Z_increments=increments,
        pred_means=pred_means,
        pred_covs=pred_covs,
        filter_means=filter_means,
        filter_covs=filter_covs,
    )


@dataclass(frozen=True, eq=False)
class BackwardInformation:
    """log p(y_{t+1:T} | x_t) = -0.5 x^T J[t] x + h[t]^T x + c[t] exactly, for t = 0..T.

    Shapes: J (T+1, d, d) symmetric PSD (possibly singular), h (T+1, d), c (T+1,); J[T], h[T],
    c[T] are 0 (no future observations).  Iterating yields the tuples (J[t], h[t], c[t]).
    """

    J: np.ndarray
    h: np.ndarray
    c: np.ndarray

    def __len__(self) -> int:
        return int(self.c.shape[0])

    def __getitem__(self, t: int) -> tuple[np.ndarray, np.ndarray, float]:
        return self.J[t], self.h[t], float(self.c[t])

    def __iter__(self):
        return (self[t] for t in range(len(self)))

    def log_twist(self, t: int, x: np.ndarray) -> np.ndarray:
        """log p(y_{t+1:T} | x_t = x) for x (..., d); returns shape (...)."""
        x = np.asarray(x, dtype=np.float64)
        quad = np.einsum("...i,ij,...j->...", x, self.J[t], x)
        return -0.5 * quad + x @ self.h[t] + self.c[t]


def backward_information_filter(model: LGSSM, ys: np.ndarray) -> BackwardInformation:
    """Optimal twists psi_t(x_t) = p(y_{t+1:T} | x_t) in information form, for ys (T, m).

    Start J_T = 0, h_T = 0, c_T = 0.  For t = T-1..0, first absorb y_{t+1}::

        J' = J_{t+1} + C^T R^{-1} C,   h' = h_{t+1} + C^T R^{-1} y_{t+1},
        c' = c_{t+1} - 0.5 y_{t+1}^T R^{-1} y_{t+1} - 0.5 log|2 pi R|

    then integrate x_{t+1} ~ N(A x_t, Q) out of exp(-0.5 x'^T J' x' + h'^T x' + c').  With
    Q = L L^T (Cholesky), G = I + L^T J' L (SPD even when J' is singular) and u = L^T h'::

        J_t = A^T (J' - J' L G^{-1} L^T J') A        (= A^T (J'^{-1} + Q)^{-1} A when J' is invertible)
        h_t = A^T (h' - J' L G^{-1} u)
        c_t = c' + 0.5 u^T G^{-1} u - 0.5 log|G|

    Only Q, R and G are factorised; J is never inverted.  Q and R must be SPD.
    """
    ys = np.asarray(ys, dtype=np.float64).reshape(-1, model.obs_dim)
    T, d, m = ys.shape[0], model.state_dim, model.obs_dim
    A, C = model.A, model.C
    chol_q = linalg.cholesky(model.Q, lower=True)
    chol_r = linalg.cholesky(model.R, lower=True)
    r_inv_c = linalg.cho_solve((chol_r, True), C)  # R^{-1} C (m, d)
    ct_rinv_c = _symmetrize(C.T @ r_inv_c)
    log_det_2pi_r = m * _LOG_2PI + 2.0 * float(np.sum(np.log(np.diag(chol_r))))
    J, h, c = np.zeros((T + 1, d, d)), np.zeros((T + 1, d)), np.zeros(T + 1)
    eye = np.eye(d)
    for t in range(T - 1, -1, -1):
        y = ys[t]
        r_inv_y = linalg.cho_solve((chol_r, True), y)
        j_post = J[t + 1] + ct_rinv_c
        h_post = h[t + 1] + C.T @ r_inv_y
        c_post = c[t + 1] - 0.5 * float(y @ r_inv_y) - 0.5 * log_det_2pi_r
        jl = j_post @ chol_q  # J' L (d, d)
        chol_g = linalg.cholesky(_symmetrize(eye + chol_q.T @ jl), lower=True)
        u = chol_q.T @ h_post
        g_inv_u = linalg.cho_solve((chol_g, True), u)
        g_inv_ljt = linalg.cho_solve((chol_g, True), jl.T)  # G^{-1} L^T J'
        J[t] = _symmetrize(A.T @ (j_post - jl @ g_inv_ljt) @ A)
        h[t] = A.T @ (h_post - jl @ g_inv_u)
        c[t] = c_post + 0.5 * float(u @ g_inv_u) - float(np.sum(np.log(np.diag(chol_g))))
    return BackwardInformation(J=J, h=h, c=c)


def _filter_with_initial(model: LGSSM, ys: np.ndarray) -> tuple[KalmanResult, np.ndarray, np.ndarray]:
    """Kalman filter plus filter means (T+1, d) and covs (T+1, d, d) with t = 0 (m0, P0) prepended."""
    result = kalman_filter(model, ys)
    means = np.concatenate([model.m0[None], result.filter_means])
    covs = np.concatenate([model.P0[None], result.filter_covs])
    return result, means, covs


def _smoother_gain(model: LGSSM, filter_cov: np.ndarray, pred_cov: np.ndarray) -> np.ndarray:
    """G_t = Pf_t A^T Pp_{t+1}^{-1} (d, d), by a Cholesky solve with the symmetric Pp_{t+1}."""
    return linalg.solve(pred_cov, model.A @ filter_cov, assume_a="pos").T


def rts_smoother(model: LGSSM, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means (T+1, d) and covs (T+1, d, d) of p(x_t | y_{1:T}) for t = 0..T (Rauch-Tung-Striebel).

    With ms_T = mf_T, Ps_T = Pf_T (and mf_0 = m0, Pf_0 = P0), for t = T-1..0::

        G_t  = Pf_t A^T Pp_{t+1}^{-1}
        ms_t = mf_t + G_t (ms_{t+1} - mp_{t+1})
        Ps_t = Pf_t + G_t (Ps_{t+1} - Pp_{t+1}) G_t^T
    """
    result, f_means, f_covs = _filter_with_initial(model, ys)
    T = result.pred_means.shape[0]
    means, covs = f_means.copy(), f_covs.copy()
    for t in range(T - 1, -1, -1):
        gain = _smoother_gain(model, f_covs[t], result.pred_covs[t])
        means[t] = f_means[t] + gain @ (means[t + 1] - result.pred_means[t])
        covs[t] = _symmetrize(f_covs[t] + gain @ (covs[t + 1] - result.pred_covs[t]) @ gain.T)
    return means, covs


def sample_posterior(model: LGSSM, ys: np.ndarray, rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Exact joint draws xs (num_samples, T+1, d) from p(x_{0:T} | y_{1:T}), forward filtering backward sampling.

    x_T ~ N(mf_T, Pf_T); for t = T-1..0, with G_t = Pf_t A^T Pp_{t+1}^{-1}::

        x_t | x_{t+1}, y_{1:t} ~ N(mf_t + G_t (x_{t+1} - mp_{t+1}),  Pf_t - G_t Pp_{t+1} G_t^T)
    """
    result, f_means, f_covs = _filter_with_initial(model, ys)
    T, d = result.pred_means.shape
    xs = np.empty((num_samples, T + 1, d))
    xs[:, T] = _mvn_sample(rng, np.broadcast_to(f_means[T], (num_samples, d)), f_covs[T])
    for t in range(T - 1, -1, -1):
        gain = _smoother_gain(model, f_covs[t], result.pred_covs[t])
        means = f_means[t] + (xs[:, t + 1] - result.pred_means[t]) @ gain.T
        cov = f_covs[t] - gain @ result.pred_covs[t] @ gain.T
        xs[:, t] = _mvn_sample(rng, means, cov)
    return xs


# ---------------------------------------------------------------------------------------------
# Token HMM ("toy language model")
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TokenHMM:
    """Prior over token sequences: p0(x_1) = pi[x_1], p0(x_t | x_{t-1}) = M[x_{t-1}, x_t].

    Shapes: pi (V,) a probability vector, M (V, V) row-stochastic.  Inputs are converted to
    float64 arrays; ``eq=False``: instances compare (and hash) by identity.
    """

    pi: np.ndarray
    M: np.ndarray

    def __post_init__(self) -> None:
        pi = np.array(self.pi, dtype=np.float64)
        M = np.array(self.M, dtype=np.float64)
        V = pi.shape[0]
        if pi.shape != (V,) or M.shape != (V, V):
            raise ValueError(f"TokenHMM: pi {pi.shape} and M {M.shape} must be (V,) and (V, V)")
        if not (np.allclose(pi.sum(), 1.0) and np.allclose(M.sum(axis=1), 1.0)) or (pi < 0).any() or (M < 0).any():
            raise ValueError("TokenHMM: pi must be a probability vector and M row-stochastic")
        object.__setattr__(self, "pi", pi)
        object.__setattr__(self, "M", M)

    @property
    def vocab_size(self) -> int:
        """V."""
        return int(self.pi.shape[0])

    @property
    def log_pi(self) -> np.ndarray:
        """log pi (V,), -inf where pi is 0."""
        with np.errstate(divide="ignore"):
            return np.log(self.pi)

    @property
    def log_M(self) -> np.ndarray:
        """log M (V, V), -inf where M is 0."""
        with np.errstate(divide="ignore"):
            return np.log(self.M)

    def log_prob(self, sequences: np.ndarray) -> np.ndarray:
        """log p0(x_{1:T}) = log pi[x_1] + sum_{t>=2} log M[x_{t-1}, x_t] for sequences (..., T) -> (...)."""
        x = np.asarray(sequences)
        out = self.log_pi[x[..., 0]]
        if x.shape[-1] > 1:
            out = out + np.sum(self.log_M[x[..., :-1], x[..., 1:]], axis=-1)
        return out


def random_token_hmm(rng: np.random.Generator, V: int, concentration: float = 1.0) -> TokenHMM:
    """pi ~ Dirichlet(concentration 1_V) and each row of M ~ Dirichlet(concentration 1_V), independently."""
    alpha = np.full(V, concentration)
    return TokenHMM(pi=rng.dirichlet(alpha), M=rng.dirichlet(alpha, size=V))


def _as_potential(hmm: TokenHMM, g: np.ndarray) -> np.ndarray:
    g = np.asarray(g, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != hmm.vocab_size or g.shape[0] < 1:
        raise ValueError(f"g must have shape (T, V) with T >= 1 and V = {hmm.vocab_size}, got {g.shape}")
    return g


def optimal_log_twists_additive(hmm: TokenHMM, g: np.ndarray) -> np.ndarray:
    """Backward messages L (T, V) with L[t, v] = log E_{p0}[exp(sum_{s>t} g[s, x_s]) | x_t = v] (0-based t).

    Recursion: L[T-1] = 0 and L[t, v] = logsumexp_w (log M[v, w] + g[t+1, w] + L[t+1, w]).  The
    optimal twist of a prefix x_{0:t} (0-based, t+1 tokens) is
    log psi*(x_{0:t}) = log E_{p0}[phi(x) | x_{0:t}] = sum_{s<=t} g[s, x_s] + L[t, x_t].
    """
    g = _as_potential(hmm, g)
    T, V = g.shape
    log_m = hmm.log_M
    L = np.zeros((T, V))
    for t in range(T - 2, -1, -1):
        L[t] = logsumexp(log_m + (g[t + 1] + L[t + 1])[None, :], axis=1)
    return L


def exact_log_Z_additive(hmm: TokenHMM, g: np.ndarray) -> float:
    """log Z = log sum_x p0(x) exp(sum_t g[t, x_t]) = logsumexp_v (log pi[v] + g[0, v] + L[0, v]), g (T, V)."""
    g = _as_potential(hmm, g)
    L = optimal_log_twists_additive(hmm, g)
    return float(logsumexp(hmm.log_pi + g[0] + L[0]))


def log_optimal_twist_additive(hmm: TokenHMM, g: np.ndarray, prefix: np.ndarray) -> float:
    """log psi*(prefix) = log E_{p0}[phi(x) | x_{0:k-1} = prefix] for a prefix (k,) of ints, 0 <= k <= T.

    Equals sum_{s<k} g[s, prefix[s]] + L[k-1, prefix[k-1]] (see ``optimal_log_twists_additive``);
    k = 0 gives log Z and k = T gives log phi(prefix).
    """
    g = _as_potential(hmm, g)
    prefix = np.asarray(prefix, dtype=np.int64).reshape(-1)
    k = prefix.shape[0]
    if k > g.shape[0]:
        raise ValueError(f"prefix of length {k} is longer than T = {g.shape[0]}")
    if k == 0:
        return exact_log_Z_additive(hmm, g)
    L = optimal_log_twists_additive(hmm, g)
    return float(np.sum(g[np.arange(k), prefix]) + L[k - 1, prefix[-1]])


def _sample_rows(rng: np.random.Generator, log_weights: np.ndarray) -> np.ndarray:
    """One categorical draw per row of unnormalised log_weights (N, V), by inverse CDF -> (N,) ints."""
    probs = np.exp(log_weights - logsumexp(log_weights, axis=1, keepdims=True))
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((log_weights.shape[0], 1)) * cdf[:, -1:]
    return np.minimum(np.sum(cdf <= u, axis=1), log_weights.shape[1] - 1)


def sample_exact_additive(hmm: TokenHMM, g: np.ndarray, rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Exact draws (num_samples, T) of ints from sigma(x) ∝ p0(x) exp(sum_t g[t, x_t]).

    Forward sampling with the backward messages L of ``optimal_log_twists_additive``::

        sigma(x_0 = v) ∝ pi[v] exp(g[0, v] + L[0, v])
        sigma(x_t = w | x_{t-1} = v) ∝ M[v, w] exp(g[t, w] + L[t, w])
    """
    g = _as_potential(hmm, g)
    T = g.shape[0]
    L = optimal_log_twists_additive(hmm, g)
    log_m = hmm.log_M
    xs = np.empty((num_samples, T), dtype=np.int64)
    xs[:, 0] = _sample_rows(rng, np.broadcast_to(hmm.log_pi + g[0] + L[0], (num_samples, hmm.vocab_size)))
    for t in range(1, T):
        xs[:, t] = _sample_rows(rng, log_m[xs[:, t - 1]] + (g[t] + L[t])[None, :])
    return xs


def additive_log_phi(g: np.ndarray) -> Callable[[np.ndarray], float]:
    """The callable x (T,) -> sum_t g[t, x_t], for feeding an additive potential to the brute-force functions."""
    g = np.asarray(g, dtype=np.float64)
    return lambda x: float(np.sum(g[np.arange(g.shape[0]), np.asarray(x)]))


MAX_ENUMERATION = 200_000


def _all_sequences(V: int, T: int) -> np.ndarray:
    """All V^T sequences (V^T, T) in lexicographic order."""
    if V**T > MAX_ENUMERATION:
        raise ValueError(f"V^T = {V}^{T} exceeds {MAX_ENUMERATION} sequences")
    return np.array(list(itertools.product(range(V), repeat=T)), dtype=np.int64).reshape(V**T, T)


def _log_joint(hmm: TokenHMM, log_phi_fn: Callable[[np.ndarray], float], sequences: np.ndarray) -> np.ndarray:
    """log p0(x) + log phi(x) for each row of sequences (N, T) -> (N,)."""
    log_phi = np.array([log_phi_fn(x) for x in sequences], dtype=np.float64)
    return hmm.log_prob(sequences) + log_phi


def enumerate_target(hmm: TokenHMM, log_phi_fn: Callable[[np.ndarray], float], T: int) -> tuple[np.ndarray, np.ndarray]:
    """All sequences (V^T, T) (lexicographic) and sigma(x) = p0(x) phi(x) / Z (V^T,), by brute force."""
    sequences = _all_sequences(hmm.vocab_size, T)
    log_joint = _log_joint(hmm, log_phi_fn, sequences)
    return sequences, np.exp(log_joint - logsumexp(log_joint))


def enumerate_log_Z(hmm: TokenHMM, log_phi_fn: Callable[[np.ndarray], float], T: int) -> float:
    """log Z = log sum_x p0(x) phi(x) over all V^T sequences, by brute force."""
    sequences = _all_sequences(hmm.vocab_size, T)
    return float(logsumexp(_log_joint(hmm, log_phi_fn, sequences)))


def enumerate_log_optimal_twist(
    hmm: TokenHMM, log_phi_fn: Callable[[np.ndarray], float], T: int, prefix: np.ndarray
) -> float:
    """log psi*(prefix) = log E_{p0}[phi(x) | x_{0:k-1} = prefix], prefix (k,), 0 <= k <= T, by brute force.

    = log sum_{x_{k:T-1}} p0(x_{k:T-1} | x_{k-1}) phi(prefix, x_{k:T-1})
    = logsumexp over completions of [log p0(x) + log phi(x)] - log p0(prefix).
    """
    prefix = np.asarray(prefix, dtype=np.int64).reshape(-1)
    k = prefix.shape[0]
    if k > T:
        raise ValueError(f"prefix of length {k} is longer than T = {T}")
    if k == T:
        return float(log_phi_fn(prefix))
    tails = _all_sequences(hmm.vocab_size, T - k)
    sequences = np.concatenate([np.broadcast_to(prefix, (tails.shape[0], k)), tails], axis=1)
    log_prefix = float(hmm.log_prob(prefix)) if k > 0 else 0.0
    return float(logsumexp(_log_joint(hmm, log_phi_fn, sequences))) - log_prefix
