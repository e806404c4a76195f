"""The HMM and Gaussian-process ports: exact log densities (against Stan's) and cross-backend agreement.

Stan, NumPyro and Pyro do not all unconstrain a parameter the same way (``positive_ordered``
is ``x[1] = exp(u[1])``, ``x[k] = x[k-1] + exp(u[k])`` in Stan and ``log(x)`` ordered in
NumPyro and Pyro), so the port's log density on *its* unconstrained coordinates ``x`` is
compared in a parameterisation-independent way: ``x`` is constrained with the port's own
``Target.constrain``, mapped to Stan's unconstrained ``u`` with Stan's inverse transforms
(:func:`tests.stan_semantics_latent.stan_unconstrain`), and

    port_log_density(x) == lp_stan(u) - log|J_stan(u)| + log|J_lib(x)| + const,

i.e. both sides are the same density on the constrained parameters (Lebesgue measure on the
first ``K - 1`` coordinates of a simplex), each with its own library's Jacobian added back:
``log|J_lib|`` is the library's ``biject_to(support).log_abs_det_jacobian``.  Where the
transforms coincide (``positive``, ``ordered``, Stan's stick-breaking ``simplex``, which
NumPyro and Pyro share) the two Jacobians cancel exactly.
"""

import re

import numpy as np
import pytest

from adapters import Target, posteriordb
from tests.stan_semantics_latent import LOG_DENSITIES, SUPPORTS, stan_constrain, stan_unconstrain

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
torch = pytest.importorskip("torch", reason="the pyro extra is not installed")

PORTED = [
    "hmm_example-hmm_example",
    "bball_drive_event_0-hmm_drive_0",
    "bball_drive_event_1-hmm_drive_1",
    "gp_pois_regr-gp_regr",
    "gp_pois_regr-gp_pois_regr",
]


def _by_site(target, x):
    sites = {}
    for name, value in zip(target.names, x, strict=True):
        sites.setdefault(re.sub(r"\[.*\]$", "", name), []).append(value)
    return {k: np.array(v) for k, v in sites.items()}


def _random_points(dim, n=4, seed=0):
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(n, dim))


def _library_log_jacobian(backend, kind, x_site):
    """``log|J|`` of the library's own unconstrained -> constrained map of one site."""
    if backend == "numpyro":
        from numpyro.distributions import constraints
        from numpyro.distributions.transforms import biject_to

        xs = jax.numpy.asarray(x_site)
    else:
        from pyro.distributions import constraints
        from torch.distributions import biject_to

        xs = torch.as_tensor(x_site)
    support = {
        "real": constraints.real_vector,
        "positive": constraints.independent(constraints.positive, 1),
        "ordered": constraints.ordered_vector,
        "positive_ordered": constraints.positive_ordered_vector,
        "simplex": constraints.simplex,
    }[kind]
    transform = biject_to(support)
    return float(np.sum(np.asarray(transform.log_abs_det_jacobian(xs, transform(xs)))))


@pytest.fixture(scope="module")
def targets():
    cache = {}

    def get(name, backend):
        if (name, backend) not in cache:
            cache[name, backend] = Target.from_posteriordb(name, backend)
        return cache[name, backend]

    return get


@pytest.mark.parametrize("name", PORTED)
@pytest.mark.parametrize("backend", ["numpyro", "pyro"])
def test_port_matches_stan_semantics(name, backend, targets, posterior_db):
    """Port log density == Stan's, on the constrained scale, each with its own Jacobian, up to one constant."""
    posterior_db.require(name)
    post = posteriordb.load(name)
    supports = SUPPORTS[post.model_name]
    target = targets(name, backend)
    assert sorted(_by_site(target, np.zeros(target.dim))) == sorted(supports)
    x = _random_points(target.dim)
    expected = []
    for xi in x:
        params = target.constrain(xi)
        u = {site: stan_unconstrain(kind, params[site]) for site, kind in supports.items()}
        for site, kind in supports.items():  # Stan's transforms invert exactly
            np.testing.assert_allclose(stan_constrain(kind, u[site])[0], np.atleast_1d(params[site]), rtol=1e-10)
        stan_log_jacobian = sum(stan_constrain(kind, u[site])[1] for site, kind in supports.items())
        x_sites = _by_site(target, xi)
        library_log_jacobian = sum(_library_log_jacobian(backend, kind, x_sites[s]) for s, kind in supports.items())
        expected.append(LOG_DENSITIES[post.model_name](u, post.data) - stan_log_jacobian + library_log_jacobian)
    expected = np.array(expected)
    diff = target.log_density(x) - expected
    np.testing.assert_allclose(diff - diff[0], 0.0, atol=1e-11 * np.abs(expected).max() + 1e-9)


@pytest.mark.parametrize("name", PORTED)
def test_numpyro_and_pyro_ports_agree(name, targets, posterior_db):
    posterior_db.require(name)
    tn, tp = targets(name, "numpyro"), targets(name, "pyro")
    assert tn.dim == tp.dim and tn.names == tp.names
    x = _random_points(tn.dim, seed=1)
    vn, gn = tn.log_density_and_grad(x)
    vp, gp = tp.log_density_and_grad(x)
    np.testing.assert_allclose((vn - vp) - (vn - vp)[0], 0.0, atol=1e-12 * np.abs(vn).max() + 1e-9)
    np.testing.assert_allclose(gn, gp, rtol=1e-8, atol=1e-12 * np.abs(gn).max() + 1e-9)
    cn, cp = tn.constrain(x), tp.constrain(x)
    for k in posteriordb.load(name).dimensions:
        np.testing.assert_allclose(cn[k], cp[k], rtol=1e-12, atol=1e-12)
