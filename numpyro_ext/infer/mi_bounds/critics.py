"""Critics ``T(x, z)`` and proposals ``q(z|x)`` for the MI bounds: small MLPs in plain ``jax.numpy``.

A critic is ``critic(params, x, z) -> scores`` broadcasting over leading axes, with ``init(rng_key)``
and ``x_dim``/``z_dim``; :func:`score_matrix` gives ``S[i, j] = T(x_i, z_j)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from adapters.validation import check_positive, check_positive_int

__all__ = ["ConcatCritic", "Critic", "GaussianProposal", "SeparableCritic", "mlp_apply", "mlp_init", "score_matrix"]

Array = jax.Array
Critic = Callable[[Any, Array, Array], Array]


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
