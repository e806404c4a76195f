"""Encoders for amortized guides: a pure MLP init/apply pair, and one interface over the encoders users bring.

An encoder maps a batch of per-datum inputs ``x`` of shape ``(b, F)`` to ``(b, 2 D)``: the locations and raw
scales of the local latents (layout: :class:`adapters.amortized.EncoderLayout`).  :func:`as_encoder` turns
each accepted form into an :class:`Encoder`, whose ``init(key, example)`` takes an example batch ``(1, F)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

ENCODER_FORMS = (
    "None (the default MLP), a pure pair (init(key, input_shape) -> params, apply(params, x) -> out), an "
    "object with .init(key, x) and .apply(params, x) (a flax linen Module, a haiku transform without apply "
    "rng), or an equinox Module called on one datum"
)


class Encoder(NamedTuple):
    """``init(key, example (1, F)) -> params`` and ``apply(params, x (b, F)) -> (b, out)``, both pure."""

    init: Callable[[jax.Array, jax.Array], Any]
    apply: Callable[[Any, jax.Array], jax.Array]


def mlp_encoder(
    output_size: int, hidden: Sequence[int] = (64,), activation: Callable[[jax.Array], jax.Array] = jax.nn.elu
) -> tuple[Callable[[jax.Array, tuple[int, ...]], list], Callable[[list, jax.Array], jax.Array]]:
    """A multilayer perceptron ``F -> hidden... -> output_size`` as a pure ``(init, apply)`` pair.

    ``init(key, input_shape)`` reads ``F = input_shape[-1]`` and returns a list of ``(W, b)``, ``W`` of shape
    ``(d_in, d_out)``; hidden layers start LeCun-normal (``W ~ N(0, 1 / d_in)``), zero biases, and the last
    layer starts at zero so that the guide starts at location 0 and scale ``init_scale`` for every datum
    (its gradient is not zero, so training moves it at once).  ``apply(params, x)`` maps ``(..., F)`` to
    ``(..., output_size)`` with ``activation`` between layers and none after the last; ``hidden=()`` is affine.
    """
    widths = tuple(int(w) for w in hidden)

    def init(key: jax.Array, input_shape: tuple[int, ...]) -> list:
        sizes = (int(input_shape[-1]), *widths, int(output_size))
        keys = jax.random.split(key, len(sizes) - 1)
        layers = []
        for i, (k, d_in, d_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
            if i == len(sizes) - 2:
                weight = jnp.zeros((d_in, d_out))
            else:
                weight = jax.random.normal(k, (d_in, d_out)) / jnp.sqrt(d_in)
            layers.append((weight, jnp.zeros(d_out)))
        return layers

    def apply(params: list, x: jax.Array) -> jax.Array:
        for weight, bias in params[:-1]:
            x = activation(x @ weight + bias)
        weight, bias = params[-1]
        return x @ weight + bias

    return init, apply


def _is_equinox_module(obj: Any) -> bool:
    # equinox is only consulted when the user's object could be one of its modules: never imported here
    eqx = sys.modules.get("equinox")
    return eqx is not None and isinstance(obj, eqx.Module)


def _pair_init(init: Callable[..., Any]) -> Callable[[jax.Array, jax.Array], Any]:
    def wrapped(key: jax.Array, example: jax.Array) -> Any:
        params = init(key, tuple(example.shape[1:]))
        # stax's convention: init returns (output_shape, params)
        if (
            isinstance(params, tuple)
            and len(params) == 2
            and isinstance(params[0], tuple)
            and all(isinstance(d, int) for d in params[0])
        ):
            return params[1]
        return params

    return wrapped


def as_encoder(encoder: Any, *, output_size: int, hidden: Sequence[int]) -> Encoder:
    """``encoder`` in any accepted form (:data:`ENCODER_FORMS`) as an :class:`Encoder`.

    ``None``: :func:`mlp_encoder` with ``hidden`` and ``output_size``.  A pair: ``init`` is called with the
    per-datum input shape ``(F,)`` (stax's ``(output_shape, params)`` return is accepted too).  ``.init/.apply``
    objects: ``init(key, example)`` with an example batch ``(1, F)``.  An equinox Module is called per datum
    (vmapped over the batch); its inexact arrays are the parameters, the rest stays fixed.
    """
    if encoder is None:
        init, apply = mlp_encoder(output_size, hidden)
        return Encoder(_pair_init(init), apply)
    if _is_equinox_module(encoder):
        eqx = sys.modules["equinox"]
        params, static = eqx.partition(encoder, eqx.is_inexact_array)

        def eqx_apply(p: Any, x: jax.Array) -> jax.Array:
            return jax.vmap(eqx.combine(p, static))(x)

        return Encoder(lambda key, example: params, eqx_apply)
    if callable(getattr(encoder, "init", None)) and callable(getattr(encoder, "apply", None)):
        return Encoder(lambda key, example: encoder.init(key, example), lambda p, x: encoder.apply(p, x))
    if isinstance(encoder, tuple | list) and len(encoder) == 2 and all(callable(f) for f in encoder):
        return Encoder(_pair_init(encoder[0]), encoder[1])
    raise TypeError(f"encoder must be {ENCODER_FORMS}; got {encoder!r}")
