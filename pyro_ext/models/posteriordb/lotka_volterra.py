"""lotka_volterra: predator-prey populations (Hudson's Bay lynx and hare) through the Lotka-Volterra ODE.

Follows ``posterior_database/models/stan/lotka_volterra.stan``: ``theta = (alpha, beta,
gamma, delta)`` is positive with ``normal(1, 0.5)`` priors on ``alpha`` and ``gamma`` and
``normal(0.05, 0.05)`` on ``beta`` and ``delta`` (normals restricted to (0, inf), untruncated
as in the Stan program: a flat density on the support plus the normal's log density);
``z_init ~ lognormal(log(10), 1)`` and ``sigma ~ lognormal(-1, 1)``, both positive.  The
populations ``z = (u, v)`` solve

    du/dt = (alpha - beta v) u,   dv/dt = (-gamma + delta u) v,   z(0) = z_init,

reported at ``ts`` as the deterministic site ``z`` of shape ``(N, 2)`` (Stan's transformed
parameter; NaN where the solve failed).  The data are ``y_init[k] ~ lognormal(log(z_init[k]), sigma[k])`` and
``y[:, k] ~ lognormal(log(z[:, k]), sigma[k])``.

The Stan program calls ``integrate_ode_rk45`` (Dormand-Prince 5(4)) with relative tolerance
1e-5, absolute tolerance 1e-3 and at most 500 steps.  The port uses torchdiffeq's
Dormand-Prince 5(4) (``odeint(method="dopri5")``) at the tighter tolerances 1e-6 (relative
and absolute), so its solution is at least as close to the exact one, and at most
:data:`MAX_STEPS` = 1000 steps (about Stan's 500 at its looser tolerance; the reference draws
need at most ~70).  A failed solve (too many steps, a step-size underflow, non-finite values)
or a non-positive population makes the log density ``-inf``, as Stan rejects such a
proposal, instead of raising.  Gradients are backpropagated through the solver's steps.  In
float32 the tolerances are 1e-5.
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyro_ext.models.posteriordb._util import Flat, as_float
from pyro_ext.models.posteriordb.one_comp_mm_elim_abs import MAX_STEPS, positive_or_reject, solve

__all__ = ["MAX_STEPS", "model", "rhs"]

THETA_LOC = (1.0, 0.05, 1.0, 0.05)
THETA_SCALE = (0.5, 0.05, 0.5, 0.05)


def rhs(t, z, theta):
    """The Stan program's ``dz_dt``: ``z = (prey u, predator v)``, ``theta = (alpha, beta, gamma, delta)``."""
    u, v = z[0], z[1]
    alpha, beta, gamma, delta = theta[0], theta[1], theta[2], theta[3]
    return torch.stack([(alpha - beta * v) * u, (-gamma + delta * u) * v])


def model(N, ts, y_init, y):
    ts, y_init, y = as_float(ts), as_float(y_init), as_float(y)
    theta = pyro.sample("theta", Flat(constraints.positive, (), (4,)))
    loc, scale = ts.new_tensor(THETA_LOC), ts.new_tensor(THETA_SCALE)
    pyro.factor("theta_prior", dist.Normal(loc, scale).log_prob(theta).sum(-1))
    z_init = pyro.sample("z_init", dist.LogNormal(math.log(10.0), 1.0).expand([2]).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(-1.0, 1.0).expand([2]).to_event(1))
    z = solve(lambda t, state: rhs(t, state, theta), z_init, ts.new_zeros(()), ts)
    pyro.deterministic("z", torch.full_like(y, float("nan")) if z is None else z)
    z = positive_or_reject("ode_solved", z, y)
    pyro.sample("y_init", dist.LogNormal(torch.log(z_init), sigma).to_event(1), obs=y_init)
    pyro.sample("y", dist.LogNormal(torch.log(z), sigma).to_event(2), obs=y)
