"""Encoders for the Pyro amortized guide: the default MLP as a ``PyroModule``, and the check of user encoders.

An encoder maps a batch of per-datum inputs ``x`` of shape ``(b, F)`` to ``(b, 2 D)``: the locations and raw
scales of the local latents (layout: :class:`adapters.amortized.EncoderLayout`).  It is a ``torch.nn.Module``
held by the guide as its ``encoder`` submodule; as a ``PyroModule`` its parameters live in Pyro's parameter
store (names ``"AutoAmortizedNormal.encoder.<path>"``), so ``SVI`` trains them with the guide's globals.

:class:`MLPEncoder` has the architecture and initialisation of NumPyro's
:func:`numpyro_ext.infer.amortized.mlp_encoder`, and moves its weights to and from NumPyro's parameter pytree
(a list of ``(W, b)`` with ``W`` of shape ``(d_in, d_out)``; a ``torch.nn.Linear`` stores ``W.T``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_
from torch import nn

ENCODER_FORMS = (
    "None (the default MLP) or a torch.nn.Module mapping (b, F) inputs to (b, 2 D) outputs (a plain Module is "
    "made a PyroModule in place, by pyro.nn.module.to_pyro_module_, so that its parameters live in Pyro's "
    "parameter store)"
)


class MLPEncoder(PyroModule):
    """A multilayer perceptron ``F -> hidden... -> output_size`` (a ``PyroModule``).

    Hidden layers start LeCun-normal (``W ~ N(0, 1 / d_in)``, from torch's global generator: seed it with
    ``pyro.set_rng_seed``), biases at zero, and the last layer at zero, so that the guide starts at location
    0 and scale ``init_scale`` for every datum (its gradient is not zero, so training moves it at once).
    ``forward`` maps ``(..., F)`` to ``(..., output_size)`` with ``activation`` (ELU) between layers and none
    after the last; ``hidden=()`` is affine.  The same network as NumPyro's ``mlp_encoder``.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden: Sequence[int] = (64,),
        activation: Callable[[torch.Tensor], torch.Tensor] = nn.functional.elu,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        sizes = (int(input_size), *(int(w) for w in hidden), int(output_size))
        self.activation = activation
        layers = [
            PyroModule[nn.Linear](d_in, d_out, dtype=dtype, device=device)
            for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True)
        ]
        with torch.no_grad():
            for i, layer in enumerate(layers):
                if i == len(layers) - 1:
                    layer.weight.zero_()
                else:
                    layer.weight.normal_(0.0, 1.0 / math.sqrt(layer.in_features))
                layer.bias.zero_()
        self.layers = PyroModule[nn.ModuleList](layers)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The widths ``(F, *hidden, output_size)``."""
        return (self.layers[0].in_features, *(layer.out_features for layer in self.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., F) -> (..., output_size)``."""
        *hidden, last = self.layers
        for layer in hidden:
            x = self.activation(layer(x))
        return last(x)

    def numpyro_params(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The weights in NumPyro's ``mlp_encoder`` layout: a list of ``(W (d_in, d_out), b (d_out,))`` numpy arrays."""
        return [
            (layer.weight.detach().cpu().numpy().T.copy(), layer.bias.detach().cpu().numpy().copy())
            for layer in self.layers
        ]

    def load_numpyro_params(self, layers: Sequence[tuple[Any, Any]]) -> None:
        """Set the weights (in place, no gradient) from NumPyro's ``mlp_encoder`` layout, ``[(W, b), ...]``.

        Arrays may be numpy, JAX or torch; a ``ValueError`` naming ``params`` when the list or a shape differs.
        """
        try:
            pairs = [tuple(pair) for pair in layers]
        except TypeError:
            pairs = None
        if pairs is None or len(pairs) != len(self.layers) or any(len(pair) != 2 for pair in pairs):
            raise ValueError(
                f"params: the default MLP encoder takes a list of {len(self.layers)} (W, b) pairs (widths "
                f"{self.sizes}), got {layers!r}"
            )
        for i, (layer, (weight, bias)) in enumerate(zip(self.layers, pairs, strict=True)):
            weight, bias = np.asarray(weight), np.asarray(bias)
            expected = ((layer.in_features, layer.out_features), (layer.out_features,))
            if (weight.shape, bias.shape) != expected:
                raise ValueError(
                    f"params: layer {i} of the default MLP encoder takes W of shape {expected[0]} (d_in, d_out) and "
                    f"b of shape {expected[1]}, got {weight.shape} and {bias.shape}"
                )
            with torch.no_grad():
                layer.weight.copy_(torch.as_tensor(weight.T.copy(), dtype=layer.weight.dtype))
                layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype))


def check_encoder_form(encoder: Any) -> nn.Module | None:
    """``encoder`` as the guide holds it: ``None`` (the default MLP, built at the guide's first call) or a
    ``PyroModule`` (a plain ``nn.Module`` converted in place); a ``TypeError`` naming it otherwise."""
    if encoder is None:
        return None
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be {ENCODER_FORMS}; got {encoder!r}")
    if not isinstance(encoder, PyroModule) or any(not isinstance(m, PyroModule) for m in encoder.modules()):
        to_pyro_module_(encoder)
    return encoder


def parameter_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s first floating-point parameter (``None`` when it has none)."""
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return None
