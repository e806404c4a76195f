"""The trainable Pyro MI estimators: ``torch.nn.Module`` s with ``loss`` (training) and ``estimate`` (evaluation).

:class:`InfoNCE`, :class:`NWJ`, :class:`MINEDV` (score matrices of a critic), :class:`BarberAgakov`,
:class:`GIWAE` (a proposal, and a critic) and :class:`MINEAIS` (an energy-based posterior); see
:mod:`pyro_ext.infer.mi_bounds` for the bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from adapters.mi import BoundEstimate, check_group_size
from adapters.validation import check_choice, check_positive, check_positive_int
from pyro_ext.infer.mi_bounds import terms
from pyro_ext.infer.mi_bounds.annealed import hmc_chain, mine_ais
from pyro_ext.infer.mi_bounds.checks import check_critic, check_dims, check_joint, check_prior
from pyro_ext.infer.mi_bounds.critics import Critic, score_matrix

__all__ = ["GIWAE", "MINEAIS", "MINEDV", "NWJ", "BarberAgakov", "InfoNCE"]

Tensor = torch.Tensor


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
        x, z = check_joint(x, z, self._dtype())
        check_dims(x.shape, z.shape, self.x_dim, self.z_dim)
        return x, z


def _groups(name: str, x: Tensor, z: Tensor, num_samples: int | None) -> tuple[Tensor, Tensor]:
    """``(N, d)`` -> ``(N // K, K, d)``; ``N`` must be a multiple of ``K``."""
    n = x.shape[0]
    k = check_group_size(name, n, num_samples)
    return x.reshape(n // k, k, x.shape[-1]), z.reshape(n // k, k, z.shape[-1])


class _MatrixEstimator(_Estimator):
    """A bound on score matrices of groups of ``num_samples`` joint pairs (``None``: the whole batch)."""

    min_size = 1

    def __init__(self, critic: Critic, num_samples: int | None = None):
        super().__init__()
        self.critic = check_critic(critic)
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

    # set by InfoNCE, NWJ and MINE-DV: the bound's value per score matrix ``(B,)`` (differentiable)
    # and its estimate (a BoundEstimate) from score matrices ``(B, K, K)``
    _values: Callable[[Tensor], Tensor]
    _bound: Callable[[Tensor], BoundEstimate]

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

    _values = staticmethod(terms.infonce_terms)
    _bound = staticmethod(terms.infonce)


class NWJ(_MatrixEstimator):
    """NWJ / MINE-F with critic ``critic``; negatives are the off-diagonal pairs of groups of ``num_samples``."""

    name = "NWJ"
    min_size = 2

    _values = staticmethod(terms.nwj_terms)
    _bound = staticmethod(terms.nwj)


class MINEDV(_MatrixEstimator):
    """MINE with the Donsker-Varadhan bound; trained on the plug-in in-batch value (biased gradient).

    Belghazi et al. correct the gradient's bias with a moving average of the denominator; here the
    batch is the whole denominator, so use large batches.
    """

    name = "MINE-DV"
    min_size = 2

    _values = staticmethod(terms.mine_dv_value)
    _bound = staticmethod(terms.mine_dv)


class BarberAgakov(_Estimator):
    """Barber-Agakov with a normalised ``proposal`` ``q(z|x)`` (e.g. :class:`GaussianProposal`) and known ``prior``."""

    name = "BA"

    def __init__(self, proposal: nn.Module, prior: Any):
        super().__init__()
        self.proposal = proposal
        self._dims_from(proposal)
        self.prior = check_prior(prior, self.z_dim)

    def loss(self, x: Tensor, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        bound = torch.mean(terms.barber_agakov_terms(self.proposal.log_prob(x, z), self.prior.log_prob(z)))
        return -bound, bound.detach()

    def estimate(self, x: Any, z: Any, generator: torch.Generator | None = None) -> BoundEstimate:
        x, z = self._inputs(x, z)
        with torch.no_grad():
            return terms.barber_agakov(self.proposal.log_prob(x, z), self.prior.log_prob(z))


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
        self.critic = check_critic(critic)
        self.num_samples = check_positive_int("num_samples", num_samples)
        self._dims_from(proposal, critic)
        self.prior = check_prior(prior, self.z_dim)

    def parts(self, x: Tensor, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(log q(z_i|x_i), log p(z_i), scores (K, N))`` for :func:`giwae_terms`, with fresh proposal draws."""
        draws = self.proposal.sample(x, self.num_samples - 1, generator)
        zs = torch.cat([z[None], draws], dim=0)  # (K, N, dz), row 0 the joint sample
        scores = self.critic(x[None], zs)
        return self.proposal.log_prob(x, z), self.prior.log_prob(z), scores

    def loss(self, x: Tensor, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        bound = torch.mean(terms.giwae_terms(*self.parts(x, z, generator)))
        return -bound, bound.detach()

    def estimate(self, x: Any, z: Any, generator: torch.Generator | None = None) -> BoundEstimate:
        x, z = self._inputs(x, z)
        with torch.no_grad():
            return terms.giwae(*self.parts(x, z, generator))


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
        self.critic = check_critic(critic)
        self._dims_from(critic)
        self.prior = check_prior(prior, self.z_dim)
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
            nce = torch.mean(terms.infonce_terms(score_matrix(self.critic, x, z)))
        # value -nce, gradient the energy-based surrogate's
        return (-nce - surrogate).detach() + surrogate, nce

    def estimate(
        self, x: Any, z: Any, generator: torch.Generator | None = None, **ais_kwargs: Any
    ) -> BoundEstimate | tuple[BoundEstimate, dict]:
        x, z = self._inputs(x, z)
        return mine_ais(self.critic, x, z, self.prior, generator=generator, **ais_kwargs)
