"""The ODE ports (one_comp_mm_elim_abs, lotka_volterra): solutions and log densities against SciPy, and across backends.

The reference is written independently from the Stan programs (``stan-dev/posteriordb``,
``posterior_database/models/stan/<model>.stan``): the ODE solved by SciPy's DOP853 at
relative and absolute tolerance 1e-10, the densities from ``scipy.stats``.  The ports solve
at tolerance :data:`TOL` = 1e-6 (Stan's default), so they are exact only up to the solver's
error, and every comparison allows for it:

* the solution (the deterministic sites ``C`` and ``z``) within ``GLOBAL * TOL * (1 + |y|)``:
  the local error per step is below ``TOL * (1 + |y|)`` (the controllers' mixed
  absolute/relative test), and the global error adds up the local errors of the solve's
  few dozen steps, so a factor :data:`GLOBAL` = 50 covers it (observed: about 4);
* the log density through that bound: a solution error ``e_n`` moves the lognormal term of
  ``y_n`` by ``|log y_n - log z_n| / (sigma^2 z_n) * e_n`` to first order, summed over the
  observations.

All parameters are ``<lower=0>``: Stan, NumPyro and Pyro all map them by ``exp``, so the
port's log density on its unconstrained ``x`` is the constrained density plus the library's
own ``log|J|`` (computed with its ``biject_to``), which the reference adds back.
"""

import numpy as np
import pytest
from scipy import stats
from scipy.integrate import solve_ivp

from adapters import Target, posteriordb

TOL = 1e-6  # the ports' solver tolerance in float64 (relative and absolute)
GLOBAL = 50.0  # global error / local tolerance allowed
REF_TOL = 1e-10  # the SciPy reference's tolerance

ONE_COMP = "one_comp_mm_elim_abs-one_comp_mm_elim_abs"
LOTKA_VOLTERRA = "hudson_lynx_hare-lotka_volterra"
PORTED = [ONE_COMP, LOTKA_VOLTERRA]
BACKEND_PACKAGES = {"numpyro": ("jax", "numpyro", "diffrax"), "pyro": ("torch", "pyro", "torchdiffeq")}


def _need(backend):
    for package in BACKEND_PACKAGES[backend]:
        pytest.importorskip(package, reason=f"{package} (the {backend} extra) is not installed")


# ---- the Stan programs in NumPy/SciPy -----------------------------------------------------
def _one_comp_solution(p, d):
    """``C`` (``(N_t, 1)``) of one_comp_mm_elim_abs.stan: Stan's right-hand side, dose zero at ``t <= 0``."""
    k_a, K_m, V_m = float(p["k_a"]), float(p["K_m"]), float(p["V_m"])
    D, V = float(d["D"]), float(d["V"])

    def rhs(t, y):
        dose = np.exp(-k_a * t) * D * k_a / V if t > 0 else 0.0
        return [dose - (V_m / V) * y[0] / (K_m + y[0])]

    times = np.asarray(d["times"], dtype=np.float64)
    # the first stage sits at t0 = 0, where the dose term is off: a tiny first step keeps
    # that single point's value (which the exact solution ignores) out of the reference
    sol = solve_ivp(
        rhs, (float(d["t0"]), times[-1]), [0.0], "DOP853", t_eval=times, rtol=REF_TOL, atol=REF_TOL, first_step=1e-12
    )
    assert sol.success, sol.message
    return sol.y.T


def _one_comp_log_density(p, d, C):
    lp = sum(stats.cauchy.logpdf(float(p[k])) for k in ("k_a", "K_m", "V_m", "sigma"))
    return lp + stats.lognorm.logpdf(d["C_hat"], s=float(p["sigma"]), scale=C[:, 0]).sum()


def _one_comp_sensitivity(p, d, C):
    """``|d log p / d C[n, 0]|``: how much a solution error moves the log density."""
    sigma = float(p["sigma"])
    return (np.abs(np.log(d["C_hat"]) - np.log(C[:, 0])) / (sigma**2 * C[:, 0]))[:, None]


def _lotka_volterra_solution(p, d):
    """``z`` (``(N, 2)``) of lotka_volterra.stan."""
    alpha, beta, gamma, delta = np.asarray(p["theta"], dtype=np.float64)

    def rhs(t, z):
        u, v = z
        return [(alpha - beta * v) * u, (-gamma + delta * u) * v]

    ts = np.asarray(d["ts"], dtype=np.float64)
    sol = solve_ivp(
        rhs, (0.0, ts[-1]), np.asarray(p["z_init"], dtype=np.float64), "DOP853", t_eval=ts, rtol=REF_TOL, atol=REF_TOL
    )
    assert sol.success, sol.message
    return sol.y.T


def _lotka_volterra_log_density(p, d, z):
    theta, z_init, sigma = (np.asarray(p[k], dtype=np.float64) for k in ("theta", "z_init", "sigma"))
    lp = stats.norm.logpdf(theta, [1.0, 0.05, 1.0, 0.05], [0.5, 0.05, 0.5, 0.05]).sum()
    lp += stats.lognorm.logpdf(z_init, s=1.0, scale=10.0).sum()
    lp += stats.lognorm.logpdf(sigma, s=1.0, scale=np.exp(-1.0)).sum()
    lp += stats.lognorm.logpdf(d["y_init"], s=sigma, scale=z_init).sum()
    return lp + stats.lognorm.logpdf(d["y"], s=sigma[None, :], scale=z).sum()


def _lotka_volterra_sensitivity(p, d, z):
    sigma = np.asarray(p["sigma"], dtype=np.float64)
    return np.abs(np.log(d["y"]) - np.log(z)) / (sigma[None, :] ** 2 * z)


REFERENCE = {  # Stan model: (solution, log density, sensitivity, deterministic site)
    "one_comp_mm_elim_abs": (_one_comp_solution, _one_comp_log_density, _one_comp_sensitivity, "C"),
    "lotka_volterra": (
        _lotka_volterra_solution,
        _lotka_volterra_log_density,
        _lotka_volterra_sensitivity,
        "z",
    ),
}


# ---- helpers ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def targets():
    cache = {}

    def get(name, backend):
        _need(backend)
        if (name, backend) not in cache:
            cache[name, backend] = Target.from_posteriordb(name, backend)
        return cache[name, backend]

    return get


def _points(target, name, n=4, seed=0):
    """Unconstrained points near the posterior: reference draws, jittered by N(0, 0.3^2) on ``x``."""
    post = posteriordb.load(name)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, next(iter(post.reference_draws.values())).size, size=n)
    x = []
    for row in rows:
        params = {}
        for site, size in post.dimensions.items():
            names = [site] if size == 1 and site in post.reference_draws else [f"{site}[{i + 1}]" for i in range(size)]
            values = np.array([post.reference_draws[k].ravel()[row] for k in names])
            params[site] = values[0] if site in post.reference_draws else values
        x.append(target.unconstrain(params))
    return np.array(x) + rng.normal(0.0, 0.3, size=(n, target.dim))


def _library_log_jacobian(backend, x):
    """``log|J|`` of the library's own map onto (0, inf), summed over the coordinates ``x``."""
    if backend == "numpyro":
        import jax.numpy as jnp
        from numpyro.distributions import constraints
        from numpyro.distributions.transforms import biject_to

        xs = jnp.asarray(x)
    else:
        import torch
        from pyro.distributions import constraints
        from torch.distributions import biject_to

        xs = torch.as_tensor(x)
    transform = biject_to(constraints.positive)
    return float(np.sum(np.asarray(transform.log_abs_det_jacobian(xs, transform(xs)))))


def _reference(name, params):
    """The SciPy solution, log density and first-order bound on the port's log-density error at one point."""
    post = posteriordb.load(name)
    solution, log_density, sensitivity, _ = REFERENCE[post.model_name]
    y = solution(params, post.data)
    bound = GLOBAL * TOL * (1.0 + np.abs(y))
    return y, log_density(params, post.data, y), float(np.sum(sensitivity(params, post.data, y) * bound))


# ---- tests --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PORTED)
@pytest.mark.parametrize("backend", ["numpyro", "pyro"])
def test_ode_port_matches_scipy(name, backend, targets, posterior_db):
    """Solution and log density (each library's own Jacobian added back) == SciPy's, within the solver's error."""
    posterior_db.require(name)
    target = targets(name, backend)
    post = posteriordb.load(name)
    site = REFERENCE[post.model_name][3]
    x = _points(target, name)
    constrained = target.constrain(x)
    expected, slack = [], []
    for i, xi in enumerate(x):
        params = {k: constrained[k][i] for k in post.dimensions}
        y, lp, bound = _reference(name, params)
        np.testing.assert_array_less(np.abs(constrained[site][i] - y), GLOBAL * TOL * (1.0 + np.abs(y)))
        expected.append(lp + _library_log_jacobian(backend, xi))
        slack.append(bound)
    expected, slack = np.array(expected), np.array(slack)
    diff = target.log_density(x) - expected
    np.testing.assert_array_less(np.abs(diff - diff[0]), slack + slack[0] + 1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("name", PORTED)
def test_ode_ports_agree_across_backends(name, targets, posterior_db):
    """Same names, constrained values, log densities (up to a constant) and gradients, within the solver's error."""
    posterior_db.require(name)
    tn, tp = targets(name, "numpyro"), targets(name, "pyro")
    assert tn.dim == tp.dim and tn.names == tp.names
    post = posteriordb.load(name)
    x = _points(tn, name, seed=1)
    cn, cp = tn.constrain(x), tp.constrain(x)
    for k in post.dimensions:
        np.testing.assert_allclose(cn[k], cp[k], rtol=1e-12)
    site = REFERENCE[post.model_name][3]
    y = np.abs(cn[site])
    np.testing.assert_array_less(np.abs(cn[site] - cp[site]), 2 * GLOBAL * TOL * (1.0 + y))
    slack = np.array([_reference(name, {k: cn[k][i] for k in post.dimensions})[2] for i in range(len(x))])
    vn, gn = tn.log_density_and_grad(x)
    vp, gp = tp.log_density_and_grad(x)
    np.testing.assert_array_less(np.abs((vn - vp) - (vn - vp)[0]), 2 * (slack + slack[0]) + 1e-12 * np.abs(vn).max())
    # each gradient is the exact derivative of its own discretisation, both within the
    # solver's error of the exact one; 100 TOL of the gradient's scale (observed: ~10 TOL)
    np.testing.assert_allclose(gn, gp, rtol=0, atol=100 * TOL * np.abs(gn).max())


# Parameters where the solve cannot finish within the ports' step bound:
# one_comp_mm_elim_abs: elimination saturating at V_m / V = e^10 / 2 per day, far above the
# dose rate, holds C near K_m = e^-20, where the ODE's Jacobian is about V_m / (V K_m) ~ 1e13
# per day: stiff beyond any explicit solver's reach.  lotka_volterra: rates e^6 ~ 400 per day
# drive the populations through e^(400 t) swings that overflow.
FAILING = {
    ONE_COMP: {"K_m": np.exp(-20.0), "V_m": np.exp(10.0), "k_a": 1.0, "sigma": 1.0},
    LOTKA_VOLTERRA: {"theta": np.exp(np.full(4, 6.0)), "z_init": np.full(2, 10.0), "sigma": np.ones(2)},
}


@pytest.mark.parametrize("name", PORTED)
@pytest.mark.parametrize("backend", ["numpyro", "pyro"])
def test_failed_ode_solve_gives_minus_inf(name, backend, targets, posterior_db):
    """A solve that fails (as far-out warmup proposals may) gives log density -inf, no exception."""
    posterior_db.require(name)
    target = targets(name, backend)
    x = target.unconstrain(FAILING[name])
    assert target.log_density(x) == -np.inf
    assert np.isfinite(target.log_density(_points(target, name, n=1)[0]))
