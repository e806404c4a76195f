"""Critic-based lower bounds on mutual information in JAX: BA, InfoNCE, NWJ / MINE-F, MINE-DV, GIWAE, MINE-AIS.

References
----------
* Poole, Ozair, van den Oord, Alemi & Tucker, "On Variational Bounds of Mutual Information",
  ICML 2019 (arXiv:1905.06922): Barber-Agakov (Sec. 2.1), the unnormalised bounds UBA, DV, TUBA
  and NWJ (Sec. 2.2) and the multi-sample InfoNCE bound (Sec. 2.3).
* Belghazi et al., "Mutual Information Neural Estimation", ICML 2018: MINE (the DV bound with a
  neural critic) and MINE-f (``E_p T - E_{p(x)p(z)} e^{T - 1}``, the same bound as NWJ).
* Brekelmans, Huang, Ghassemi, Ver Steeg, Grosse & Makhzani, "Improving Mutual Information
  Estimation with Annealed and Energy-Based Bounds", ICLR 2022 (arXiv:2303.06992): the
  importance-sampling view of all of these, the Generalised IWAE (GIWAE) bound and MINE-AIS.

Notation (shapes in brackets).  Joint samples ``(x_i, z_i) ~ p(x, z)``, ``x`` ``(N, dx)``, ``z``
``(N, dz)``; ``I = I(x; z) = E_p log p(z|x) / p(z)``.  A *critic* is a function
``critic(params, x, z) -> scores`` that broadcasts over leading axes: ``x`` ``(..., dx)`` and ``z``
``(..., dz)`` give scores ``(...)``, so ``critic(params, x[:, None], z[None])`` is the score matrix
``S[i, j] = T(x_i, z_j)``.  Off the diagonal ``(x_i, z_j)``, ``i != j``, are draws from
``p(x) p(z)``.  With ``r(x, z) = p(x|z) / p(x)`` the log density ratio, the bounds are (nats):

* **BA** (Barber & Agakov; Poole Sec. 2.1), needs a normalised ``q(z|x)`` and ``log p(z)`` (or
  ``H(z)``):  ``I >= I_BA = E_p[log q(z|x) - log p(z)]``, tight at ``q = p(z|x)``.
* **NWJ / MINE-F** (Poole Sec. 2.2):  ``I >= E_p[T] - e^{-1} E_{p(x)p(z)}[e^T]``, tight at
  ``T = 1 + log r``; an unbiased estimate of a bound.
* **MINE-DV** (Donsker-Varadhan; Poole Sec. 2.2):  ``I >= E_p[T] - log E_{p(x)p(z)}[e^T]``, tight
  at ``T = log r + c``.  The plug-in estimate takes the log of a sample mean, which is biased
  *upwards* (Jensen), so the estimate is a lower bound only up to that O(1/N) bias: its ``kind``
  is ``"estimate"``.
* **InfoNCE** (Poole Sec. 2.3), ``K`` pairs per group:
  ``I >= E[1/K sum_i (T(x_i, z_i) - log 1/K sum_j e^{T(x_i, z_j)})]``; every term is ``<= log K``.
* **GIWAE** (Brekelmans et al. Sec. "Generalized IWAE"): a proposal ``q(z|x)``, a critic ``T`` and
  ``K - 1`` extra draws ``z_{2:K} ~ q(z|x)`` next to the joint sample ``z_1``:

      I >= I_GIWAE = E[log q(z_1|x) / p(z_1)] + E[log e^{T(x,z_1)} / (1/K sum_k e^{T(x,z_k)})].

  It is the BA bound of the self-normalised importance sampler ``SNIS(q, e^T)``: the first term
  is ``I_BA(q)``, the second (the contrastive term) lies in ``(-inf, log K]``, so
  ``I_GIWAE <= I_BA(q) + log K``.  ``T = 0`` gives BA, ``q = p(z)`` gives InfoNCE with prior
  negatives, ``T = log p(x,z)/q(z|x)`` gives the IWAE lower bound; GIWAE is tight as ``K -> inf``
  for the optimal critic ``T = log p(z|x)/q(z|x) + c(x)``.
* **MINE-AIS** (Brekelmans et al. Sec. "MINE-AIS"): the energy-based posterior
  ``pi_T(z|x) = p(z) e^{T(x,z)} / Z_T(x)`` gives the bound
  ``I >= I_EB(T) = E_p[T(x,z)] - E_{p(x)} log Z_T(x) >= I_DV(T)`` (Jensen on ``log E_x Z_T(x)``).
  Training follows its gradient ``E_p[grad T] - E_{p(x) pi_T(z|x)}[grad T]`` with MCMC draws from
  ``pi_T``; evaluation is Multi-Sample AIS from ``p(z)`` to ``pi_T(z|x)`` with ``K - 1`` forward
  chains and one reverse chain started at the joint sample ``z``:
  ``I_MINE-AIS = E[T(x, z) - log 1/K sum_k w_k]``, a lower bound on ``I`` for any number of
  chains and annealing steps, which tends to ``I_EB(T)`` as AIS becomes exact.

Every estimator returns :class:`adapters.mi.BoundEstimate` (value, Monte Carlo stderr, kind).
Pure per-sample functions (``*_terms``) are jit-able and differentiable; the functions without
the suffix validate their inputs and return a :class:`~adapters.mi.BoundEstimate`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from adapters.mi import BoundEstimate
from adapters.validation import check_choice, check_positive, check_positive_int

Array = jax.Array
Critic = Callable[[Any, Array, Array], Array]


# ---------------------------------------------------------------------------------------
# Argument checks (on concrete arrays; traced values pass through)
# ---------------------------------------------------------------------------------------
def _concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _check_finite(name: str, value: Any) -> Array:
    arr = jnp.asarray(value)
    if _concrete(arr):
        host = np.asarray(arr)
        bad = ~np.isfinite(host)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} must be finite, got {int(bad.sum())} non-finite entries (first at index {first}, "
                f"value {host[first]!r}); a critic that overflows or a proposal with zero density produces these"
            )
    return arr


def _check_score_matrix(name: str, scores: Any, min_size: int = 1) -> Array:
    scores = jnp.asarray(scores)
    if scores.ndim not in (2, 3) or scores.shape[-1] != scores.shape[-2]:
        raise ValueError(
            f"{name} must be a square score matrix (K, K) with {name}[i, j] = T(x_i, z_j), or a batch (B, K, K) of "
            f"them, got shape {scores.shape}"
        )
    if scores.shape[-1] < min_size:
        raise ValueError(f"{name} must have K >= {min_size} samples per group, got K = {scores.shape[-1]}")
    return _check_finite(name, scores)


def _check_joint(x: Any, z: Any) -> tuple[Array, Array]:
    x, z = jnp.asarray(x), jnp.asarray(z)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D array (N, dx) of joint samples, got shape {x.shape}")
    if z.ndim != 2:
        raise ValueError(f"z must be a 2-D array (N, dz) of joint samples, got shape {z.shape}")
    if x.shape[0] != z.shape[0]:
        raise ValueError(f"x and z must hold the same number of joint samples, got x: {x.shape} and z: {z.shape}")
    return _check_finite("x", x), _check_finite("z", z)


def _check_dims(x: Array, z: Array, x_dim: int | None, z_dim: int | None) -> None:
    if x_dim is not None and x.shape[-1] != x_dim:
        raise ValueError(f"x must have last axis of length x_dim = {x_dim}, got shape {x.shape}")
    if z_dim is not None and z.shape[-1] != z_dim:
        raise ValueError(f"z must have last axis of length z_dim = {z_dim}, got shape {z.shape}")


def _check_num_samples(name: str, value: Any) -> int:
    return check_positive_int(name, value)


def _log_mean_exp(values: Array, axis: int) -> Array:
    return logsumexp(values, axis=axis) - math.log(values.shape[axis])


# ---------------------------------------------------------------------------------------
# Networks: small MLPs in plain jax.numpy
# ---------------------------------------------------------------------------------------
def mlp_init(rng_key: Array, sizes: Sequence[int], dtype: Any = None) -> list[dict[str, Array]]:
    """Weights of an MLP with layer sizes ``sizes`` (input first), LeCun-normal, zero biases."""
    sizes = [check_positive_int("sizes", int(s)) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least an input and an output size, got {sizes}")
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    keys = jax.random.split(rng_key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (m, n), dtype) / math.sqrt(m), "b": jnp.zeros((n,), dtype)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp_apply(params: Sequence[dict[str, Array]], inputs: Array, activation: Callable = jax.nn.softplus) -> Array:
    """The MLP on ``inputs`` ``(..., sizes[0])``; ``activation`` between layers, none after the last."""
    h = inputs
    for layer in params[:-1]:
        h = activation(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]


class ConcatCritic:
    """``T(x, z) = MLP([x, z])``: the most flexible critic (``N^2`` network calls for a score matrix).

    ``hidden``: hidden layer widths; a smooth ``activation`` (softplus by default) keeps
    ``grad_z T`` smooth for the HMC moves of MINE-AIS.
    """

    def __init__(
        self, x_dim: int, z_dim: int, hidden: Sequence[int] = (64, 64), activation: Callable = jax.nn.softplus
    ):
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.hidden = tuple(check_positive_int("hidden", h) for h in hidden)
        self.activation = activation

    def init(self, rng_key: Array) -> list[dict[str, Array]]:
        return mlp_init(rng_key, (self.x_dim + self.z_dim, *self.hidden, 1))

    def __call__(self, params: Any, x: Array, z: Array) -> Array:
        shape = jnp.broadcast_shapes(x.shape[:-1], z.shape[:-1])
        xz = jnp.concatenate(
            [jnp.broadcast_to(x, (*shape, x.shape[-1])), jnp.broadcast_to(z, (*shape, z.shape[-1]))], axis=-1
        )
        return mlp_apply(params, xz, self.activation)[..., 0]


class SeparableCritic:
    """``T(x, z) = g(x) . h(z)`` with MLP embeddings of width ``embed_dim`` (Poole et al. Sec. 2.3).

    A score matrix costs ``2N`` network calls and one ``(N, N)`` product.  With a constant feature in
    each embedding it represents ``a(x) + b(z) + x^T A z``, which contains the log density ratio of
    jointly Gaussian ``(x, z)``.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        embed_dim: int = 16,
        hidden: Sequence[int] = (64,),
        activation: Callable = jax.nn.softplus,
    ):
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.hidden = tuple(check_positive_int("hidden", h) for h in hidden)
        self.activation = activation

    def init(self, rng_key: Array) -> dict[str, Any]:
        kx, kz = jax.random.split(rng_key)
        return {
            "g": mlp_init(kx, (self.x_dim, *self.hidden, self.embed_dim)),
            "h": mlp_init(kz, (self.z_dim, *self.hidden, self.embed_dim)),
        }

    def __call__(self, params: Any, x: Array, z: Array) -> Array:
        gx = mlp_apply(params["g"], x, self.activation)
        hz = mlp_apply(params["h"], z, self.activation)
        return jnp.sum(gx * hz, axis=-1)


class GaussianProposal:
    """``q(z|x) = N(mu(x), diag sigma(x)^2)`` with ``mu`` and ``log sigma`` from one MLP.

    ``hidden=()`` makes ``mu`` affine in ``x``.  ``fixed_scale`` pins ``sigma`` to a constant (a
    deliberately limited family, e.g. to show how much GIWAE's contrastive term adds to BA); else
    ``sigma = min_scale + softplus(.)``.  ``sample`` is reparameterised.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (64,),
        fixed_scale: float | None = None,
        min_scale: float = 1e-3,
        activation: Callable = jax.nn.softplus,
    ):
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.hidden = tuple(check_positive_int("hidden", h) for h in hidden)
        self.fixed_scale = None if fixed_scale is None else check_positive("fixed_scale", fixed_scale)
        self.min_scale = check_positive("min_scale", min_scale)
        self.activation = activation

    def init(self, rng_key: Array) -> list[dict[str, Array]]:
        out = self.z_dim if self.fixed_scale is not None else 2 * self.z_dim
        params = mlp_init(rng_key, (self.x_dim, *self.hidden, out))
        if self.fixed_scale is None:
            # the scale head starts at zero: unit scale for EVERY x, not only near x = 0 (a random
            # affine head gives scales near min_scale for large |x| and log q ~ -1e5 to start from)
            params[-1]["w"] = params[-1]["w"].at[:, self.z_dim :].set(0.0)
        return params

    def mean_scale(self, params: Any, x: Array) -> tuple[Array, Array]:
        out = mlp_apply(params, x, self.activation)
        if self.fixed_scale is not None:
            return out, jnp.full_like(out, self.fixed_scale)
        mean, raw = out[..., : self.z_dim], out[..., self.z_dim :]
        # softplus(raw + 0.5413) = 1 at raw = 0: the untrained proposal has unit scale
        return mean, self.min_scale + jax.nn.softplus(raw + 0.5413)

    def log_prob(self, params: Any, x: Array, z: Array) -> Array:
        """``log q(z|x)``; ``x`` ``(..., dx)`` and ``z`` ``(..., dz)`` broadcast; returns ``(...)``."""
        mean, scale = self.mean_scale(params, x)
        white = (z - mean) / scale
        return jnp.sum(-0.5 * white**2 - jnp.log(scale) - 0.5 * math.log(2 * math.pi), axis=-1)

    def sample(self, params: Any, rng_key: Array, x: Array, num_samples: int) -> Array:
        """``num_samples`` reparameterised draws per row of ``x`` ``(N, dx)``: ``(num_samples, N, dz)``."""
        mean, scale = self.mean_scale(params, x)
        eps = jax.random.normal(rng_key, (num_samples, *mean.shape), mean.dtype)
        return mean + scale * eps


def score_matrix(critic: Critic, params: Any, x: Array, z: Array) -> Array:
    """``S[i, j] = T(x_i, z_j)``, shape ``(N, N)``; the diagonal holds the joint pairs."""
    return critic(params, x[:, None, :], z[None, :, :])


# ---------------------------------------------------------------------------------------
# Pure per-sample terms (jit-able, differentiable)
# ---------------------------------------------------------------------------------------
@jax.jit
def infonce_terms(scores: Array) -> Array:
    """Per-row InfoNCE terms ``S_ii - log 1/K sum_j e^{S_ij}`` of ``(..., K, K)`` scores; each ``<= log K``.

    Poole et al. (2019) Sec. 2.3.  The ``minimum`` only removes rounding: ``S_ii <= logsumexp_j S_ij``.
    """
    k = scores.shape[-1]
    diag = jnp.diagonal(scores, axis1=-2, axis2=-1)
    return jnp.minimum(diag - logsumexp(scores, axis=-1), 0.0) + math.log(k)


def _off_diagonal(scores: Array) -> tuple[Array, Array]:
    k = scores.shape[-1]
    mask = ~jnp.eye(k, dtype=bool)
    return mask, jnp.diagonal(scores, axis1=-2, axis2=-1)


@jax.jit
def nwj_terms(scores: Array) -> Array:
    """Per-row NWJ / MINE-F terms ``S_ii - mean_{j != i} e^{S_ij - 1}`` of ``(..., K, K)`` scores, ``K >= 2``.

    Poole et al. (2019) Sec. 2.2 (``I_NWJ = E_p[f] - e^{-1} E_{p(x)p(z)} e^f``); the mean of the
    terms is an unbiased estimate of the bound.
    """
    mask, diag = _off_diagonal(scores)
    k = scores.shape[-1]
    # mask before exponentiating: an overflowing diagonal must not turn the gradient into NaN
    marginal = jnp.sum(jnp.exp(jnp.where(mask, scores - 1.0, -jnp.inf)), axis=-1) / (k - 1)
    return diag - marginal


@jax.jit
def mine_dv_value(scores: Array) -> Array:
    """The plug-in DV value ``mean_i S_ii - log mean_{i != j} e^{S_ij}`` per ``(K, K)`` matrix (``(...)``)."""
    mask, diag = _off_diagonal(scores)
    k = scores.shape[-1]
    log_marginal = logsumexp(jnp.where(mask, scores, -jnp.inf), axis=(-2, -1)) - math.log(k * (k - 1))
    return jnp.mean(diag, axis=-1) - log_marginal


@jax.jit
def barber_agakov_terms(log_q: Array, log_prior: Array) -> Array:
    """``log q(z_i|x_i) - log p(z_i)`` (Poole et al. Sec. 2.1); their mean estimates ``I_BA`` without bias."""
    return log_q - log_prior


@jax.jit
def giwae_terms(log_q: Array, log_prior: Array, scores: Array) -> Array:
    """Per-sample GIWAE terms (Brekelmans et al., 2022).

    ``log_q``, ``log_prior``: ``(N,)`` values ``log q(z_i|x_i)``, ``log p(z_i)`` at the joint samples;
    ``scores``: ``(K, N)`` critic values ``T(x_i, z_{k,i})`` with row 0 the joint sample ``z_i`` and
    rows ``1..K-1`` draws from ``q(z|x_i)``.  Term ``i``:
    ``log q/p + min(T_0 - logsumexp_k T_k, 0) + log K`` (the contrastive part is ``<= log K``).
    """
    k = scores.shape[0]
    contrast = jnp.minimum(scores[0] - logsumexp(scores, axis=0), 0.0) + math.log(k)
    return log_q - log_prior + contrast


@jax.jit
def mine_ais_terms(positive_scores: Array, log_weights: Array) -> Array:
    """Per-sample MINE-AIS terms ``T(x_i, z_i) - log 1/K sum_k w_{k,i}`` (Brekelmans et al., 2022).

    ``positive_scores``: ``(N,)``; ``log_weights``: ``(K, N)`` Multi-Sample AIS log weights from
    ``p(z)`` to ``p(z) e^{T(x_i, z)}``, one of them (any row) from the reverse chain started at ``z_i``.
    """
    return positive_scores - _log_mean_exp(log_weights, axis=0)


# ---------------------------------------------------------------------------------------
# Bounds on given scores -> BoundEstimate
# ---------------------------------------------------------------------------------------
def _matrix_estimate(terms: Array, kind: str, name: str) -> BoundEstimate:
    """Mean and stderr of per-row ``terms`` ``(K,)`` or ``(B, K)``: over the ``B`` group means when ``B >= 2``.

    Rows of one score matrix share the same ``z``'s, so the row-wise stderr of a single matrix is
    approximate (it ignores their weak correlation); a batch with ``B >= 2`` gives the honest one.
    """
    groups = terms.reshape(-1, terms.shape[-1])
    if groups.shape[0] >= 2:
        return BoundEstimate.from_samples(np.asarray(groups.mean(-1)), kind, name)
    return BoundEstimate.from_samples(np.asarray(groups[0]), kind, name)


def infonce(scores: Any) -> BoundEstimate:
    """InfoNCE lower bound from score matrices ``(K, K)`` or ``(B, K, K)``, ``S[i, j] = T(x_i, z_j)``.

    Never exceeds ``log K``: every term is ``<= log K`` exactly, so a tight estimate of a large
    ``I`` needs ``K ~ e^I`` (Poole et al. 2019, Sec. 2.3).
    """
    scores = _check_score_matrix("scores", scores)
    terms = infonce_terms(scores)
    return _matrix_estimate(terms, "lower", "InfoNCE")


def nwj(scores: Any) -> BoundEstimate:
    """NWJ (= MINE-F) lower bound from score matrices ``(K, K)`` or ``(B, K, K)``, ``K >= 2``.

    Unbiased for the bound; tight at ``T = 1 + log p(x|z)/p(x)``.  Its variance grows like ``e^I``.
    """
    scores = _check_score_matrix("scores", scores, min_size=2)
    terms = nwj_terms(scores)
    return _matrix_estimate(terms, "lower", "NWJ")


def mine_dv(scores: Any) -> BoundEstimate:
    """Donsker-Varadhan (MINE) value from score matrices ``(K, K)`` or ``(B, K, K)``, ``K >= 2``.

    ``I_DV(T) = E_p T - log E_{p(x)p(z)} e^T <= I`` for every ``T``, but the plug-in estimate takes the
    log of a sample mean, which is biased upwards (Jensen) by about ``Var(e^T) / (2 M E[e^T]^2)`` for
    ``M`` off-diagonal pairs, so it is a lower bound only up to that bias: ``kind="estimate"``.  With a
    batch (``B >= 2``) the stderr is over the per-matrix values; for one matrix it is the delta-method
    stderr of ``mean_i S_ii - log mean_i b_i`` with ``b_i`` the row means of ``e^{S_ij}``, ``j != i``.
    """
    scores = _check_score_matrix("scores", scores, min_size=2)
    if scores.ndim == 3 and scores.shape[0] >= 2:
        return BoundEstimate.from_samples(np.asarray(mine_dv_value(scores)), "estimate", "MINE-DV")
    value, linear = _dv_linearised(scores.reshape(scores.shape[-2:]))
    estimate = BoundEstimate.from_samples(np.asarray(linear), "estimate", "MINE-DV")
    return BoundEstimate(float(value), estimate.stderr, "estimate", "MINE-DV", estimate.num_samples)


@jax.jit
def _dv_linearised(matrix: Array) -> tuple[Array, Array]:
    """The DV value of one ``(K, K)`` matrix and its delta-method linearisation per row ``(K,)``."""
    mask, diag = _off_diagonal(matrix)
    k = matrix.shape[-1]
    shift = jnp.max(jnp.where(mask, matrix, -jnp.inf))
    rows = jnp.sum(jnp.exp(jnp.where(mask, matrix - shift, -jnp.inf)), axis=-1) / (k - 1)
    value = mine_dv_value(matrix)
    # influence of row i on the value: (diag_i - mean diag) - (b_i - mean b) / mean b
    return value, value + (diag - diag.mean()) - (rows - rows.mean()) / rows.mean()


def barber_agakov(log_q: Any, log_prior: Any = None, *, entropy: float | None = None) -> BoundEstimate:
    """Barber-Agakov lower bound ``E_p[log q(z|x)] + H(z)`` from ``log q(z_i|x_i)`` ``(N,)``.

    Give either ``log_prior`` (``log p(z_i)``, ``(N,)``; then ``-log p(z_i)`` estimates ``H(z)``
    sample by sample, lowering the variance when ``q`` is close to ``p(z|x)``) or the exact entropy
    ``entropy = H(z)``.  Unbiased for the bound; tight at ``q = p(z|x)`` (Poole et al. Sec. 2.1).
    """
    log_q = _check_finite("log_q", log_q)
    if log_q.ndim != 1:
        raise ValueError(f"log_q must be a 1-D array (N,) of log q(z_i|x_i), got shape {log_q.shape}")
    if (log_prior is None) == (entropy is None):
        raise ValueError("barber_agakov needs exactly one of log_prior (log p(z_i), shape (N,)) and entropy (H(z))")
    if entropy is not None:
        if not math.isfinite(float(entropy)):
            raise ValueError(f"entropy must be a finite number (H(z) in nats), got {entropy!r}")
        return BoundEstimate.from_samples(np.asarray(log_q) + float(entropy), "lower", "BA")
    log_prior = _check_finite("log_prior", log_prior)
    if log_prior.shape != log_q.shape:
        raise ValueError(f"log_prior must have the shape of log_q {log_q.shape}, got {log_prior.shape}")
    return BoundEstimate.from_samples(np.asarray(barber_agakov_terms(log_q, log_prior)), "lower", "BA")


def giwae(log_q: Any, log_prior: Any, scores: Any) -> BoundEstimate:
    """GIWAE lower bound from ``log q(z_i|x_i)``, ``log p(z_i)`` ``(N,)`` and scores ``(K, N)``.

    Row 0 of ``scores`` is ``T(x_i, z_i)`` at the joint sample, rows ``1..K-1`` are ``T(x_i, z_k)``
    at ``z_k ~ q(z|x_i)``.  ``I_GIWAE <= I_BA(q) + log K`` exactly (see :func:`giwae_terms`).
    """
    log_q = _check_finite("log_q", log_q)
    log_prior = _check_finite("log_prior", log_prior)
    scores = _check_finite("scores", scores)
    if log_q.ndim != 1:
        raise ValueError(f"log_q must be a 1-D array (N,) of log q(z_i|x_i), got shape {log_q.shape}")
    if log_prior.shape != log_q.shape:
        raise ValueError(f"log_prior must have the shape of log_q {log_q.shape}, got {log_prior.shape}")
    if scores.ndim != 2 or scores.shape[1] != log_q.shape[0]:
        raise ValueError(
            f"scores must have shape (K, N) = (K, {log_q.shape[0]}) with row 0 the joint samples, got {scores.shape}"
        )
    if scores.shape[0] < 1:
        raise ValueError("scores must have K >= 1 rows (the joint sample and K - 1 proposal draws), got K = 0")
    return BoundEstimate.from_samples(np.asarray(giwae_terms(log_q, log_prior, scores)), "lower", "GIWAE")


# ---------------------------------------------------------------------------------------
# HMC on z for the energy-based posterior p(z) e^{T(x, z)} (independent chains)
# ---------------------------------------------------------------------------------------
def hmc_chain(
    rng_key: Array,
    z: Array,
    log_density_fn: Callable[[Array], Array],
    num_steps: int,
    step_size: float,
    num_leapfrog: int,
) -> tuple[Array, Array]:
    """``num_steps`` Metropolis-adjusted HMC moves of independent chains ``z`` ``(..., dz)``.

    ``log_density_fn(z) -> (...)`` must treat each chain on its own (chain ``i``'s density depends on
    ``z[i]`` only), so the gradient of the sum is each chain's gradient.  Unit mass, fixed
    ``step_size`` and ``num_leapfrog``.  Returns the final states and the mean acceptance rate.
    """

    def value_and_grad(position):
        values, vjp = jax.vjp(log_density_fn, position)
        return values, vjp(jnp.ones_like(values))[0]

    def leapfrog(position, momentum, grad):
        def body(_, carry):
            q, p, g = carry
            p = p + 0.5 * step_size * g
            q = q + step_size * p
            _, g = value_and_grad(q)
            p = p + 0.5 * step_size * g
            return q, p, g

        return jax.lax.fori_loop(0, num_leapfrog, body, (position, momentum, grad))

    def step(carry, key):
        position, logp, grad = carry
        key_p, key_u = jax.random.split(key)
        momentum = jax.random.normal(key_p, position.shape, position.dtype)
        new_q, new_p, _ = leapfrog(position, momentum, grad)
        new_logp, new_grad = value_and_grad(new_q)
        log_ratio = new_logp - 0.5 * jnp.sum(new_p**2, -1) - (logp - 0.5 * jnp.sum(momentum**2, -1))
        log_ratio = jnp.where(jnp.isfinite(log_ratio), log_ratio, -jnp.inf)
        accept = jnp.log(jax.random.uniform(key_u, logp.shape, position.dtype)) < log_ratio
        position = jnp.where(accept[..., None], new_q, position)
        logp = jnp.where(accept, new_logp, logp)
        grad = jnp.where(accept[..., None], new_grad, grad)
        return (position, logp, grad), jnp.mean(accept.astype(position.dtype))

    logp, grad = value_and_grad(z)
    (z, _, _), accept = jax.lax.scan(step, (z, logp, grad), jax.random.split(rng_key, num_steps))
    return z, jnp.mean(accept)


# ---------------------------------------------------------------------------------------
# Estimators: loss for training, estimate for evaluation
# ---------------------------------------------------------------------------------------
class _Estimator:
    """Shared shape checks; subclasses define ``loss(params, rng_key, x, z) -> (loss, bound)``."""

    name = ""
    x_dim: int | None = None
    z_dim: int | None = None

    def _dims_from(self, *modules: Any) -> None:
        for module in modules:
            self.x_dim = getattr(module, "x_dim", self.x_dim)
            self.z_dim = getattr(module, "z_dim", self.z_dim)

    def _inputs(self, x: Any, z: Any) -> tuple[Array, Array]:
        x, z = _check_joint(x, z)
        _check_dims(x, z, self.x_dim, self.z_dim)
        return x, z


def _groups(name: str, x: Array, z: Array, num_samples: int | None) -> tuple[Array, Array]:
    """``(N, d)`` -> ``(N // K, K, d)``; ``N`` must be a multiple of ``K``."""
    n = x.shape[0]
    k = n if num_samples is None else num_samples
    if n % k:
        raise ValueError(f"the batch of {n} joint samples must split into groups of {name} = {k}")
    return x.reshape(n // k, k, x.shape[-1]), z.reshape(n // k, k, z.shape[-1])


@functools.partial(jax.jit, static_argnums=0)
def _group_scores(critic: Critic, params: Any, x: Array, z: Array) -> Array:
    return jax.vmap(lambda xg, zg: score_matrix(critic, params, xg, zg))(x, z)


class InfoNCE(_Estimator):
    """InfoNCE with critic ``critic``, groups of ``num_samples = K`` joint pairs (``None``: the whole batch).

    ``loss`` is minus the in-batch bound; ``estimate`` splits fresh samples into groups of ``K``
    (the bound depends on ``K``: evaluate with the ``K`` you trained with).
    """

    name = "InfoNCE"

    def __init__(self, critic: Critic, num_samples: int | None = None):
        self.critic = critic
        self.num_samples = None if num_samples is None else _check_num_samples("num_samples", num_samples)
        self._dims_from(critic)

    def init(self, rng_key: Array) -> Any:
        return self.critic.init(rng_key)

    def loss(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array]:
        xg, zg = _groups("num_samples", x, z, self.num_samples)
        bound = jnp.mean(infonce_terms(_group_scores(self.critic, params, xg, zg)))
        return -bound, bound

    def estimate(self, params: Any, rng_key: Array, x: Any, z: Any) -> BoundEstimate:
        x, z = self._inputs(x, z)
        xg, zg = _groups("num_samples", x, z, self.num_samples)
        return infonce(_group_scores(self.critic, params, xg, zg))


class NWJ(_Estimator):
    """NWJ / MINE-F with critic ``critic``; negatives are the off-diagonal pairs of groups of ``num_samples``."""

    name = "NWJ"

    def __init__(self, critic: Critic, num_samples: int | None = None):
        self.critic = critic
        self.num_samples = None if num_samples is None else _check_num_samples("num_samples", num_samples)
        if self.num_samples == 1:
            raise ValueError("num_samples must be >= 2 for NWJ (the off-diagonal pairs are the negatives), got 1")
        self._dims_from(critic)

    def init(self, rng_key: Array) -> Any:
        return self.critic.init(rng_key)

    def loss(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array]:
        xg, zg = _groups("num_samples", x, z, self.num_samples)
        bound = jnp.mean(nwj_terms(_group_scores(self.critic, params, xg, zg)))
        return -bound, bound

    def estimate(self, params: Any, rng_key: Array, x: Any, z: Any) -> BoundEstimate:
        x, z = self._inputs(x, z)
        xg, zg = _groups("num_samples", x, z, self.num_samples)
        return nwj(_group_scores(self.critic, params, xg, zg))


class MINEDV(_Estimator):
    """MINE with the Donsker-Varadhan bound; trained on the plug-in in-batch value (biased gradient).

    Belghazi et al. correct the gradient's bias with a moving average of the denominator; here the
    batch is the whole denominator, so use large batches (the bias is O(1/N^2) pairs).
    """

    name = "MINE-DV"

    def __init__(self, critic: Critic, num_samples: int | None = None):
        self.critic = critic
        self.num_samples = None if num_samples is None else _check_num_samples("num_samples", num_samples)
        if self.num_samples == 1:
            raise ValueError("num_samples must be >= 2 for MINE-DV (the off-diagonal pairs are the negatives), got 1")
        self._dims_from(critic)

    def init(self, rng_key: Array) -> Any:
        return self.critic.init(rng_key)

    def loss(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array]:
        xg, zg = _groups("num_samples", x, z, self.num_samples)
        bound = jnp.mean(mine_dv_value(_group_scores(self.critic, params, xg, zg)))
        return -bound, bound

    def estimate(self, params: Any, rng_key: Array, x: Any, z: Any) -> BoundEstimate:
        x, z = self._inputs(x, z)
        xg, zg = _groups("num_samples", x, z, self.num_samples)
        return mine_dv(_group_scores(self.critic, params, xg, zg))


def _check_prior(prior: Any, z_dim: int | None) -> Any:
    if not (hasattr(prior, "log_prob") and hasattr(prior, "sample")):
        raise ValueError(f"prior must be a numpyro distribution over z (with log_prob and sample), got {prior!r}")
    event = tuple(getattr(prior, "event_shape", ()))
    if z_dim is not None and event != (z_dim,):
        raise ValueError(
            f"prior must have event_shape (z_dim,) = ({z_dim},), got {event}; use .to_event(1) for a factorised prior"
        )
    return prior


class BarberAgakov(_Estimator):
    """Barber-Agakov with a normalised ``proposal`` ``q(z|x)`` (e.g. :class:`GaussianProposal`) and known ``prior``."""

    name = "BA"

    def __init__(self, proposal: Any, prior: Any):
        self.proposal = proposal
        self._dims_from(proposal)
        self.prior = _check_prior(prior, self.z_dim)
        self._terms = jax.jit(lambda params, x, z: (self.proposal.log_prob(params, x, z), self.prior.log_prob(z)))

    def init(self, rng_key: Array) -> Any:
        return self.proposal.init(rng_key)

    def loss(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array]:
        bound = jnp.mean(barber_agakov_terms(self.proposal.log_prob(params, x, z), self.prior.log_prob(z)))
        return -bound, bound

    def estimate(self, params: Any, rng_key: Array, x: Any, z: Any) -> BoundEstimate:
        x, z = self._inputs(x, z)
        return barber_agakov(*self._terms(params, x, z))


class GIWAE(_Estimator):
    """Generalised IWAE (Brekelmans et al., 2022): proposal ``q(z|x)``, critic ``T``, ``num_samples = K``.

    ``params = {"proposal": ..., "critic": ...}``.  The ``K - 1`` proposal draws are
    reparameterised, so ``loss`` trains ``q`` and ``T`` jointly.  With the same ``q`` family, GIWAE's
    optimum is ``>= `` BA's (take ``T = 0``); with ``q = p(z)`` in the family it is ``>=`` InfoNCE's
    with the same critic family and ``K``.
    """

    name = "GIWAE"

    def __init__(self, proposal: Any, critic: Critic, prior: Any, num_samples: int):
        self.proposal = proposal
        self.critic = critic
        self.num_samples = _check_num_samples("num_samples", num_samples)
        self._dims_from(proposal, critic)
        self.prior = _check_prior(prior, self.z_dim)
        self._parts_jit = jax.jit(self.parts)

    def init(self, rng_key: Array) -> dict[str, Any]:
        kq, kt = jax.random.split(rng_key)
        return {"proposal": self.proposal.init(kq), "critic": self.critic.init(kt)}

    def parts(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array, Array]:
        """``(log q(z_i|x_i), log p(z_i), scores (K, N))`` for :func:`giwae_terms`, with fresh proposal draws."""
        draws = self.proposal.sample(params["proposal"], rng_key, x, self.num_samples - 1)
        zs = jnp.concatenate([z[None], draws], axis=0)  # (K, N, dz), row 0 the joint sample
        scores = self.critic(params["critic"], x[None], zs)
        return self.proposal.log_prob(params["proposal"], x, z), self.prior.log_prob(z), scores

    def loss(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array]:
        bound = jnp.mean(giwae_terms(*self.parts(params, rng_key, x, z)))
        return -bound, bound

    def estimate(self, params: Any, rng_key: Array, x: Any, z: Any) -> BoundEstimate:
        x, z = self._inputs(x, z)
        return giwae(*self._parts_jit(params, rng_key, x, z))


class MINEAIS(_Estimator):
    """MINE-AIS (Brekelmans et al., 2022): an energy-based posterior ``pi_T(z|x) ∝ p(z) e^{T(x,z)}``.

    Training (``loss``) follows the gradient of ``I_EB(T) = E_p T - E_{p(x)} log Z_T(x)``,
    ``E_p[grad T] - E_{p(x) pi_T}[grad T]``, with negatives from ``num_mcmc_steps`` HMC moves
    (``step_size``, ``num_leapfrog``) on ``z`` targeting ``pi_T(.|x_i)``, started at the joint
    sample ``z_i`` (``mcmc_init="data"``, contrastive divergence; exact at the optimum, where
    ``pi_T = p(z|x)``) or at prior draws (``"prior"``).  The loss's *value* is minus the in-batch
    InfoNCE value of the current critic (a cheap lower bound that, like ``I_EB``, ignores terms
    ``c(x)`` of the critic; MINE-DV does not); its gradient is the energy-based one.
    ``estimate`` evaluates the bound with Multi-Sample AIS (:func:`mine_ais`).
    """

    name = "MINE-AIS"

    def __init__(
        self,
        critic: Critic,
        prior: Any,
        num_mcmc_steps: int = 10,
        step_size: float = 0.1,
        num_leapfrog: int = 5,
        mcmc_init: str = "data",
    ):
        self.critic = critic
        self._dims_from(critic)
        self.prior = _check_prior(prior, self.z_dim)
        self.num_mcmc_steps = check_positive_int("num_mcmc_steps", num_mcmc_steps)
        self.step_size = check_positive("step_size", step_size)
        self.num_leapfrog = check_positive_int("num_leapfrog", num_leapfrog)
        self.mcmc_init = check_choice("mcmc_init", mcmc_init, ("data", "prior"))

    def init(self, rng_key: Array) -> Any:
        return self.critic.init(rng_key)

    def negatives(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array]:
        """Approximate draws ``(N, dz)`` from ``pi_T(z|x_i)`` and the HMC acceptance rate."""
        key_init, key_mcmc = jax.random.split(rng_key)
        start = z if self.mcmc_init == "data" else self.prior.sample(key_init, (x.shape[0],))

        def log_density(zz):
            return self.prior.log_prob(zz) + self.critic(params, x, zz)

        draws, accept = hmc_chain(key_mcmc, start, log_density, self.num_mcmc_steps, self.step_size, self.num_leapfrog)
        return jax.lax.stop_gradient(draws), accept

    def loss(self, params: Any, rng_key: Array, x: Array, z: Array) -> tuple[Array, Array]:
        negatives, _ = self.negatives(jax.lax.stop_gradient(params), rng_key, x, z)
        surrogate = -(jnp.mean(self.critic(params, x, z)) - jnp.mean(self.critic(params, x, negatives)))
        nce = jax.lax.stop_gradient(jnp.mean(infonce_terms(score_matrix(self.critic, params, x, z))))
        return jax.lax.stop_gradient(-nce - surrogate) + surrogate, nce

    def estimate(self, params: Any, rng_key: Array, x: Any, z: Any, **ais_kwargs: Any) -> BoundEstimate:
        x, z = self._inputs(x, z)
        return mine_ais(rng_key, self.critic, params, x, z, self.prior, **ais_kwargs)


# ---------------------------------------------------------------------------------------
# MINE-AIS evaluation: Multi-Sample AIS from p(z) to p(z) e^{T(x, z)}
# ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _mine_ais_runner(critic: Critic, prior: Any, num_leapfrog: int, target_accept_prob: float) -> tuple:
    """Jitted pilot and estimate for one critic and prior (cached, so repeated evaluations share a compile)."""
    from numpyro_ext.infer.ais import ais, ais_reverse, tune_step_sizes

    def log_prior(zz):
        return prior.log_prob(zz)

    @jax.jit
    def pilot(params, keys, x, init, betas, step_size):
        def one(key, x_i, init_i):
            return tune_step_sizes(
                key,
                init_i,
                log_prior,
                lambda zz: critic(params, x_i, zz),
                betas,
                step_size=step_size,
                num_leapfrog=num_leapfrog,
                target_accept_prob=target_accept_prob,
            )

        steps = jax.vmap(one)(keys, x, init)  # (m, T)
        return jnp.exp(jnp.mean(jnp.log(steps), axis=0))

    @jax.jit
    def estimate(params, forward_keys, reverse_keys, x, z, init, betas, steps):
        def one(key_f, key_r, x_i, z_i, init_i):
            def log_lik(zz):
                return critic(params, x_i, zz)

            rev = ais_reverse(key_r, z_i[None], log_prior, log_lik, betas, step_size=steps, num_leapfrog=num_leapfrog)
            log_w, accept = rev.log_weights, rev.acceptance_rate
            if init_i.shape[0] > 0:
                fwd = ais(key_f, init_i, log_prior, log_lik, betas, step_size=steps, num_leapfrog=num_leapfrog)
                log_w = jnp.concatenate([log_w, fwd.log_weights])
                accept = jnp.concatenate([accept, fwd.acceptance_rate], axis=1)
            return log_w, log_lik(z_i), jnp.mean(accept, axis=1)

        log_w, positive, accept = jax.vmap(one)(forward_keys, reverse_keys, x, z, init)
        return log_w, positive, jnp.mean(accept, axis=0)

    return pilot, estimate


def mine_ais(
    rng_key: Array,
    critic: Critic,
    params: Any,
    x: Any,
    z: Any,
    prior: Any,
    num_chains: int = 16,
    num_steps: int = 100,
    schedule: Any = "sigmoid",
    step_size: float = 0.1,
    num_leapfrog: int = 10,
    adapt_step_size: bool = True,
    target_accept_prob: float = 0.65,
    num_pilot: int = 32,
    return_details: bool = False,
) -> BoundEstimate | tuple[BoundEstimate, dict]:
    """The MINE-AIS lower bound of a critic ``T`` on joint samples ``x`` ``(N, dx)``, ``z`` ``(N, dz)``.

    For each ``x_i``: ``K - 1 = num_chains - 1`` forward AIS chains from ``prior`` ``p(z)`` to
    ``pi_T(z|x_i) ∝ p(z) e^{T(x_i, z)}`` and one reverse chain started at the joint sample
    ``z_i`` (:func:`numpyro_ext.infer.ais.ais` and :func:`~numpyro_ext.infer.ais.ais_reverse`,
    HMC with ``num_leapfrog`` leapfrog steps through ``num_steps`` temperatures of
    ``schedule``), and the term ``T(x_i, z_i) - log 1/K sum_k w_k``.

    Why it is a lower bound for every ``K`` and ``T`` (also when ``pi_T != p(z|x)``): AIS
    followed by picking one chain in proportion to its weight is a sampler of ``z`` given
    ``x`` whose density ``r(z|x)`` satisfies ``log r(z|x) >= log p(z) + T(x, z) - E log 1/K
    sum_k w_k`` (one reverse chain from ``z``, the others forward), and
    ``I >= E_p log r(z|x) / p(z)``.  As AIS becomes exact every weight tends to ``Z_T(x)`` and the
    bound to ``I_EB(T) = E_p T - E log Z_T(x) >= I_DV(T)``.  With ``num_steps=1`` it is GIWAE
    with ``q = p(z)``, every term ``<= log K``.

    Step sizes: with ``adapt_step_size`` an adaptive pilot (:func:`~numpyro_ext.infer.ais.tune_step_sizes`)
    on the first ``num_pilot`` ``x``'s with independent prior draws gives one step size per
    temperature (geometric mean over the pilot's ``x``'s), which every estimating chain then uses
    fixed, so the reverse chain is the exact reversal of the forward ones; else ``step_size``
    throughout.  ``return_details`` adds a dict: ``per_sample`` ``(N,)``, ``log_weights``
    ``(N, K)`` (column 0 the reverse chain), ``step_sizes`` ``(T,)``, ``acceptance_rate`` ``(T,)``.
    """
    from adapters.mi import AISConfig

    cfg = AISConfig(
        num_steps=num_steps,
        num_chains=num_chains,
        schedule=schedule,
        step_size=step_size,
        num_leapfrog=num_leapfrog,
        adapt_step_size=adapt_step_size,
        target_accept_prob=target_accept_prob,
    )
    num_pilot = check_positive_int("num_pilot", num_pilot)
    x, z = _check_joint(x, z)
    _check_dims(x, z, getattr(critic, "x_dim", None), getattr(critic, "z_dim", None))
    prior = _check_prior(prior, z.shape[-1])
    try:
        pilot, run = _mine_ais_runner(critic, prior, cfg.num_leapfrog, cfg.target_accept_prob)
    except TypeError:  # an unhashable critic or prior
        pilot, run = _mine_ais_runner.__wrapped__(critic, prior, cfg.num_leapfrog, cfg.target_accept_prob)
    n, k = x.shape[0], cfg.num_chains
    dtype = z.dtype
    betas = jnp.asarray(cfg.betas, dtype)
    key_pilot, key_pilot_init, key_init, key_fwd, key_rev = jax.random.split(rng_key, 5)
    if cfg.adapt_step_size:
        m = min(n, num_pilot)
        pilot_init = jnp.asarray(prior.sample(key_pilot_init, (m, k)), dtype)
        steps = pilot(
            params, jax.random.split(key_pilot, m), x[:m], pilot_init, betas, jnp.asarray(cfg.step_size, dtype)
        )
    else:
        steps = jnp.full((cfg.num_steps,), cfg.step_size, dtype)
    init = jnp.asarray(prior.sample(key_init, (n, k - 1)), dtype).reshape(n, k - 1, z.shape[-1])
    log_w, positive, accept = run(
        params, jax.random.split(key_fwd, n), jax.random.split(key_rev, n), x, z, init, betas, steps
    )
    terms = mine_ais_terms(positive, log_w.T)
    estimate = BoundEstimate.from_samples(np.asarray(terms), "lower", "MINE-AIS")
    if not return_details:
        return estimate
    details = {
        "per_sample": np.asarray(terms),
        "log_weights": np.asarray(log_w),
        "step_sizes": np.asarray(steps),
        "acceptance_rate": np.asarray(accept),
    }
    return estimate, details


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------
class CriticFit(NamedTuple):
    """``params`` after training, ``losses`` ``(num_steps,)`` (the minimised loss) and ``bounds``
    ``(num_steps,)`` (the in-batch bound value of each step; for MINE-AIS the in-batch InfoNCE value).

    For a dict of estimators each field is a dict with the same keys."""

    params: Any
    losses: Any
    bounds: Any


class _Together:
    """Several estimators trained side by side on the same batches: the sum of their losses.

    Their parameters are disjoint, so each one's gradient is its own loss's gradient, and an
    element-wise optimizer (Adam, SGD, ...) updates each exactly as a separate run on the same
    batches would; one compiled program instead of one per estimator.
    """

    def __init__(self, estimators: dict[str, Any]):
        self.estimators = estimators

    def loss(self, params, rng_key, x, z):
        keys = dict(zip(self.estimators, jax.random.split(rng_key, len(self.estimators)), strict=True))
        parts = {name: est.loss(params[name], keys[name], x, z) for name, est in self.estimators.items()}
        total = sum(loss for loss, _ in parts.values())
        return total, {name: (loss, bound) for name, (loss, bound) in parts.items()}


def fit_critic(
    rng_key: Array,
    estimator: Any,
    init_params: Any,
    sample_joint: Callable[[Array, int], tuple[Array, Array]],
    num_steps: int,
    batch_size: int,
    optimizer: Any = None,
) -> CriticFit:
    """Train ``estimator``'s networks on fresh joint batches; one compiled ``lax.scan`` over steps.

    ``sample_joint(rng_key, batch_size) -> (x, z)`` draws ``(batch_size, dx)``, ``(batch_size, dz)``
    joint samples (a jit-able JAX function); ``optimizer`` is an ``optax.GradientTransformation``
    (default ``optax.adam(1e-3)``).  ``estimator`` is any of :class:`InfoNCE`, :class:`NWJ`,
    :class:`MINEDV`, :class:`BarberAgakov`, :class:`GIWAE`, :class:`MINEAIS` (or an object with
    ``loss(params, rng_key, x, z) -> (loss, bound)``), or a dict of them with ``init_params`` a
    dict with the same keys: they are then trained side by side on the same batches (with an
    element-wise optimizer exactly as separate runs would be), which is what a comparison of
    bounds wants and compiles once.
    """
    import optax

    num_steps = check_positive_int("num_steps", num_steps)
    batch_size = check_positive_int("batch_size", batch_size)
    named = isinstance(estimator, dict)
    if named:
        if not isinstance(init_params, dict) or set(init_params) != set(estimator):
            raise ValueError(
                f"init_params must be a dict with the estimators' keys {sorted(estimator)} when estimator is a dict, "
                f"got {sorted(init_params) if isinstance(init_params, dict) else type(init_params).__name__}"
            )
        members = list(estimator.values())
    else:
        members = [estimator]
    for member in members:
        if not callable(getattr(member, "loss", None)):
            raise ValueError(f"estimator must have a loss(params, rng_key, x, z) method, got {member!r}")
    if not callable(sample_joint):
        raise ValueError(f"sample_joint must be a function (rng_key, batch_size) -> (x, z), got {sample_joint!r}")
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    key_check, rng_key = jax.random.split(rng_key)
    x0, z0 = jax.eval_shape(lambda k: sample_joint(k, batch_size), key_check)
    if len(x0.shape) != 2 or len(z0.shape) != 2 or x0.shape[0] != batch_size or z0.shape[0] != batch_size:
        raise ValueError(
            f"sample_joint must return x (batch_size, dx) and z (batch_size, dz) with batch_size = {batch_size}, "
            f"got shapes {x0.shape} and {z0.shape}"
        )
    for member in members:
        _check_dims(x0, z0, getattr(member, "x_dim", None), getattr(member, "z_dim", None))
    objective = _Together(estimator) if named else estimator

    def step(carry, key):
        params, opt_state = carry
        key_data, key_loss = jax.random.split(key)
        x, z = sample_joint(key_data, batch_size)
        (loss, aux), grads = jax.value_and_grad(objective.loss, has_aux=True)(params, key_loss, x, z)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), aux if named else (loss, aux)

    @jax.jit
    def run(params, key):
        (params, _), trace = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, num_steps))
        return params, trace

    params, trace = run(init_params, rng_key)
    if named:
        losses = {name: np.asarray(trace[name][0]) for name in estimator}
        bounds = {name: np.asarray(trace[name][1]) for name in estimator}
        return CriticFit(params, losses, bounds)
    return CriticFit(params, np.asarray(trace[0]), np.asarray(trace[1]))
