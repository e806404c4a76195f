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

HMC: thousands of independent chains (one per ``x_i`` and AIS chain) move together, each with
its own log density and acceptance, through the batched pieces of :mod:`pyro_ext.infer.hmc_util`.

Layout: :mod:`~pyro_ext.infer.mi_bounds.terms` (the pure per-sample terms and the estimates
from given scores), :mod:`~pyro_ext.infer.mi_bounds.critics` (the networks),
:mod:`~pyro_ext.infer.mi_bounds.annealed` (HMC negatives and the MINE-AIS evaluation),
:mod:`~pyro_ext.infer.mi_bounds.estimators` (the trainable estimators),
:mod:`~pyro_ext.infer.mi_bounds.training` (:func:`fit_critic`) and
:mod:`~pyro_ext.infer.mi_bounds.checks` (argument checks).
"""

from pyro_ext.infer.mi_bounds.annealed import hmc_chain, mine_ais
from pyro_ext.infer.mi_bounds.critics import MLP, ConcatCritic, GaussianProposal, SeparableCritic, score_matrix
from pyro_ext.infer.mi_bounds.estimators import GIWAE, MINEAIS, MINEDV, NWJ, BarberAgakov, InfoNCE
from pyro_ext.infer.mi_bounds.terms import (
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
from pyro_ext.infer.mi_bounds.training import CriticFit, fit_critic

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
