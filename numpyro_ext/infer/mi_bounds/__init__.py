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

Modules: :mod:`~numpyro_ext.infer.mi_bounds.terms` (bounds on given scores, pure terms),
:mod:`~numpyro_ext.infer.mi_bounds.critics` (critic and proposal networks),
:mod:`~numpyro_ext.infer.mi_bounds.estimators` (trainable estimators, :func:`fit_critic`),
:mod:`~numpyro_ext.infer.mi_bounds.annealed` (MINE-AIS's HMC and AIS evaluation).
"""

from adapters.mi import BoundEstimate
from numpyro_ext.infer.mi_bounds.annealed import hmc_chain, mine_ais
from numpyro_ext.infer.mi_bounds.critics import (
    ConcatCritic,
    Critic,
    GaussianProposal,
    SeparableCritic,
    mlp_apply,
    mlp_init,
    score_matrix,
)
from numpyro_ext.infer.mi_bounds.estimators import (
    GIWAE,
    MINEAIS,
    MINEDV,
    NWJ,
    BarberAgakov,
    CriticFit,
    InfoNCE,
    fit_critic,
)
from numpyro_ext.infer.mi_bounds.terms import (
    barber_agakov,
    barber_agakov_terms,
    giwae,
    giwae_terms,
    infonce,
    infonce_terms,
    mine_ais_terms,
    mine_dv,
    mine_dv_value,
    nwj,
    nwj_terms,
)

__all__ = [
    "GIWAE",
    "MINEAIS",
    "MINEDV",
    "NWJ",
    "BarberAgakov",
    "BoundEstimate",
    "ConcatCritic",
    "Critic",
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
    "mlp_apply",
    "mlp_init",
    "nwj",
    "nwj_terms",
    "score_matrix",
]
