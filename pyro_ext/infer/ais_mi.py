"""Multi-sample AIS and IWAE bounds on mutual information, for a joint with a known likelihood, in torch.

Brekelmans, Huang, Ghassemi, Ver Steeg, Grosse & Makhzani, "Improving Mutual Information
Estimation with Annealed and Energy-Based Bounds", ICLR 2022 (arXiv:2303.06992).

The torch twin of :mod:`numpyro_ext.infer.ais_mi` (see it for the derivations).  For a joint
``p(z) p(x | z)``, ``I(x; z) = E_{p(x,z)}[log p(x | z)] - E_{p(x)}[log p(x)]``, so every bound on
``log p(x)`` gives the opposite bound on ``I``.  Per outer draw ``(x_i, z_i) ~ p(x, z)``:

* :func:`ais_mi_upper` — ``K`` forward AIS chains from ``pi_0`` (the prior, or ``q(z | x)``) to
  ``p(z | x_i)`` with weights ``w_k``::

      I_upper = mean_i [ log p(x_i | z_i) - log((1/K) sum_{k=1}^K w_k(x_i)) ]  >=  I(x; z);

* :func:`ais_mi_lower` — ``K - 1`` forward chains and ONE reverse chain started from the true
  ``z_i`` (an exact posterior sample for ``x_i``), with the same weight function::

      I_lower = mean_i [ log p(x_i | z_i) - log((1/K) (w_1(x_i; z_i) + sum_{k=2}^K w_k(x_i))) ]  <=  I(x; z);

* :func:`iwae_mi_upper` / :func:`iwae_mi_lower` — ``T = 1``: ``w(z) = p(x, z) / q(z | x)``
  (``= p(x | z)`` with the prior), ``z^{1:K} ~ q`` (upper) or ``z^1 = z_i, z^{2:K} ~ q`` (lower).
  The IWAE lower bound saturates: ``l_i <= log K + log q(z_i | x_i) - log p(z_i)`` (``<= log K``
  with the prior).

All ``N x K`` chains run as one batch of the core of :mod:`pyro_ext.infer.ais`, with one fixed
per-temperature step-size schedule (from an adaptive pilot on independent joint draws when
``adapt_step_size``), which the lower bound needs: its reverse chain must be the exact reversal
of the forward ones.

Inputs are torch functions of ONE sample, as in NumPyro: ``sample_joint(n) -> (x (n, dx),
z (n, dz))``, ``log_prior(z (dz,))``, ``log_likelihood(x (dx,), z (dz,))`` (batched over chains by
``torch.func.vmap``), and optionally ``proposal(x (dx,)) -> distribution`` with
``sample((K,)) -> (K, dz)`` and ``log_prob(z)``.  With ``vectorized=True`` they are batched
instead: ``log_prior(z (M, dz)) -> (M,)``, ``log_likelihood(x (M, dx), z (M, dz)) -> (M,)`` and
``proposal(x (M, dx))`` a distribution with batch shape ``(M,)``.  Randomness: torch's global
generator (``pyro.set_rng_seed``), in this order: the outer and initial draws, the pilot (its
own draws, then its chains), the chains.  Every estimate is a
:class:`adapters.mi.BoundEstimate` whose standard error is over the ``N`` outer samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import torch

from adapters.mi import (
    AISConfig,
    BoundEstimate,
    check_joint_draws,
    check_joint_functions,
    check_site_names,
    multi_sample_reliability,
)
from adapters.validation import check_numeric, check_positive_int
from pyro_ext.infer.ais import anneal, pilot_step_sizes
from pyro_ext.infer.ais.anneal import kernel_options
from pyro_ext.infer.model_util import joint_model, unvalidated, vmap_log_density
from pyro_ext.infer.smc_util import log_mean_exp

__all__ = ["ais_mi_lower", "ais_mi_upper", "iwae_mi_lower", "iwae_mi_upper"]

Tensor = torch.Tensor


def _functions(functions: tuple, site_args: tuple, vectorized: Any, algorithm: str) -> tuple[Callable, ...]:
    """``(sample_joint, log_prior, log_likelihood)`` as given, or a model's (``functions[0]`` with
    ``site_args = (latent, observed, model_args, model_kwargs)``,
    :func:`pyro_ext.infer.model_util.joint_model`), after :func:`adapters.mi.check_joint_functions`."""
    if not check_joint_functions(functions, site_args, ("n",)):
        return functions
    if vectorized is True:
        raise TypeError("vectorized=True is for batched hand-written functions; a model is written for one draw")
    latent, observed, model_args, model_kwargs = site_args
    joint = joint_model(
        functions[0],
        check_site_names("latent", latent),
        check_site_names("observed", observed),
        tuple(model_args),
        model_kwargs,
        algorithm,
    )
    return joint.sample_joint, joint.log_prior, joint.log_likelihood


def _reliability(algorithm: str, log_weights: Any, num_divergent: int, num_steps: int) -> list[str]:
    """:func:`adapters.mi.multi_sample_reliability`, warning at the user's call (user -> bound -> here)."""
    return multi_sample_reliability(
        algorithm, log_weights.detach().cpu().numpy(), num_divergent, num_steps, stacklevel=5
    )


def _joint_draws(sample_joint: Callable, num: int) -> tuple[Tensor, Tensor]:
    x, z = check_joint_draws(sample_joint(num), "sample_joint(n)")
    x, z = torch.as_tensor(x).detach(), torch.as_tensor(z).detach()
    if x.dim() != 2 or z.dim() != 2 or x.shape[0] != num or z.shape[0] != num:
        raise ValueError(
            f"sample_joint(n) must return (x, z) of shapes (n, dx) and (n, dz); for n={num} it returned "
            f"shapes {tuple(x.shape)} and {tuple(z.shape)}"
        )
    return x, z


class _Joint:
    """The user's functions, batched: ``log p(z)``, ``log p(x | z)``, ``log q(z | x)`` over rows."""

    def __init__(self, log_prior, log_likelihood, proposal, vectorized: bool):
        if not isinstance(vectorized, bool):
            raise ValueError(f"vectorized must be True or False, got {vectorized!r}")
        for name, fn in (("log_prior", log_prior), ("log_likelihood", log_likelihood)):
            if not callable(fn):
                raise ValueError(f"{name} must be a function, got {fn!r}")
        if proposal is not None and not callable(proposal):
            raise ValueError(f"proposal must be None or a function x -> distribution over z, got {proposal!r}")
        self.proposal, self.vectorized = proposal, vectorized
        if vectorized:
            self.log_prior = unvalidated(log_prior)
            self.log_likelihood = unvalidated(log_likelihood)
            if proposal is not None:
                self.log_q = unvalidated(lambda x, z: proposal(x).log_prob(z))
        else:
            self.log_prior = vmap_log_density(log_prior, "log_prior")
            self.log_likelihood = vmap_log_density(log_likelihood, "log_likelihood")
            if proposal is not None:
                self.log_q = vmap_log_density(lambda x, z: proposal(x).log_prob(z), "proposal(x).log_prob")

    def densities(self, x_rows: Tensor) -> tuple[Callable, Callable]:
        """Batched ``(log pi_0, log L)`` of ``z`` ``(M, dz)`` for the chains' ``x`` rows ``(M, dx)``:
        the prior and the likelihood, or ``q(. | x)`` and ``log p(z) + log p(x | z) - log q(z | x)``."""
        if self.proposal is None:
            return self.log_prior, lambda z: self.log_likelihood(x_rows, z)

        def log_base(z):
            return self.log_q(x_rows, z)

        def log_weight(z):
            return self.log_prior(z) + self.log_likelihood(x_rows, z) - self.log_q(x_rows, z)

        return log_base, log_weight

    def draws(self, sample_joint: Callable, num_samples: int, num_inner: int):
        """``x (N, dx)``, ``z (N, dz)``, inner draws ``(N, K, dz)`` of ``pi_0`` and ``log p(x_i | z_i)`` ``(N,)``."""
        if self.proposal is None:
            # the outer draws and the prior draws come from one call (the z of N + N K joint draws)
            x, z = _joint_draws(sample_joint, num_samples * (1 + num_inner))
            inner = z[num_samples:].reshape(num_samples, num_inner, z.shape[-1])
            x, z = x[:num_samples], z[:num_samples]
        else:
            x, z = _joint_draws(sample_joint, num_samples)
            with torch.no_grad(), pyro.validation_enabled(False):
                if self.vectorized:
                    inner = torch.as_tensor(self.proposal(x).sample((num_inner,))).transpose(0, 1)
                else:  # one proposal per outer draw (torch samplers do not vmap with fresh randomness)
                    inner = torch.stack([torch.as_tensor(self.proposal(x_i).sample((num_inner,))) for x_i in x])
            if inner.shape != (num_samples, num_inner, z.shape[-1]):
                raise ValueError(
                    f"proposal(x).sample((K,)) must return shape (K, dz) = ({num_inner}, {z.shape[-1]}) per x, "
                    f"got draws of shape {tuple(inner.shape)} for all x"
                )
        with torch.no_grad():
            log_px_z = self.log_likelihood(x, z)
        return x, z, inner.detach().to(z.dtype), log_px_z.detach()


def _finish(
    per_sample: Tensor, kind: str, estimator: str, details: dict, return_details: bool, warnings: list[str]
) -> BoundEstimate | tuple[BoundEstimate, dict]:
    values = per_sample.detach().cpu().numpy().astype(np.float64)
    estimate = BoundEstimate.from_samples(values, kind, estimator, warnings)
    if not return_details:
        return estimate
    out = {k: (v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)) for k, v in details.items()}
    return estimate, out | {"per_sample": values}


# ---------------------------------------------------------------------------------------
# IWAE (T = 1)
# ---------------------------------------------------------------------------------------
def _iwae_bound(lower: bool, doc: str) -> Callable[..., BoundEstimate | tuple[BoundEstimate, dict]]:
    """:func:`iwae_mi_lower` (``lower``) or :func:`iwae_mi_upper`: one body, the two public signatures alike."""
    kind = "lower" if lower else "upper"

    def bound(
        sample_joint: Callable | None = None,
        log_prior: Callable | None = None,
        log_likelihood: Callable | None = None,
        num_samples: int = 256,
        num_importance: int = 16,
        proposal: Callable | None = None,
        return_details: bool = False,
        vectorized: bool = False,
        *,
        latent: str | list[str] | None = None,
        observed: str | list[str] | None = None,
        model_args: tuple = (),
        model_kwargs: dict | None = None,
    ) -> BoundEstimate | tuple[BoundEstimate, dict]:
        num_samples = check_positive_int("num_samples", num_samples)
        num_importance = check_positive_int("num_importance", num_importance)
        sample_joint, log_prior, log_likelihood = _functions(
            (sample_joint, log_prior, log_likelihood),
            (latent, observed, model_args, model_kwargs),
            vectorized,
            "iwae_mi_lower/iwae_mi_upper",
        )
        joint = _Joint(log_prior, log_likelihood, proposal, vectorized)
        x, z, draws, log_px_z = joint.draws(sample_joint, num_samples, num_importance)
        if lower:
            draws = torch.cat([z[:, None, :].to(draws.dtype), draws[:, : num_importance - 1]], dim=1)
        x_rows = torch.repeat_interleave(x, num_importance, dim=0)
        _, log_weight = joint.densities(x_rows)
        with torch.no_grad():
            log_w = log_weight(draws.reshape(num_samples * num_importance, -1)).reshape(num_samples, num_importance)
        log_px = log_mean_exp(log_w, dim=-1)
        warned = _reliability(f"iwae_mi_{kind}", log_w, 0, 1)
        info = {"x": x, "z": z, "log_px_given_z": log_px_z, "log_px_bound": log_px, "log_weights": log_w}
        return _finish(log_px_z - log_px, kind, f"iwae-mi-{kind}", info, return_details, warned)

    bound.__name__ = bound.__qualname__ = f"iwae_mi_{kind}"
    bound.__doc__ = doc
    return bound


iwae_mi_lower = _iwae_bound(
    True,
    """IWAE lower bound on ``I(x; z)``: ``mean_i [log p(x_i|z_i) - log((1/K) sum_k w(z^k))]``,
    ``z^1 = z_i`` (exact posterior sample), ``z^{2:K} ~ q(. | x_i)`` (the prior by default),
    ``w = p(x, z) / q(z | x)`` (module docstring; the ``T = 1`` multi-sample AIS lower bound).

    ``K = num_importance``, ``N = num_samples``.  Saturates: every per-sample term is
    ``<= log K + log q(z_i|x_i) - log p(z_i)`` (``<= log K`` with the prior).  With
    ``return_details`` also returns a dict with ``x``, ``z``, ``per_sample`` ``(N,)``,
    ``log_px_given_z``, ``log_px_bound`` (the upper bound on ``log p(x_i)``) and ``log_weights``
    ``(N, K)``; a model in place of the three functions and the warnings as in :func:`ais_mi_lower`, numpy arrays.
    """,
)
iwae_mi_upper = _iwae_bound(
    False,
    """IWAE upper bound on ``I(x; z)``: ``mean_i [log p(x_i|z_i) - log((1/K) sum_k w(z^k))]``
    with ``z^{1:K} ~ q(. | x_i)`` (the prior by default), ``w = p(x, z) / q(z | x)``.
    ``return_details`` as in :func:`iwae_mi_lower` (``log_px_bound`` is then a lower bound).
    """,
)


# ---------------------------------------------------------------------------------------
# Multi-sample AIS
# ---------------------------------------------------------------------------------------
def _ais_pass(joint, drawn, cfg, steps, adapt, lower, inverse_mass_matrix):
    """``N x K`` chains on one axis from ``drawn = joint.draws(...)`` (chain ``k`` of ``x_i`` at
    ``i K + k``; for the lower bound chain 0 of each ``x_i`` runs in reverse from ``z_i``)."""
    num_chains = cfg.num_chains
    x, z, draws, log_px_z = drawn
    num_samples = x.shape[0]
    if lower:
        draws = torch.cat([z[:, None, :].to(draws.dtype), draws[:, : num_chains - 1]], dim=1)
    init = draws.reshape(num_samples * num_chains, -1)
    reverse = (torch.arange(num_chains) == 0).repeat(num_samples) & lower
    x_rows = torch.repeat_interleave(x, num_chains, dim=0)
    log_base, log_increment = joint.densities(x_rows)
    betas = torch.as_tensor(cfg.betas, dtype=init.dtype)
    kernel = kernel_options(cfg, inverse_mass_matrix)
    out = anneal(init, log_base, log_increment, betas, steps, reverse, adapt_step_size=adapt, **kernel)
    log_w = out.log_weights.reshape(num_samples, num_chains)
    log_px = log_mean_exp(log_w, dim=-1)
    return {
        "x": x,
        "z": z,
        "per_sample": log_px_z - log_px,
        "log_px_given_z": log_px_z,
        "log_px_bound": log_px,
        "log_weights": log_w,
        "step_sizes": steps,
        "pilot_step_sizes": pilot_step_sizes(out.adapted_step_size, log_w),
        "acceptance_rate": out.acceptance_rate.mean(dim=1),
        "num_divergent": int(out.is_divergent.sum()),
    }


def _ais_mi_bound(lower: bool, doc: str) -> Callable[..., BoundEstimate | tuple[BoundEstimate, dict]]:
    """:func:`ais_mi_lower` (``lower``) or :func:`ais_mi_upper`: one body, the two public signatures alike."""
    kind = "lower" if lower else "upper"

    def bound(
        sample_joint: Callable | None = None,
        log_prior: Callable | None = None,
        log_likelihood: Callable | None = None,
        num_samples: int = 128,
        num_chains: int = 16,
        num_steps: int = 100,
        schedule: Any = "sigmoid",
        proposal: Callable | None = None,
        step_size: float = 0.1,
        num_leapfrog: int = 10,
        adapt_step_size: bool = True,
        target_accept_prob: float = 0.65,
        inverse_mass_matrix: Any = None,
        transition: str | Callable = "hmc",
        adaptation_rate: float = 1.0,
        max_delta_energy: float = 1000.0,
        return_details: bool = False,
        vectorized: bool = False,
        *,
        latent: str | list[str] | None = None,
        observed: str | list[str] | None = None,
        model_args: tuple = (),
        model_kwargs: dict | None = None,
    ) -> BoundEstimate | tuple[BoundEstimate, dict]:
        cfg = AISConfig.from_arguments(locals())
        num_samples = check_positive_int("num_samples", num_samples)
        if inverse_mass_matrix is not None:
            check_numeric("inverse_mass_matrix", inverse_mass_matrix, "an array of shape (dz,) or (dz, dz)")
        sample_joint, log_prior, log_likelihood = _functions(
            (sample_joint, log_prior, log_likelihood),
            (latent, observed, model_args, model_kwargs),
            vectorized,
            "ais_mi_lower/ais_mi_upper",
        )
        joint = _Joint(log_prior, log_likelihood, proposal, vectorized)
        # the estimating run's draws come first, so num_steps=1 sees the IWAE estimator's samples
        drawn = joint.draws(sample_joint, num_samples, cfg.num_chains)
        steps = torch.full((cfg.num_steps,), cfg.step_size, dtype=drawn[2].dtype)
        if cfg.adapt_step_size:
            # the pilot: its own joint draws and chains, so the schedule is independent of the estimate's
            pilot_draws = joint.draws(sample_joint, num_samples, cfg.num_chains)
            pilot = _ais_pass(joint, pilot_draws, cfg, steps, True, False, inverse_mass_matrix)
            steps = pilot["pilot_step_sizes"]
        out = _ais_pass(joint, drawn, cfg, steps, False, lower, inverse_mass_matrix)
        warned = _reliability(f"ais_mi_{kind}", out["log_weights"], out["num_divergent"], cfg.num_steps)
        details = {k: v for k, v in out.items() if k not in ("per_sample", "pilot_step_sizes")}
        return _finish(out["per_sample"], kind, f"ais-mi-{kind}", details, return_details, warned)

    bound.__name__ = bound.__qualname__ = f"ais_mi_{kind}"
    bound.__doc__ = doc
    return bound


ais_mi_lower = _ais_mi_bound(
    True,
    """Multi-sample AIS lower bound on ``I(x; z)`` (Brekelmans et al. 2022, Multi-Sample AIS).

    For each of ``N = num_samples`` draws ``(x_i, z_i) ~ p(x, z)``: ``K - 1`` forward AIS chains
    (``K = num_chains``) from ``pi_0`` (prior, or ``proposal(x_i)``) to ``p(z | x_i)`` and one
    reverse chain from ``z_i``; ``l_i = log p(x_i|z_i) - log((1/K) sum_k w_k)``.
    ``E l_i <= I`` for every ``T`` and ``K``; ``num_steps=1`` is :func:`iwae_mi_lower` on the
    same samples (same global seed).  The HMC arguments are those of
    :class:`pyro_ext.infer.AIS`; the step-size pilot (when ``adapt_step_size``) runs on ``N``
    fresh joint draws.  Instead of the three functions, a Pyro model with ``latent=`` and
    ``observed=`` site names (and ``model_args``, ``model_kwargs``;
    :func:`pyro_ext.infer.model_util.joint_model`).  The estimate keeps its per-sample terms
    (``to_arviz()``) and the messages of any :class:`adapters.diagnostics.ReliabilityWarning`
    (``warnings``: more than 1% divergent transitions, or a mean ESS per outer draw below
    ``K / 10``).  ``return_details`` adds a dict of numpy arrays: ``x``, ``z``,
    ``per_sample`` ``(N,)``, ``log_px_given_z``, ``log_px_bound`` (upper bounds on
    ``log p(x_i)``), ``log_weights`` ``(N, K)`` (column 0 the reverse chain), ``step_sizes``
    ``(T,)``, ``acceptance_rate`` ``(T,)``, ``num_divergent``.
    """,
)
ais_mi_upper = _ais_mi_bound(
    False,
    """Multi-sample AIS upper bound on ``I(x; z)`` (Brekelmans et al. 2022, Multi-Sample AIS).

    ``K`` forward chains per outer draw ``(x_i, z_i)``;
    ``u_i = log p(x_i|z_i) - log((1/K) sum_k w_k)`` with ``E u_i >= I``.  Arguments and
    ``return_details`` as in :func:`ais_mi_lower` (``log_px_bound`` is then a lower bound on
    ``log p(x_i)``); ``num_steps=1`` is :func:`iwae_mi_upper` on the same samples.
    """,
)
