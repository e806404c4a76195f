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
(relative and absolute 1e-6); the port uses diffrax's adaptive Dormand-Prince 5(4) at the
same tolerances, with gradients by diffrax's default adjoint (backpropagation through the
solver's steps).  The problem is stiff only where ``V_m / V`` exceeds the dose rate and
``K_m`` is tiny, so that ``C`` collapses to about ``K_m``: far out in the tails, where the
data give the density about ``exp(-1e5)``.  There the explicit solver gives up after
:data:`MAX_STEPS` = 1000 steps (the reference draws need at most 20).  A failed solve (too
many steps, non-finite values) or a non-positive concentration makes the log density
``-inf``, as Stan rejects such a proposal, instead of raising.  In float32 the tolerances
are loosened to 1e-5, a few float32 ulps coarser than the requested error.
"""

import diffrax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from numpyro_ext.models.posteriordb._util import as_float

MAX_STEPS = 1000


def rhs(t, y, args):
    """The Stan program's ODE right-hand side ``dC/dt`` (``y`` has shape ``(1,)``)."""
    k_a, K_m, V_m, D, V = args
    dose = jnp.where(t >= 0, jnp.exp(-k_a * t) * D * k_a / V, 0.0)
    elim = (V_m / V) * y / (K_m + y)
    return dose - elim


def solve(rhs_fn, y0, t0, ts, args):
    """Solutions at ``ts`` (shape ``(len(ts),) + y0.shape``; NaN on failure) and whether the solve succeeded."""
    tol = 1e-6 if y0.dtype == jnp.float64 else 1e-5
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs_fn),
        diffrax.Dopri5(),
        t0=t0,
        t1=ts[-1],
        dt0=None,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
        max_steps=MAX_STEPS,
        throw=False,
    )
    ok = (sol.result == diffrax.RESULTS.successful) & jnp.all(jnp.isfinite(sol.ys))
    return jnp.where(ok, sol.ys, jnp.nan), ok


def positive_or_reject(name, values, ok):
    """``values`` where the solve succeeded and all are > 0, else ones, with a ``-inf`` factor then.

    Stan rejects a proposal whose ODE solve throws, or where ``log`` of a non-positive
    solution makes the lognormal's location NaN; here the log density is ``-inf`` instead.
    The filler ones keep the likelihood finite (and NumPyro's argument checks quiet).
    """
    ok = ok & jnp.all(values > 0)
    numpyro.factor(name, jnp.where(ok, 0.0, -jnp.inf))
    return jnp.where(ok, values, 1.0)


def model(t0, D, V, N_t, times, C_hat):
    times, C_hat = as_float(times), as_float(C_hat)
    k_a = numpyro.sample("k_a", dist.HalfCauchy(1.0))
    K_m = numpyro.sample("K_m", dist.HalfCauchy(1.0))
    V_m = numpyro.sample("V_m", dist.HalfCauchy(1.0))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(1.0))
    C0 = jnp.zeros(1, dtype=times.dtype)
    C, ok = solve(rhs, C0, as_float(t0), times, (k_a, K_m, V_m, as_float(D), as_float(V)))
    numpyro.deterministic("C", C)
    C = positive_or_reject("ode_solved", C, ok)
    with numpyro.plate("N_t", N_t):
        numpyro.sample("C_hat", dist.LogNormal(jnp.log(C[:, 0]), sigma), obs=C_hat)
