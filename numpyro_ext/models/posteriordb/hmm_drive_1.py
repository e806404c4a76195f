"""hmm_drive_1: a two-state HMM of basketball drives with normal emissions (1/speed, hoop distance).

Follows ``posterior_database/models/stan/hmm_drive_1.stan``: the transition rows ``theta1``
and ``theta2`` are simplexes with ``dirichlet(alpha[k])`` priors; the emission means ``phi``
(of ``u``, sd ``tau``) and ``lambda`` (of ``v``, sd ``rho``) are ``ordered`` (which stops
label switching) with normal(0, 1) and normal(3, 1) densities on their first and second
entries.  The hidden states are summed out with Stan's forward algorithm in log space
(``numpyro.factor``).
"""

import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from numpyro_ext.models.posteriordb._util import as_float
from numpyro_ext.models.posteriordb.hmm_drive_0 import drive_priors
from numpyro_ext.models.posteriordb.hmm_example import forward_log_likelihood


def model(K, N, u, v, alpha, tau, rho):
    u, v, alpha = as_float(u), as_float(v), as_float(alpha)
    log_theta, phi, lam = drive_priors(K, alpha, constraints.ordered_vector)
    log_emission = dist.Normal(phi, as_float(tau)).log_prob(u[:, None]) + dist.Normal(lam, as_float(rho)).log_prob(
        v[:, None]
    )
    numpyro.factor("forward", forward_log_likelihood(log_theta, log_emission))
