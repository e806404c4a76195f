"""The regression, ARMA(1, 1) and mixture ports: exact log densities (against Stan's) and cross-backend agreement.

The pattern of ``tests/adapters/test_target.py``: the port's log density on its
unconstrained coordinates minus Stan's (:mod:`tests.stan_semantics_regression`) is one
constant over random points, and the NumPyro and Pyro ports agree in value (up to a
constant), gradient and constrained values.
"""

import re

import numpy as np
import pytest

from adapters import Target, posteriordb
from tests.stan_semantics_regression import LOG_DENSITIES

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
torch = pytest.importorskip("torch", reason="the pyro extra is not installed")

PORTED = [
    "arma-arma11",
    "earnings-earn_height",
    "earnings-log10earn_height",
    "earnings-logearn_interaction",
    "kidiq-kidscore_interaction",
    "kidiq_with_mom_work-kidscore_interaction_c",
    "kidiq_with_mom_work-kidscore_mom_work",
    "mesquite-logmesquite_logvas",
    "mesquite-mesquite",
    "nes1996-nes",
    "nes2000-nes",
    "kilpisjarvi_mod-kilpisjarvi",
    "low_dim_gauss_mix-low_dim_gauss_mix",
]


def _by_site(target, x):
    sites = {}
    for name, value in zip(target.names, x, strict=True):
        sites.setdefault(re.sub(r"\[.*\]$", "", name), []).append(value)
    return {k: np.array(v) for k, v in sites.items()}


def _random_points(dim, n=4, seed=0):
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(n, dim))


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
    """Port log density == the Stan program's, written out in scipy, up to one constant."""
    posterior_db.require(name)
    post = posteriordb.load(name)
    target = targets(name, backend)
    x = _random_points(target.dim)
    reference = np.array([LOG_DENSITIES[post.model_name](_by_site(target, xi), post.data) for xi in x])
    diff = target.log_density(x) - reference
    np.testing.assert_allclose(diff - diff[0], 0.0, atol=1e-12 * np.abs(reference).max() + 1e-9)


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
