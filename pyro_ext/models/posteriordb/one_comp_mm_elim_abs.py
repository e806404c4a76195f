"""one_comp_mm_elim_abs: one-compartment pharmacokinetics, first-order absorption, Michaelis-Menten elimination.

Follows ``posterior_database/models/stan/one_comp_mm_elim_abs.stan``: ``k_a``, ``K_m``,
``V_m`` and ``sigma`` are positive with ``cauchy(0, 1)`` priors (half-Cauchy, the same
density on (0, inf) up to a constant).  The concentration ``C`` solves

    dC/dt = exp(-k_a t) D k_a / V [t > 0] - (V_m / V) C / (K_m + C),   C(t0) = 0,

and is reported at ``times`` as the deterministic site ``C`` of shape ``(N_t, 1)``, Stan's
``array[N_t, 1] real C`` (NaN where the solve failed).  The data are
``C_hat[n] ~ lognormal(log(C[n, 1]), sigma)``.

The Stan program switches the dose on at ``t > 0``; the port's right-hand side uses
``t >= 0``.  The two differ only at the single point ``t = 0``, which leaves the ODE's
solution unchanged, but with ``t0 = 0`` (these data) Stan's form hands a Runge-Kutta
solver's first stage a slope of 0 where the solution's is ``D k_a / V``, an error that the
embedded error estimate barely sees: it raised the error in ``C`` from 5e-5 to 1.2e-4
absolute (from 4e-6 to up to 4.5e-5 relative).

The Stan program solves the ODE with ``integrate_ode_bdf`` at its default tolerances
(relative and absolute 1e-6); the port uses torchdiffeq's adaptive Dormand-Prince 5(4)
(``odeint(method="dopri5")``) at the same tolerances, with gradients backpropagated through
the solver's steps.  The problem is stiff only where ``V_m / V`` exceeds the dose rate and
``K_m`` is tiny, so that ``C`` collapses to about ``K_m``: far out in the tails, where the
data give the density about ``exp(-1e5)``.  There the explicit solver gives up after
:data:`MAX_STEPS` = 1000 steps (the reference draws need at most 20).  A failed solve (too
many steps, non-finite values) or a non-positive concentration makes the log density
``-inf``, as Stan rejects such a proposal, instead of raising.  In float32 the tolerances
are loosened to 1e-5, a few float32 ulps coarser than the requested error.
"""

import pyro
import pyro.distributions as dist
import torch
from torchdiffeq import odeint

from pyro_ext.models.posteriordb._util import as_float

MAX_STEPS = 1000
_EVALS_PER_STEP = 6  # dopri5: six new right-hand-side evaluations per attempted step (FSAL)


class _SolveFailed(Exception):
    pass


def rhs(t, y, k_a, K_m, V_m, D, V):
    """The Stan program's ODE right-hand side ``dC/dt`` (``y`` has shape ``(1,)``)."""
    dose = torch.where(t >= 0, torch.exp(-k_a * t) * D * k_a / V, torch.zeros_like(t))
    elim = (V_m / V) * y / (K_m + y)
    return dose - elim


def solve(rhs_fn, y0, t0, ts):
    """Solutions of ``dy/dt = rhs_fn(t, y)`` at ``ts`` (shape ``(len(ts),) + y0.shape``), or ``None`` on failure.

    The step bound is also enforced by counting right-hand-side evaluations, since
    torchdiffeq's own checks are ``assert`` statements (gone under ``python -O``).
    """
    tol = 1e-6 if y0.dtype == torch.float64 else 1e-5
    evals = 0

    def counted(t, y):
        nonlocal evals
        evals += 1
        if evals > _EVALS_PER_STEP * MAX_STEPS + 2:
            raise _SolveFailed
        return rhs_fn(t, y)

    t = torch.cat([t0.reshape(1), ts])
    try:
        ys = odeint(counted, y0, t, rtol=tol, atol=tol, method="dopri5", options={"max_num_steps": MAX_STEPS})
    except (AssertionError, _SolveFailed):  # torchdiffeq's step-count and underflow checks
        return None
    ys = ys[1:]
    return ys if bool(torch.isfinite(ys).all()) else None


def positive_or_reject(name, values, like):
    """``values`` if the solve succeeded and all are > 0, else ones (shaped as ``like``), with a ``-inf`` factor then.

    Stan rejects a proposal whose ODE solve throws, or where ``log`` of a non-positive
    solution makes the lognormal's location NaN; here the log density is ``-inf`` instead.
    The filler ones keep the likelihood finite (and Pyro's argument checks quiet).
    """
    ok = values is not None and bool((values > 0).all())
    pyro.factor(name, like.new_tensor(0.0 if ok else -float("inf")))
    return values if ok else torch.ones_like(like)


def model(t0, D, V, N_t, times, C_hat):
    times, C_hat = as_float(times), as_float(C_hat)
    k_a = pyro.sample("k_a", dist.HalfCauchy(1.0))
    K_m = pyro.sample("K_m", dist.HalfCauchy(1.0))
    V_m = pyro.sample("V_m", dist.HalfCauchy(1.0))
    sigma = pyro.sample("sigma", dist.HalfCauchy(1.0))
    D, V = as_float(D), as_float(V)
    C0 = torch.zeros(1, dtype=times.dtype)
    C = solve(lambda t, y: rhs(t, y, k_a, K_m, V_m, D, V), C0, as_float(t0), times)
    like = torch.empty(N_t, 1, dtype=times.dtype)
    pyro.deterministic("C", torch.full_like(like, float("nan")) if C is None else C)
    C = positive_or_reject("ode_solved", C, like)
    with pyro.plate("N_t", N_t):
        pyro.sample("C_hat", dist.LogNormal(torch.log(C[:, 0]), sigma), obs=C_hat)
