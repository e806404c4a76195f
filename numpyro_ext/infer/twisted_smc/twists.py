"""Learnable twists in JAX: Gaussian (state-space models) and tabular (token models).

A learnable twist is an object with ``init(rng_key) -> params`` and
``__call__(params, ...) -> log psi``; :meth:`TwistedSMC.fit_twists` trains its params.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from adapters.smc import check_twist_state
from adapters.validation import check_positive_int

__all__ = ["QuadraticTwist", "TabularTwist"]


class QuadraticTwist:
    """Learnable Gaussian twist ``log psi_t(x) = -0.5 x^T L_t L_t^T x + h_t^T x + c_t`` on ``state[site]``.

    Params: ``{"L": (T, d, d) lower-triangular, "h": (T, d), "c": (T,)}`` for ``t = 0..T-1``
    (``psi_T = 1`` is fixed by the filter; the constants ``c_t`` do not change SMC, but a
    classifier's logit, SIXO's, needs them).  The optimal twist of a linear-Gaussian state-space model,
    ``log p(y_{t+1:T} | x_t)``, is of this form up to a constant; :meth:`from_information`
    builds it from the backward information filter's ``J_t``, ``h_t``.
    """

    def __init__(self, site: str, dim: int, num_steps: int, init_scale: float = 0.1):
        self.site = site
        self.dim = check_positive_int("dim", dim)
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.init_scale = float(init_scale)

    def init(self, rng_key: jax.Array) -> dict[str, jax.Array]:
        """A nearly flat twist: ``L_t = init_scale * I``, ``h_t = 0``.

        ``L = 0`` would be a saddle of every loss (``J = L L^T`` has zero gradient there).
        """
        del rng_key  # deterministic start
        eye = jnp.eye(self.dim)
        return {
            "L": jnp.broadcast_to(self.init_scale * eye, (self.num_steps, self.dim, self.dim)),
            "h": jnp.zeros((self.num_steps, self.dim)),
            "c": jnp.zeros((self.num_steps,)),
        }

    @staticmethod
    def from_information(J: Any, h: Any, c: Any = None, jitter: float = 1e-10) -> dict[str, jax.Array]:
        """Params with ``L_t L_t^T = J_t`` (``J`` of shape ``(T, d, d)`` PSD; a tiny ``jitter`` for singular ones)."""
        J = jnp.asarray(J)
        eye = jnp.eye(J.shape[-1], dtype=J.dtype)
        c = jnp.zeros(J.shape[0], dtype=J.dtype) if c is None else jnp.asarray(c)
        return {"L": jnp.linalg.cholesky(J + jitter * eye), "h": jnp.asarray(h), "c": c}

    def __call__(self, params: Mapping[str, jax.Array], t: jax.Array, state: Mapping[str, jax.Array]) -> jax.Array:
        value = state.get(self.site)
        check_twist_state(self.site, self.dim, state.keys(), None if value is None else jnp.shape(value))
        expected = {"L": (self.num_steps, self.dim, self.dim), "h": (self.num_steps, self.dim), "c": (self.num_steps,)}
        for name, shape in expected.items():
            if name not in params or jnp.shape(params[name]) != shape:
                got = jnp.shape(params[name]) if name in params else "missing"
                raise ValueError(f"twist_params: {name!r} must have shape {shape} (T, d as the twist's), got {got}")
        x = jnp.reshape(value, (self.dim,))
        index = jnp.clip(t, 0, self.num_steps - 1)
        L = jnp.tril(params["L"][index])
        return -0.5 * jnp.sum(jnp.square(L.T @ x)) + params["h"][index] @ x + params["c"][index]


class TabularTwist:
    """Learnable token twist ``log psi_t(x_{1:t}) = sum_{s<=t} u[s, x_s] + w[t, x_t]`` (params ``(T, V)`` each).

    Exact for Markov ``p0`` with an additive log-potential ``sum_t g[t, x_t]`` (``u = g``,
    ``w = log E[exp(sum_{s>t} g[s, x_s]) | x_t]``), so tests can check learned twists
    against the optimal ones.
    """

    def __init__(self, vocab_size: int, length: int):
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.length = check_positive_int("length", length)

    def init(self, rng_key: jax.Array) -> dict[str, jax.Array]:
        del rng_key
        shape = (self.length, self.vocab_size)
        return {"u": jnp.zeros(shape), "w": jnp.zeros(shape)}

    def __call__(self, params: Mapping[str, jax.Array], tokens: jax.Array, position: jax.Array) -> jax.Array:
        past = jnp.arange(self.length) < position
        history = jnp.sum(jnp.where(past, params["u"][jnp.arange(self.length), tokens], 0.0))
        return history + params["u"][position] + params["w"][position]
