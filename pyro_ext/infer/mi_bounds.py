"""Critic-based lower bounds on mutual information in torch: BA, InfoNCE, NWJ / MINE-F, MINE-DV, GIWAE, MINE-AIS.

The torch twin of :mod:`numpyro_ext.infer.mi_bounds`, with the same names, equations and
semantics; see that module (and ``docs/mi_critic_bounds.rst``) for the derivations.

References
----------
* Poole, Ozair, van den Oord, Alemi & Tucker, "On Variational Bounds of Mutual Information",
  ICML 2019 (arXiv:1905.06922): Barber-Agakov (Sec. 2.1), the unnormalised bounds DV and NWJ
  (Sec. 2.2) and the multi-sample InfoNCE bound (Sec. 2.3).
* Belghazi et al., "Mutual Information Neural Estimation", ICML 2018 (MINE, MINE-f).
* Brekelmans, Huang, Ghassemi, Ver Steeg, Grosse & Makhzani, "Improving Mutual Information
  Estimation with Annealed and Energy-Based Bounds", ICLR 2022 (arXiv:2303.06992): GIWAE and
  MINE-AIS.

Notation (shapes in brackets).  Joint samples ``(x_i, z_i) ~ p(x, z)``, ``x`` ``(N, dx)``, ``z``
``(N, dz)``.  A *critic* is a callable ``critic(x, z) -> scores`` (here a :class:`torch.nn.Module`
holding its own parameters) that broadcasts over leading axes, so ``critic(x[:, None], z[None])``
is the score matrix ``S[i, j] = T(x_i, z_j)``; off its diagonal are draws from ``p(x) p(z)``.
With ``r = p(x|z) / p(x)``:

* BA:       ``I >= E_p[log q(z|x) - log p(z)]``                                  (Poole Sec. 2.1)
* NWJ:      ``I >= E_p[T] - e^{-1} E_{p(x)p(z)}[e^T]``, tight at ``T = 1 + log r`` (Poole Sec. 2.2)
* MINE-DV:  ``I >= E_p[T] - log E_{p(x)p(z)}[e^T]``; the plug-in estimate is biased upwards,
  so its ``kind`` is ``"estimate"``                                             (Poole Sec. 2.2)
* InfoNCE:  ``I >= E[1/K sum_i (S_ii - log 1/K sum_j e^{S_ij})] <= log K``       (Poole Sec. 2.3)
* GIWAE:    ``I >= E[log q(z_1|x)/p(z_1)] + E[log e^{T(x,z_1)} / (1/K sum_k e^{T(x,z_k)})]`` with
  ``z_{2:K} ~ q(z|x)``; at most ``I_BA(q) + log K``                          (Brekelmans et al.)
* MINE-AIS: ``I >= E[T(x, z) - log 1/K sum_k w_k]`` with Multi-Sample AIS weights from ``p(z)``
  to ``pi_T(z|x) ∝ p(z) e^{T(x,z)}`` (``K - 1`` forward chains, one reverse chain from the joint
  ``z``); trained on ``grad I_EB = E_p[grad T] - E_{p(x) pi_T}[grad T]``   (Brekelmans et al.)

Every estimator returns :class:`adapters.mi.BoundEstimate`.  The ``*_terms`` functions are
plain differentiable tensor functions (what the training losses use); the functions without the
suffix validate their inputs (array-likes or tensors) and return a BoundEstimate.

Random numbers: the draws this module makes itself (proposal noise, HMC momenta and
Metropolis uniforms) come from the ``torch.Generator`` passed as ``generator``, else from
torch's global generator; ``prior.sample`` and a user's ``sample_joint`` draw from the global
generator.  ``pyro.set_rng_seed(s)`` before a run therefore makes everything reproducible.

Why not drhmc's leapfrog: :mod:`pyro_ext.infer.drhmc` integrates *one* chain with a Python
float log density and stops the whole trajectory at a non-finite value; here thousands of
independent chains (one per ``x_i`` and AIS chain) move together, each with its own log
density, acceptance and (for the AIS pilot) step size, so the integrator below is batched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adapters.mi import AISConfig, BoundEstimate
from adapters.validation import check_choice, check_positive, check_positive_int
from pyro_ext.infer.hmc_util import IntegratorState, kinetic_energy, leapfrog, metropolis_test, sample_momentum

__all__ = [
    "GIWAE",
    "MINEAIS",
    "MINEDV",
    "MLP",
    "NWJ",
    "BarberAgakov",
    "ConcatCritic",
    "CriticFit",
    "GaussianProposal",
    "InfoNCE",
    "SeparableCritic",
    "barber_agakov",
    "barber_agakov_terms",
    "fit_critic",
    "giwae",
    "giwae_terms",
    "hmc_chain",
    "infonce",
    "infonce_terms",
    "mine_ais",
    "mine_ais_terms",
    "mine_dv",
    "mine_dv_value",
    "nwj",
    "nwj_terms",
    "score_matrix",
]

Tensor = torch.Tensor
Critic = Callable[[Tensor, Tensor], Tensor]


# ---------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------
def _as_tensor(name: str, value: Any, dtype: torch.dtype | None = None) -> Tensor:
    """``value`` as a floating tensor (detached when it is one; ``dtype`` when given)."""
    if isinstance(value, Tensor):
        tensor = value.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(value).__name__}") from err
    if dtype is not None:
        tensor = tensor.to(dtype)
    elif not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def _check_finite(name: str, tensor: Tensor) -> Tensor:
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        first = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"{name} must be finite, got {int(bad.sum())} non-finite entries (first at index {first}, "
            f"value {float(tensor[first])!r}); a critic that overflows or a proposal with zero density produces these"
        )
    return tensor


def _check_square(name: str, scores: Tensor, min_size: int = 1) -> None:
    if scores.dim() not in (2, 3) or scores.shape[-1] != scores.shape[-2]:
        raise ValueError(
            f"{name} must be a square score matrix (K, K) with {name}[i, j] = T(x_i, z_j), or a batch (B, K, K) of "
            f"them, got shape {tuple(scores.shape)}"
        )
    if scores.shape[-1] < min_size:
        raise ValueError(f"{name} must have K >= {min_size} samples per group, got K = {scores.shape[-1]}")


def _check_score_matrix(name: str, scores: Any, min_size: int = 1) -> Tensor:
    scores = _as_tensor(name, scores)
    _check_square(name, scores, min_size)
    return _check_finite(name, scores)


def _check_joint(x: Any, z: Any, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    x, z = _as_tensor("x", x, dtype), _as_tensor("z", z, dtype)
    if x.dim() != 2:
        raise ValueError(f"x must be a 2-D array (N, dx) of joint samples, got shape {tuple(x.shape)}")
    if z.dim() != 2:
        raise ValueError(f"z must be a 2-D array (N, dz) of joint samples, got shape {tuple(z.shape)}")
    if x.shape[0] != z.shape[0]:
        raise ValueError(
            f"x and z must hold the same number of joint samples, got x: {tuple(x.shape)} and z: {tuple(z.shape)}"
        )
    return _check_finite("x", x), _check_finite("z", z)


def _check_dims(x_shape: Sequence[int], z_shape: Sequence[int], x_dim: int | None, z_dim: int | None) -> None:
    if x_dim is not None and x_shape[-1] != x_dim:
        raise ValueError(f"x must have last axis of length x_dim = {x_dim}, got shape {tuple(x_shape)}")
    if z_dim is not None and z_shape[-1] != z_dim:
        raise ValueError(f"z must have last axis of length z_dim = {z_dim}, got shape {tuple(z_shape)}")


def _log_mean_exp(values: Tensor, dim: int) -> Tensor:
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])


def _check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    return tuple(check_positive_int("hidden", h) for h in hidden)


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------
class MLP(nn.Module):
    """An MLP with layer sizes ``sizes`` (input first): ``activation`` between layers, none after the last.

    Weights LeCun-normal (``N(0, 1/fan_in)``, as :func:`numpyro_ext.infer.mi_bounds.mlp_init`),
    biases zero, drawn from ``generator`` (else torch's global generator).  ``layers[i].weight``
    is the transpose of the NumPyro layer's ``"w"``.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: Callable[[Tensor], Tensor] = F.softplus,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        sizes = [check_positive_int("sizes", int(s)) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least an input and an output size, got {sizes}")
        if not callable(activation):
            raise TypeError(f"activation must be a callable tensor -> tensor, got {activation!r}")
        self.sizes = tuple(sizes)
        self.activation = activation
        self.layers = nn.ModuleList(nn.Linear(m, n, dtype=dtype) for m, n in zip(sizes[:-1], sizes[1:], strict=True))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for layer in self.layers:
            weight = torch.randn(layer.weight.shape, generator=generator, dtype=layer.weight.dtype)
            layer.weight.copy_(weight / math.sqrt(layer.in_features))
            layer.bias.zero_()

    def forward(self, inputs: Tensor) -> Tensor:
        h = inputs
        for layer in self.layers[:-1]:
            h = self.activation(layer(h))
        return self.layers[-1](h)


class ConcatCritic(nn.Module):
    """``T(x, z) = MLP([x, z])``: the most flexible critic (``N^2`` network calls for a score matrix).

    ``hidden``: hidden layer widths; a smooth ``activation`` (softplus by default) keeps
    ``grad_z T`` smooth for the HMC moves of MINE-AIS.  ``x`` ``(..., dx)`` and ``z`` ``(..., dz)``
    broadcast; returns ``(...)``.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (64, 64),
        activation: Callable[[Tensor], Tensor] = F.softplus,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.hidden = _check_hidden(hidden)
        self.net = MLP((self.x_dim + self.z_dim, *self.hidden, 1), activation, dtype, generator)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        _check_dims(x.shape, z.shape, self.x_dim, self.z_dim)
        shape = torch.broadcast_shapes(x.shape[:-1], z.shape[:-1])
        xz = torch.cat([x.expand(*shape, self.x_dim), z.expand(*shape, self.z_dim)], dim=-1)
        return self.net(xz)[..., 0]


class SeparableCritic(nn.Module):
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
        activation: Callable[[Tensor], Tensor] = F.softplus,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.hidden = _check_hidden(hidden)
        self.g = MLP((self.x_dim, *self.hidden, self.embed_dim), activation, dtype, generator)
        self.h = MLP((self.z_dim, *self.hidden, self.embed_dim), activation, dtype, generator)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        _check_dims(x.shape, z.shape, self.x_dim, self.z_dim)
        return torch.sum(self.g(x) * self.h(z), dim=-1)


class GaussianProposal(nn.Module):
    """``q(z|x) = N(mu(x), diag sigma(x)^2)`` with ``mu`` and ``log sigma`` from one MLP.

    ``hidden=()`` makes ``mu`` affine in ``x``.  ``fixed_scale`` pins ``sigma`` to a constant (a
    deliberately limited family, e.g. to show how much GIWAE's contrastive term adds to BA); else
    ``sigma = min_scale + softplus(.)``, 1 for every ``x`` at initialisation (zero scale head, as the
    NumPyro twin).  ``sample`` is reparameterised.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (64,),
        fixed_scale: float | None = None,
        min_scale: float = 1e-3,
        activation: Callable[[Tensor], Tensor] = F.softplus,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.hidden = _check_hidden(hidden)
        self.fixed_scale = None if fixed_scale is None else check_positive("fixed_scale", fixed_scale)
        self.min_scale = check_positive("min_scale", min_scale)
        out = self.z_dim if self.fixed_scale is not None else 2 * self.z_dim
        self.net = MLP((self.x_dim, *self.hidden, out), activation, dtype, generator)
        if self.fixed_scale is None:
            # the scale head starts at zero: unit scale for EVERY x, not only near x = 0 (a random
            # affine head gives scales near min_scale for large |x| and log q ~ -1e5 to start from)
            with torch.no_grad():
                self.net.layers[-1].weight[self.z_dim :].zero_()

    def mean_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``mu(x)`` and ``sigma(x)``, each ``(..., dz)``."""
        _check_dims(x.shape, (self.z_dim,), self.x_dim, None)
        out = self.net(x)
        if self.fixed_scale is not None:
            return out, torch.full_like(out, self.fixed_scale)
        mean, raw = out[..., : self.z_dim], out[..., self.z_dim :]
        # softplus(raw + 0.5413) = 1 at raw = 0: the untrained proposal has unit scale
        return mean, self.min_scale + F.softplus(raw + 0.5413)

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``log q(z|x)``; ``x`` ``(..., dx)`` and ``z`` ``(..., dz)`` broadcast; returns ``(...)``."""
        mean, scale = self.mean_scale(x)
        white = (z - mean) / scale
        return torch.sum(-0.5 * white**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi), dim=-1)

    def sample(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """``num_samples`` reparameterised draws per row of ``x`` ``(N, dx)``: ``(num_samples, N, dz)``."""
        mean, scale = self.mean_scale(x)
        eps = torch.randn((num_samples, *mean.shape), generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + scale * eps


def score_matrix(critic: Critic, x: Tensor, z: Tensor) -> Tensor:
    """``S[i, j] = T(x_i, z_j)``, shape ``(N, N)`` (or ``(B, N, N)`` for ``x``, ``z`` ``(B, N, d)``).

    The diagonal holds the joint pairs.
    """
    return critic(x[..., :, None, :], z[..., None, :, :])


# ---------------------------------------------------------------------------------------
# Per-sample terms (differentiable; what the training losses use)
# ---------------------------------------------------------------------------------------
def infonce_terms(scores: Tensor) -> Tensor:
    """Per-row InfoNCE terms ``S_ii - log 1/K sum_j e^{S_ij}`` of ``(..., K, K)`` scores; each ``<= log K``.

    Poole et al. (2019) Sec. 2.3.  The clamp only removes rounding: ``S_ii <= logsumexp_j S_ij``.
    """
    _check_square("scores", scores)
    k = scores.shape[-1]
    diag = torch.diagonal(scores, dim1=-2, dim2=-1)
    return torch.clamp(diag - torch.logsumexp(scores, dim=-1), max=0.0) + math.log(k)


def _off_diagonal(scores: Tensor) -> tuple[Tensor, Tensor]:
    k = scores.shape[-1]
    mask = ~torch.eye(k, dtype=torch.bool, device=scores.device)
    return mask, torch.diagonal(scores, dim1=-2, dim2=-1)


def nwj_terms(scores: Tensor) -> Tensor:
    """Per-row NWJ / MINE-F terms ``S_ii - mean_{j != i} e^{S_ij - 1}`` of ``(..., K, K)`` scores, ``K >= 2``.

    Poole et al. (2019) Sec. 2.2 (``I_NWJ = E_p[f] - e^{-1} E_{p(x)p(z)} e^f``); the mean of the
    terms is an unbiased estimate of the bound.
    """
    _check_square("scores", scores, min_size=2)
    mask, diag = _off_diagonal(scores)
    k = scores.shape[-1]
    # mask before exponentiating: an overflowing diagonal must not turn the gradient into NaN
    marginal = torch.sum(torch.exp((scores - 1.0).masked_fill(~mask, -math.inf)), dim=-1) / (k - 1)
    return diag - marginal


def mine_dv_value(scores: Tensor) -> Tensor:
    """The plug-in DV value ``mean_i S_ii - log mean_{i != j} e^{S_ij}`` per ``(K, K)`` matrix (``(...)``)."""
    _check_square("scores", scores, min_size=2)
    mask, diag = _off_diagonal(scores)
    k = scores.shape[-1]
    log_marginal = torch.logsumexp(scores.masked_fill(~mask, -math.inf), dim=(-2, -1)) - math.log(k * (k - 1))
    return diag.mean(dim=-1) - log_marginal


def barber_agakov_terms(log_q: Tensor, log_prior: Tensor) -> Tensor:
    """``log q(z_i|x_i) - log p(z_i)`` (Poole et al. Sec. 2.1); their mean estimates ``I_BA`` without bias."""
    return log_q - log_prior


def giwae_terms(log_q: Tensor, log_prior: Tensor, scores: Tensor) -> Tensor:
    """Per-sample GIWAE terms (Brekelmans et al., 2022).

    ``log_q``, ``log_prior``: ``(N,)`` values ``log q(z_i|x_i)``, ``log p(z_i)`` at the joint samples;
    ``scores``: ``(K, N)`` critic values ``T(x_i, z_{k,i})`` with row 0 the joint sample ``z_i`` and
    rows ``1..K-1`` draws from ``q(z|x_i)``.  Term ``i``:
    ``log q/p + min(T_0 - logsumexp_k T_k, 0) + log K`` (the contrastive part is ``<= log K``).
    """
    k = scores.shape[0]
    contrast = torch.clamp(scores[0] - torch.logsumexp(scores, dim=0), max=0.0) + math.log(k)
    return log_q - log_prior + contrast


def mine_ais_terms(positive_scores: Tensor, log_weights: Tensor) -> Tensor:
    """Per-sample MINE-AIS terms ``T(x_i, z_i) - log 1/K sum_k w_{k,i}`` (Brekelmans et al., 2022).

    ``positive_scores``: ``(N,)``; ``log_weights``: ``(K, N)`` Multi-Sample AIS log weights from
    ``p(z)`` to ``p(z) e^{T(x_i, z)}``, one of them (any row) from the reverse chain started at ``z_i``.
    """
    return positive_scores - _log_mean_exp(log_weights, dim=0)


# ---------------------------------------------------------------------------------------
# Bounds on given scores -> BoundEstimate
# ---------------------------------------------------------------------------------------
def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _matrix_estimate(terms: Tensor, kind: str, name: str) -> BoundEstimate:
    """Mean and stderr of per-row ``terms`` ``(K,)`` or ``(B, K)``: over the ``B`` group means when ``B >= 2``.

    Rows of one score matrix share the same ``z``'s, so the row-wise stderr of a single matrix is
    approximate (it ignores their weak correlation); a batch with ``B >= 2`` gives the honest one.
    """
    groups = terms.reshape(-1, terms.shape[-1])
    if groups.shape[0] >= 2:
        return BoundEstimate.from_samples(_numpy(groups.mean(-1)), kind, name)
    return BoundEstimate.from_samples(_numpy(groups[0]), kind, name)


def infonce(scores: Any) -> BoundEstimate:
    """InfoNCE lower bound from score matrices ``(K, K)`` or ``(B, K, K)``, ``S[i, j] = T(x_i, z_j)``.

    Never exceeds ``log K``: every term is ``<= log K`` exactly, so a tight estimate of a large
    ``I`` needs ``K ~ e^I`` (Poole et al. 2019, Sec. 2.3).
    """
    scores = _check_score_matrix("scores", scores)
    return _matrix_estimate(infonce_terms(scores), "lower", "InfoNCE")


def nwj(scores: Any) -> BoundEstimate:
    """NWJ (= MINE-F) lower bound from score matrices ``(K, K)`` or ``(B, K, K)``, ``K >= 2``.

    Unbiased for the bound; tight at ``T = 1 + log p(x|z)/p(x)``.  Its variance grows like ``e^I``.
    """
    scores = _check_score_matrix("scores", scores, min_size=2)
    return _matrix_estimate(nwj_terms(scores), "lower", "NWJ")


def mine_dv(scores: Any) -> BoundEstimate:
    """Donsker-Varadhan (MINE) value from score matrices ``(K, K)`` or ``(B, K, K)``, ``K >= 2``.

    ``I_DV(T) <= I`` for every ``T``, but the plug-in estimate takes the log of a sample mean, which
    is biased upwards (Jensen), so it is a lower bound only up to that bias: ``kind="estimate"``.
    With a batch (``B >= 2``) the stderr is over the per-matrix values; for one matrix it is the
    delta-method stderr of ``mean_i S_ii - log mean_i b_i`` with ``b_i`` the row means of
    ``e^{S_ij}``, ``j != i``.
    """
    scores = _check_score_matrix("scores", scores, min_size=2)
    if scores.dim() == 3 and scores.shape[0] >= 2:
        return BoundEstimate.from_samples(_numpy(mine_dv_value(scores)), "estimate", "MINE-DV")
    value, linear = _dv_linearised(scores.reshape(scores.shape[-2:]))
    estimate = BoundEstimate.from_samples(_numpy(linear), "estimate", "MINE-DV")
    return BoundEstimate(float(value), estimate.stderr, "estimate", "MINE-DV", estimate.num_samples)


def _dv_linearised(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """The DV value of one ``(K, K)`` matrix and its delta-method linearisation per row ``(K,)``."""
    mask, diag = _off_diagonal(matrix)
    k = matrix.shape[-1]
    shift = torch.max(matrix.masked_fill(~mask, -math.inf))
    rows = torch.sum(torch.exp((matrix - shift).masked_fill(~mask, -math.inf)), dim=-1) / (k - 1)
    value = mine_dv_value(matrix)
    # influence of row i on the value: (diag_i - mean diag) - (b_i - mean b) / mean b
    return value, value + (diag - diag.mean()) - (rows - rows.mean()) / rows.mean()


def barber_agakov(log_q: Any, log_prior: Any = None, *, entropy: float | None = None) -> BoundEstimate:
    """Barber-Agakov lower bound ``E_p[log q(z|x)] + H(z)`` from ``log q(z_i|x_i)`` ``(N,)``.

    Give either ``log_prior`` (``log p(z_i)``, ``(N,)``) or the exact entropy ``entropy = H(z)``.
    Unbiased for the bound; tight at ``q = p(z|x)`` (Poole et al. Sec. 2.1).
    """
    log_q = _check_finite("log_q", _as_tensor("log_q", log_q))
    if log_q.dim() != 1:
        raise ValueError(f"log_q must be a 1-D array (N,) of log q(z_i|x_i), got shape {tuple(log_q.shape)}")
    if (log_prior is None) == (entropy is None):
        raise ValueError("barber_agakov needs exactly one of log_prior (log p(z_i), shape (N,)) and entropy (H(z))")
    if entropy is not None:
        if not math.isfinite(float(entropy)):
            raise ValueError(f"entropy must be a finite number (H(z) in nats), got {entropy!r}")
        return BoundEstimate.from_samples(_numpy(log_q) + float(entropy), "lower", "BA")
    log_prior = _check_finite("log_prior", _as_tensor("log_prior", log_prior))
    if log_prior.shape != log_q.shape:
        raise ValueError(f"log_prior must have the shape of log_q {tuple(log_q.shape)}, got {tuple(log_prior.shape)}")
    return BoundEstimate.from_samples(_numpy(barber_agakov_terms(log_q, log_prior)), "lower", "BA")


def giwae(log_q: Any, log_prior: Any, scores: Any) -> BoundEstimate:
    """GIWAE lower bound from ``log q(z_i|x_i)``, ``log p(z_i)`` ``(N,)`` and scores ``(K, N)``.

    Row 0 of ``scores`` is ``T(x_i, z_i)`` at the joint sample, rows ``1..K-1`` are ``T(x_i, z_k)``
    at ``z_k ~ q(z|x_i)``.  ``I_GIWAE <= I_BA(q) + log K`` exactly (see :func:`giwae_terms`).
    """
    log_q = _check_finite("log_q", _as_tensor("log_q", log_q))
    log_prior = _check_finite("log_prior", _as_tensor("log_prior", log_prior))
    scores = _check_finite("scores", _as_tensor("scores", scores))
    if log_q.dim() != 1:
        raise ValueError(f"log_q must be a 1-D array (N,) of log q(z_i|x_i), got shape {tuple(log_q.shape)}")
    if log_prior.shape != log_q.shape:
        raise ValueError(f"log_prior must have the shape of log_q {tuple(log_q.shape)}, got {tuple(log_prior.shape)}")
    if scores.dim() != 2 or scores.shape[1] != log_q.shape[0]:
        raise ValueError(
            f"scores must have shape (K, N) = (K, {log_q.shape[0]}) with row 0 the joint samples, "
            f"got {tuple(scores.shape)}"
        )
    if scores.shape[0] < 1:
        raise ValueError("scores must have K >= 1 rows (the joint sample and K - 1 proposal draws), got K = 0")
    return BoundEstimate.from_samples(_numpy(giwae_terms(log_q, log_prior, scores)), "lower", "GIWAE")


# ---------------------------------------------------------------------------------------
# Batched HMC: independent chains with leading axes (...), positions (..., d)
# ---------------------------------------------------------------------------------------
def _value_and_grad(fn: Callable[[Tensor], Tensor], position: Tensor) -> tuple[Tensor, Tensor]:
    """``fn(position)`` (chain-wise, ``(...)``) and its gradient ``(..., d)``.

    Each chain's value depends on its own position only, so the gradient of the sum is each
    chain's gradient.  A value that does not depend on ``position`` has gradient zero.
    """
    with torch.enable_grad():
        position = position.detach().requires_grad_(True)
        value = fn(position)
        (grad,) = torch.autograd.grad(value.sum(), position, allow_unused=True)
    return value.detach(), torch.zeros_like(position) if grad is None else grad


def _select(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where ``mask`` (chain-wise, ``(...)``), else ``old``; ``new`` may carry a trailing event axis."""
    return torch.where(mask.reshape(mask.shape + (1,) * (new.dim() - mask.dim())), new, old)


def _hmc_move(
    position: Tensor,
    logdensity: Tensor,
    grad: Tensor,
    log_density_fn: Callable[[Tensor], Tensor],
    step_size: float,
    num_leapfrog: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Metropolis-adjusted HMC transition of every chain (unit mass, ``num_leapfrog`` leapfrog steps).

    ``position`` ``(..., d)``, its log density ``(...)`` and gradient.  Draws one ``randn`` (the
    momenta) then one ``rand`` (the Metropolis uniforms).  A proposal with a non-finite log
    density, energy, position or gradient is rejected.  Returns the new position, log density and gradient.
    """
    momentum = sample_momentum(generator, None, position)

    def evaluate(q, p, i):
        return (q, *_value_and_grad(log_density_fn, q))

    end = leapfrog(IntegratorState(position, momentum, logdensity, grad), evaluate, step_size, None, num_leapfrog)
    delta = end.logdensity - kinetic_energy(None, end.momentum) - (logdensity - kinetic_energy(None, momentum))
    valid = torch.isfinite(delta) & torch.isfinite(end.position).all(-1) & torch.isfinite(end.logdensity_grad).all(-1)
    accepted = metropolis_test(generator, delta, position, valid).is_accepted
    return (
        _select(accepted, end.position, position),
        _select(accepted, end.logdensity, logdensity),
        _select(accepted, end.logdensity_grad, grad),
    )


def hmc_chain(
    z: Tensor,
    log_density_fn: Callable[[Tensor], Tensor],
    num_steps: int,
    step_size: float,
    num_leapfrog: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, float]:
    """``num_steps`` Metropolis-adjusted HMC moves of independent chains ``z`` ``(..., dz)``.

    ``log_density_fn(z) -> (...)`` must treat each chain on its own (chain ``i``'s density depends on
    ``z[i]`` only), so the gradient of the sum is each chain's gradient.  Unit mass, fixed
    ``step_size`` and ``num_leapfrog``.  Returns the final states (detached) and the mean
    acceptance rate (the fraction of accepted moves).
    """
    num_steps = check_positive_int("num_steps", num_steps)
    step_size = check_positive("step_size", step_size)
    num_leapfrog = check_positive_int("num_leapfrog", num_leapfrog)

    position = z.detach()
    logdensity, grad = _value_and_grad(log_density_fn, position)
    accepted = 0.0
    for _ in range(num_steps):
        new, logdensity, grad = _hmc_move(
            position, logdensity, grad, log_density_fn, step_size, num_leapfrog, generator
        )
        accepted += float(torch.mean(torch.all(new != position, dim=-1).to(z.dtype)))
        position = new
    return position, accepted / num_steps


# ---------------------------------------------------------------------------------------
# Estimators: loss for training, estimate for evaluation (torch.nn.Modules holding the networks)
# ---------------------------------------------------------------------------------------
class _Estimator(nn.Module):
    """Shared shape checks; subclasses define ``loss(x, z, generator=None) -> (loss, bound)``."""

    name = ""
    x_dim: int | None = None
    z_dim: int | None = None

    def _dims_from(self, *modules: Any) -> None:
        for module in modules:
            self.x_dim = getattr(module, "x_dim", self.x_dim)
            self.z_dim = getattr(module, "z_dim", self.z_dim)

    def _dtype(self) -> torch.dtype | None:
        for param in self.parameters():
            return param.dtype
        return None

    def _inputs(self, x: Any, z: Any) -> tuple[Tensor, Tensor]:
        x, z = _check_joint(x, z, self._dtype())
        _check_dims(x.shape, z.shape, self.x_dim, self.z_dim)
        return x, z


def _groups(name: str, x: Tensor, z: Tensor, num_samples: int | None) -> tuple[Tensor, Tensor]:
    """``(N, d)`` -> ``(N // K, K, d)``; ``N`` must be a multiple of ``K``."""
    n = x.shape[0]
    k = n if num_samples is None else num_samples
    if n % k:
        raise ValueError(f"the batch of {n} joint samples must split into groups of {name} = {k}")
    return x.reshape(n // k, k, x.shape[-1]), z.reshape(n // k, k, z.shape[-1])


def _check_critic(critic: Any) -> Any:
    if not callable(critic):
        raise TypeError(f"critic must be a callable critic(x, z) -> scores (e.g. a ConcatCritic), got {critic!r}")
    return critic


class _MatrixEstimator(_Estimator):
    """A bound on score matrices of groups of ``num_samples`` joint pairs (``None``: the whole batch)."""

    min_size = 1

    def __init__(self, critic: Critic, num_samples: int | None = None):
        super().__init__()
        self.critic = _check_critic(critic)
        self.num_samples = None if num_samples is None else check_positive_int("num_samples", num_samples)
        if self.num_samples is not None and self.num_samples < self.min_size:
            raise ValueError(
                f"num_samples must be >= {self.min_size} for {self.name} (the off-diagonal pairs are the negatives), "
                f"got {self.num_samples}"
            )
        self._dims_from(critic)

    def _scores(self, x: Tensor, z: Tensor) -> Tensor:
        xg, zg = _groups("num_samples", x, z, self.num_samples)
        return score_matrix(self.critic, xg, zg)  # (B, K, K)

    def _values(self, scores: Tensor) -> Tensor:
        """The bound's value per score matrix, ``(B,)``: InfoNCE, NWJ and MINE-DV each define it."""
        raise NotImplementedError  # abstract: every subclass overrides it

    def loss(self, x: Tensor, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Minus the in-batch bound (to minimise) and the bound (detached)."""
        bound = torch.mean(self._values(self._scores(x, z)))
        return -bound, bound.detach()

    def estimate(self, x: Any, z: Any, generator: torch.Generator | None = None) -> BoundEstimate:
        """The bound on fresh joint samples, split into groups of ``num_samples``."""
        x, z = self._inputs(x, z)
        with torch.no_grad():
            return self._bound(self._scores(x, z))


class InfoNCE(_MatrixEstimator):
    """InfoNCE with critic ``critic``, groups of ``num_samples = K`` joint pairs (``None``: the whole batch).

    ``loss`` is minus the in-batch bound; ``estimate`` splits fresh samples into groups of ``K``
    (the bound depends on ``K``: evaluate with the ``K`` you trained with).
    """

    name = "InfoNCE"

    def _values(self, scores):
        return infonce_terms(scores)

    def _bound(self, scores):
        return infonce(scores)


class NWJ(_MatrixEstimator):
    """NWJ / MINE-F with critic ``critic``; negatives are the off-diagonal pairs of groups of ``num_samples``."""

    name = "NWJ"
    min_size = 2

    def _values(self, scores):
        return nwj_terms(scores)

    def _bound(self, scores):
        return nwj(scores)


class MINEDV(_MatrixEstimator):
    """MINE with the Donsker-Varadhan bound; trained on the plug-in in-batch value (biased gradient).

    Belghazi et al. correct the gradient's bias with a moving average of the denominator; here the
    batch is the whole denominator, so use large batches.
    """

    name = "MINE-DV"
    min_size = 2

    def _values(self, scores):
        return mine_dv_value(scores)

    def _bound(self, scores):
        return mine_dv(scores)


def _check_prior(prior: Any, z_dim: int | None) -> Any:
    if not (hasattr(prior, "log_prob") and hasattr(prior, "sample")):
        raise ValueError(f"prior must be a torch/Pyro distribution over z (with log_prob and sample), got {prior!r}")
    event = tuple(getattr(prior, "event_shape", ()))
    if z_dim is not None and event != (z_dim,):
        raise ValueError(
            f"prior must have event_shape (z_dim,) = ({z_dim},), got {event}; use .to_event(1) for a factorised prior"
        )
    return prior


class BarberAgakov(_Estimator):
    """Barber-Agakov with a normalised ``proposal`` ``q(z|x)`` (e.g. :class:`GaussianProposal`) and known ``prior``."""

    name = "BA"

    def __init__(self, proposal: nn.Module, prior: Any):
        super().__init__()
        self.proposal = proposal
        self._dims_from(proposal)
        self.prior = _check_prior(prior, self.z_dim)

    def loss(self, x: Tensor, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        bound = torch.mean(barber_agakov_terms(self.proposal.log_prob(x, z), self.prior.log_prob(z)))
        return -bound, bound.detach()

    def estimate(self, x: Any, z: Any, generator: torch.Generator | None = None) -> BoundEstimate:
        x, z = self._inputs(x, z)
        with torch.no_grad():
            return barber_agakov(self.proposal.log_prob(x, z), self.prior.log_prob(z))


class GIWAE(_Estimator):
    """Generalised IWAE (Brekelmans et al., 2022): proposal ``q(z|x)``, critic ``T``, ``num_samples = K``.

    The ``K - 1`` proposal draws are reparameterised, so ``loss`` trains ``q`` and ``T`` jointly.
    With the same ``q`` family GIWAE's optimum is ``>=`` BA's (take ``T = 0``); with ``q = p(z)``
    in the family it is ``>=`` InfoNCE's with the same critic family and ``K``.
    """

    name = "GIWAE"

    def __init__(self, proposal: nn.Module, critic: Critic, prior: Any, num_samples: int):
        super().__init__()
        self.proposal = proposal
        self.critic = _check_critic(critic)
        self.num_samples = check_positive_int("num_samples", num_samples)
        self._dims_from(proposal, critic)
        self.prior = _check_prior(prior, self.z_dim)

    def parts(self, x: Tensor, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(log q(z_i|x_i), log p(z_i), scores (K, N))`` for :func:`giwae_terms`, with fresh proposal draws."""
        draws = self.proposal.sample(x, self.num_samples - 1, generator)
        zs = torch.cat([z[None], draws], dim=0)  # (K, N, dz), row 0 the joint sample
        scores = self.critic(x[None], zs)
        return self.proposal.log_prob(x, z), self.prior.log_prob(z), scores

    def loss(self, x: Tensor, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        bound = torch.mean(giwae_terms(*self.parts(x, z, generator)))
        return -bound, bound.detach()

    def estimate(self, x: Any, z: Any, generator: torch.Generator | None = None) -> BoundEstimate:
        x, z = self._inputs(x, z)
        with torch.no_grad():
            return giwae(*self.parts(x, z, generator))


class MINEAIS(_Estimator):
    """MINE-AIS (Brekelmans et al., 2022): an energy-based posterior ``pi_T(z|x) ∝ p(z) e^{T(x,z)}``.

    Training (``loss``) follows the gradient of ``I_EB(T) = E_p T - E_{p(x)} log Z_T(x)``,
    ``E_p[grad T] - E_{p(x) pi_T}[grad T]``, with negatives from ``num_mcmc_steps`` HMC moves
    (``step_size``, ``num_leapfrog``) on ``z`` targeting ``pi_T(.|x_i)``, started at the joint
    sample ``z_i`` (``mcmc_init="data"``, contrastive divergence) or at prior draws (``"prior"``).
    The loss's *value* is minus the in-batch InfoNCE value of the current critic; its gradient is
    the energy-based one.  ``estimate`` evaluates the bound with Multi-Sample AIS (:func:`mine_ais`).
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
        super().__init__()
        self.critic = _check_critic(critic)
        self._dims_from(critic)
        self.prior = _check_prior(prior, self.z_dim)
        self.num_mcmc_steps = check_positive_int("num_mcmc_steps", num_mcmc_steps)
        self.step_size = check_positive("step_size", step_size)
        self.num_leapfrog = check_positive_int("num_leapfrog", num_leapfrog)
        self.mcmc_init = check_choice("mcmc_init", mcmc_init, ("data", "prior"))

    def negatives(self, x: Tensor, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, float]:
        """Approximate draws ``(N, dz)`` from ``pi_T(z|x_i)`` (detached) and the HMC acceptance rate."""
        x = x.detach()
        start = z.detach() if self.mcmc_init == "data" else self.prior.sample((x.shape[0],)).to(z.dtype)

        def log_density(zz):
            return self.prior.log_prob(zz) + self.critic(x, zz)

        return hmc_chain(start, log_density, self.num_mcmc_steps, self.step_size, self.num_leapfrog, generator)

    def loss(self, x: Tensor, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        negatives, _ = self.negatives(x, z, generator)
        surrogate = -(torch.mean(self.critic(x, z)) - torch.mean(self.critic(x, negatives)))
        with torch.no_grad():
            nce = torch.mean(infonce_terms(score_matrix(self.critic, x, z)))
        # value -nce, gradient the energy-based surrogate's
        return (-nce - surrogate).detach() + surrogate, nce

    def estimate(
        self, x: Any, z: Any, generator: torch.Generator | None = None, **ais_kwargs: Any
    ) -> BoundEstimate | tuple[BoundEstimate, dict]:
        x, z = self._inputs(x, z)
        return mine_ais(self.critic, x, z, self.prior, generator=generator, **ais_kwargs)


# ---------------------------------------------------------------------------------------
# MINE-AIS evaluation: Multi-Sample AIS from p(z) to p(z) e^{T(x, z)}
# ---------------------------------------------------------------------------------------
def mine_ais(
    critic: Critic,
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
    generator: torch.Generator | None = None,
) -> BoundEstimate | tuple[BoundEstimate, dict]:
    """The MINE-AIS lower bound of a critic ``T`` on joint samples ``x`` ``(N, dx)``, ``z`` ``(N, dz)``.

    For each ``x_i``: ``K - 1 = num_chains - 1`` forward AIS chains from ``prior`` ``p(z)`` to
    ``pi_T(z|x_i) ∝ p(z) e^{T(x_i, z)}`` and one reverse chain started at the joint sample ``z_i``
    (:func:`pyro_ext.infer.ais.ais` and :func:`~pyro_ext.infer.ais.ais_reverse`, HMC with
    ``num_leapfrog`` leapfrog steps through ``num_steps`` temperatures of ``schedule``, see
    :class:`adapters.mi.AISConfig`), and the term ``T(x_i, z_i) - log 1/K sum_k w_k``.  A lower
    bound on ``I`` for every ``K`` and ``T`` (Brekelmans et al., 2022), which tends to
    ``I_EB(T) = E_p T - E log Z_T(x) >= I_DV(T)`` as AIS becomes exact; with ``num_steps=1`` it
    is GIWAE with ``q = p(z)``, every term ``<= log K``.

    Step sizes: with ``adapt_step_size`` an adaptive pilot
    (:func:`~pyro_ext.infer.ais.tune_step_sizes`) on the first ``num_pilot`` ``x``'s with
    independent prior draws gives one step size per temperature (geometric mean over the pilot's
    chains), which every estimating chain then uses fixed, so the reverse chain is the exact
    reversal of the forward ones; else ``step_size`` throughout.  ``return_details`` adds a dict:
    ``per_sample`` ``(N,)``, ``log_weights`` ``(N, K)`` (column 0 the reverse chain),
    ``step_sizes`` ``(T,)``, ``acceptance_rate`` ``(T,)``.  Same arguments and results as
    :func:`numpyro_ext.infer.mi_bounds.mine_ais`, without the key and params (the critic holds them).
    """
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
    critic = _check_critic(critic)
    params = list(critic.parameters()) if isinstance(critic, nn.Module) else []
    x, z = _check_joint(x, z, params[0].dtype if params else None)
    _check_dims(x.shape, z.shape, getattr(critic, "x_dim", None), getattr(critic, "z_dim", None))
    prior = _check_prior(prior, z.shape[-1])
    from pyro_ext.infer.ais import ais, ais_reverse, tune_step_sizes

    n, k = x.shape[0], cfg.num_chains
    dtype, device = z.dtype, z.device
    betas = torch.as_tensor(cfg.betas, dtype=dtype, device=device)
    log_prior = prior.log_prob

    def critic_at(x_rows: Tensor) -> Callable[[Tensor], Tensor]:
        # chains for several x_i run as one batch: row b of the positions belongs to x_rows[b]
        return lambda q: critic(x_rows, q)

    kernel = {"num_leapfrog": cfg.num_leapfrog, "generator": generator}
    with torch.no_grad():
        if cfg.adapt_step_size:
            m = min(n, num_pilot)
            pilot_init = prior.sample((m * k,)).to(dtype)
            steps = tune_step_sizes(
                pilot_init,
                log_prior,
                critic_at(x[:m].repeat_interleave(k, 0)),
                betas,
                step_size=cfg.step_size,
                target_accept_prob=cfg.target_accept_prob,
                **kernel,
            )
        else:
            steps = torch.full((cfg.num_steps,), cfg.step_size, dtype=dtype, device=device)
        reverse = ais_reverse(z, log_prior, critic_at(x), betas, step_size=steps, **kernel)
        log_w, accept = reverse.log_weights[:, None], reverse.acceptance_rate
        if k > 1:
            init = prior.sample((n * (k - 1),)).to(dtype)
            forward = ais(init, log_prior, critic_at(x.repeat_interleave(k - 1, 0)), betas, step_size=steps, **kernel)
            log_w = torch.cat([log_w, forward.log_weights.reshape(n, k - 1)], dim=1)
            accept = torch.cat([accept, forward.acceptance_rate], dim=1)
        terms = mine_ais_terms(critic(x, z), log_w.T)
    estimate = BoundEstimate.from_samples(_numpy(terms), "lower", "MINE-AIS")
    if not return_details:
        return estimate
    details = {
        "per_sample": _numpy(terms),
        "log_weights": _numpy(log_w),
        "step_sizes": _numpy(steps),
        "acceptance_rate": _numpy(accept.mean(-1)),
    }
    return estimate, details


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------
class CriticFit(NamedTuple):
    """``params`` (a copy of the trained ``state_dict``), ``losses`` ``(num_steps,)`` (the minimised
    loss) and ``bounds`` ``(num_steps,)`` (the in-batch bound value of each step; for MINE-AIS the
    in-batch InfoNCE value).  The estimator's modules are trained in place.

    For a dict of estimators each field is a dict with the same keys."""

    params: Any
    losses: Any
    bounds: Any


def _make_optimizer(optimizer: Any, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if optimizer is None:
        return torch.optim.Adam(params, lr=1e-3)
    if isinstance(optimizer, torch.optim.Optimizer):
        covered = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [p for p in params if id(p) not in covered]
        if missing:
            raise ValueError(
                f"optimizer must cover every parameter of the estimator, but {len(missing)} of {len(params)} "
                "parameter tensors are missing; build it on estimator.parameters() or pass a factory "
                "params -> Optimizer (e.g. functools.partial(torch.optim.Adam, lr=3e-3))"
            )
        return optimizer
    if callable(optimizer):
        built = optimizer(params)
        if not isinstance(built, torch.optim.Optimizer):
            raise TypeError(f"optimizer factory must return a torch.optim.Optimizer, got {type(built).__name__}")
        return built
    raise TypeError(
        "optimizer must be None (Adam, lr=1e-3), a torch.optim.Optimizer or a factory params -> Optimizer, "
        f"got {optimizer!r}"
    )


def _check_disjoint(estimators: Mapping[str, nn.Module]) -> None:
    owner: dict[int, str] = {}
    for name, est in estimators.items():
        for param in est.parameters():
            if id(param) in owner and owner[id(param)] != name:
                raise ValueError(
                    f"estimators {owner[id(param)]!r} and {name!r} share parameters (the same critic or proposal "
                    "module): trained side by side their gradients would add up; give each its own module "
                    "(e.g. copy.deepcopy(critic))"
                )
            owner[id(param)] = name


def fit_critic(
    estimator: Any,
    sample_joint: Callable[[int], tuple[Tensor, Tensor]],
    num_steps: int,
    batch_size: int,
    optimizer: Any = None,
    generator: torch.Generator | None = None,
) -> CriticFit:
    """Train ``estimator``'s networks in place on ``num_steps`` fresh joint batches.

    ``sample_joint(batch_size) -> (x, z)`` draws ``(batch_size, dx)``, ``(batch_size, dz)`` joint
    samples (with torch's global generator: seed with ``pyro.set_rng_seed``).  ``optimizer`` is
    ``None`` (``torch.optim.Adam``, ``lr=1e-3``), a factory ``params -> torch.optim.Optimizer``
    (``functools.partial(torch.optim.Adam, lr=3e-3)``) or an optimizer already built on the
    estimator's parameters.  ``generator`` feeds the estimators' own draws (proposal noise, HMC).
    ``estimator`` is any of :class:`InfoNCE`, :class:`NWJ`, :class:`MINEDV`, :class:`BarberAgakov`,
    :class:`GIWAE`, :class:`MINEAIS` (or a module with ``loss(x, z, generator) -> (loss, bound)``),
    or a dict of them: they are then trained side by side on the same batches with one optimizer
    over all their (disjoint) parameters -- for an element-wise optimizer such as Adam exactly as
    separate runs on the same batches would be -- which is what a comparison of bounds wants.
    A non-finite loss stops training with a RuntimeError naming the step and the estimator.
    """
    num_steps = check_positive_int("num_steps", num_steps)
    batch_size = check_positive_int("batch_size", batch_size)
    named = isinstance(estimator, Mapping)
    members = dict(estimator) if named else {"estimator": estimator}
    for member in members.values():
        if not callable(getattr(member, "loss", None)) or not isinstance(member, nn.Module):
            raise ValueError(f"estimator must be a torch.nn.Module with a loss(x, z, generator) method, got {member!r}")
    if not callable(sample_joint):
        raise ValueError(f"sample_joint must be a function batch_size -> (x, z), got {sample_joint!r}")
    _check_disjoint(members)
    seen: set[int] = set()
    params = []
    for member in members.values():
        for param in member.parameters():
            if id(param) not in seen and param.requires_grad:
                seen.add(id(param))
                params.append(param)
    opt = _make_optimizer(optimizer, params)
    losses = {name: np.empty(num_steps) for name in members}
    bounds = {name: np.empty(num_steps) for name in members}
    for module in members.values():
        module.train()
    for step in range(num_steps):
        x, z = sample_joint(batch_size)
        if not (isinstance(x, Tensor) and isinstance(z, Tensor)) or x.dim() != 2 or z.dim() != 2:
            raise ValueError(
                "sample_joint must return tensors x (batch_size, dx) and z (batch_size, dz), got "
                f"{getattr(x, 'shape', type(x).__name__)} and {getattr(z, 'shape', type(z).__name__)}"
            )
        if x.shape[0] != batch_size or z.shape[0] != batch_size:
            raise ValueError(
                f"sample_joint must return x (batch_size, dx) and z (batch_size, dz) with batch_size = {batch_size}, "
                f"got shapes {tuple(x.shape)} and {tuple(z.shape)}"
            )
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for name, member in members.items():
            if step == 0:
                _check_dims(x.shape, z.shape, getattr(member, "x_dim", None), getattr(member, "z_dim", None))
            loss, bound = member.loss(x, z, generator)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise RuntimeError(
                    f"the loss of {name!r} is {value} at step {step}: the critic overflowed; lower the learning "
                    "rate or use a bound with bounded terms (InfoNCE, GIWAE)"
                )
            losses[name][step], bounds[name][step] = value, float(bound)
            total = total + loss
        total.backward()
        opt.step()
    states = {name: {k: v.detach().clone() for k, v in member.state_dict().items()} for name, member in members.items()}
    if named:
        return CriticFit(states, losses, bounds)
    return CriticFit(states["estimator"], losses["estimator"], bounds["estimator"])
