"""MINE-AIS's sampling in torch: batched HMC (:func:`hmc_chain`) and the Multi-Sample AIS bound (:func:`mine_ais`).

Brekelmans et al., ICLR 2022; see :mod:`pyro_ext.infer.mi_bounds`.  The HMC pieces are
:mod:`pyro_ext.infer.hmc_util`'s, the AIS chains :mod:`pyro_ext.infer.ais`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from adapters.mi import AISConfig, BoundEstimate, ais_reliability, mean_row_ess
from adapters.validation import check_positive, check_positive_int
from pyro_ext.infer.ais import ais, ais_reverse, tune_step_sizes
from pyro_ext.infer.hmc_util import IntegratorState, kinetic_energy, leapfrog, metropolis_test, sample_momentum
from pyro_ext.infer.mi_bounds.checks import check_critic, check_dims, check_joint, check_prior, to_numpy
from pyro_ext.infer.mi_bounds.critics import Critic
from pyro_ext.infer.mi_bounds.terms import mine_ais_terms

__all__ = ["hmc_chain", "mine_ais"]

Tensor = torch.Tensor


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
    :func:`numpyro_ext.infer.mi_bounds.mine_ais`, without the key and params (the critic holds them);
    divergences above 1% or degenerate weights warn as in :func:`pyro_ext.infer.ais_mi.ais_mi_lower`.
    """
    cfg = AISConfig.from_arguments(locals())
    num_pilot = check_positive_int("num_pilot", num_pilot)
    critic = check_critic(critic)
    params = list(critic.parameters()) if isinstance(critic, nn.Module) else []
    x, z = check_joint(x, z, params[0].dtype if params else None)
    check_dims(x.shape, z.shape, getattr(critic, "x_dim", None), getattr(critic, "z_dim", None))
    prior = check_prior(prior, z.shape[-1])
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
        num_divergent = int(reverse.is_divergent.sum())
        if k > 1:
            init = prior.sample((n * (k - 1),)).to(dtype)
            forward = ais(init, log_prior, critic_at(x.repeat_interleave(k - 1, 0)), betas, step_size=steps, **kernel)
            log_w = torch.cat([log_w, forward.log_weights.reshape(n, k - 1)], dim=1)
            accept = torch.cat([accept, forward.acceptance_rate], dim=1)
            num_divergent += int(forward.is_divergent.sum())
        terms = mine_ais_terms(critic(x, z), log_w.T)
    warned = ais_reliability(
        "MINE-AIS",
        num_divergent,
        n * k * cfg.num_steps,
        mean_row_ess(to_numpy(log_w)),
        k,
        what="importance weights of each outer sample (mean ESS over the samples)",
    )
    estimate = BoundEstimate.from_samples(to_numpy(terms), "lower", "MINE-AIS", warned)
    if not return_details:
        return estimate
    details = {
        "per_sample": to_numpy(terms),
        "log_weights": to_numpy(log_w),
        "step_sizes": to_numpy(steps),
        "acceptance_rate": to_numpy(accept.mean(-1)),
    }
    return estimate, details
