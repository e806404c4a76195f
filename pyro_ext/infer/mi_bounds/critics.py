"""Networks of the Pyro MI bounds: :class:`MLP`, the critics ``T(x, z)`` and the proposal ``q(z|x)``.

``torch.nn.Module`` s holding their own parameters, the twins of the NumPyro module's
``(init, apply)`` pairs; see :mod:`pyro_ext.infer.mi_bounds`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adapters.validation import check_positive, check_positive_int
from pyro_ext.infer.mi_bounds.checks import check_dims, check_hidden

__all__ = ["MLP", "ConcatCritic", "Critic", "GaussianProposal", "SeparableCritic", "score_matrix"]

Tensor = torch.Tensor
Critic = Callable[[Tensor, Tensor], Tensor]


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


class _JointNetwork(nn.Module):
    """A network on ``(x, z)`` pairs: validated ``x_dim``, ``z_dim`` and hidden layer widths."""

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.x_dim = check_positive_int("x_dim", x_dim)
        self.z_dim = check_positive_int("z_dim", z_dim)
        self.hidden = check_hidden(hidden)


class ConcatCritic(_JointNetwork):
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
        super().__init__(x_dim, z_dim, hidden)
        self.net = MLP((self.x_dim + self.z_dim, *self.hidden, 1), activation, dtype, generator)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        check_dims(x.shape, z.shape, self.x_dim, self.z_dim)
        shape = torch.broadcast_shapes(x.shape[:-1], z.shape[:-1])
        xz = torch.cat([x.expand(*shape, self.x_dim), z.expand(*shape, self.z_dim)], dim=-1)
        return self.net(xz)[..., 0]


class SeparableCritic(_JointNetwork):
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
        super().__init__(x_dim, z_dim, hidden)
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.g = MLP((self.x_dim, *self.hidden, self.embed_dim), activation, dtype, generator)
        self.h = MLP((self.z_dim, *self.hidden, self.embed_dim), activation, dtype, generator)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        check_dims(x.shape, z.shape, self.x_dim, self.z_dim)
        return torch.sum(self.g(x) * self.h(z), dim=-1)


class GaussianProposal(_JointNetwork):
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
        super().__init__(x_dim, z_dim, hidden)
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
        check_dims(x.shape, (self.z_dim,), self.x_dim, None)
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
