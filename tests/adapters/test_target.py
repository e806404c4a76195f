"""Target: exact log densities, cross-backend agreement, native views, bad input."""

import re

import numpy as np
import pytest
from scipy import stats

from adapters import Target, posteriordb
from tests.adapters.test_posteriordb import EMBEDDED
from tests.stan_semantics import LOG_DENSITIES

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
torch = pytest.importorskip("torch", reason="the pyro extra is not installed")
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as ndist  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as pdist  # noqa: E402


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


# the embedded posteriors plus sblri-blr, the second data set of the blr port
PORTED = sorted([*EMBEDDED, "sblri-blr"])


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
    # float64 round-off relative to the size of the log density (|lp| reaches 1e5 on blr)
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


@pytest.mark.parametrize("backend", ["numpyro", "pyro"])
def test_constrain_unconstrain_round_trip(backend, targets, posterior_db):
    posterior_db.require("garch-garch11")
    target = targets("garch-garch11", backend)
    x = _random_points(target.dim)
    params = target.constrain(x)
    assert params["beta1"].shape == (4,)
    assert np.all(params["beta1"] < 1 - params["alpha1"]) and np.all(params["alpha0"] > 0)
    for i in range(len(x)):
        np.testing.assert_allclose(target.unconstrain({k: v[i] for k, v in params.items()}), x[i], atol=1e-10)


def test_gradient_matches_finite_differences(targets, posterior_db):
    posterior_db.require("eight_schools-eight_schools_centered")
    target = targets("eight_schools-eight_schools_centered", "numpyro")
    x = _random_points(target.dim)[0]
    _, grad = target.log_density_and_grad(x)
    h = 1e-6
    fd = [(target.log_density(x + h * e) - target.log_density(x - h * e)) / (2 * h) for e in np.eye(target.dim)]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)


# ---- cross-backend views ------------------------------------------------------------------
def test_pyro_target_in_jax_under_jit_vmap_grad(targets, posterior_db):
    """A Pyro model's density inside JAX (pure_callback + custom JVP) equals the NumPyro port's."""
    posterior_db.require("kidiq-kidscore_momiq")
    tp, tn = targets("kidiq-kidscore_momiq", "pyro"), targets("kidiq-kidscore_momiq", "numpyro")
    x = jnp.asarray(_random_points(tp.dim))
    f_cross, f_native = tp.as_jax(), tn.as_jax()
    v_cross = jax.jit(jax.vmap(f_cross))(x)
    v_native = jax.vmap(f_native)(x)
    np.testing.assert_allclose(v_cross - v_native, (v_cross - v_native)[0], atol=1e-8)
    g_cross = jax.jit(jax.vmap(jax.grad(f_cross)))(x)
    np.testing.assert_allclose(g_cross, jax.vmap(jax.grad(f_native))(x), rtol=1e-8)


def test_numpyro_target_in_torch_autograd(targets, posterior_db):
    posterior_db.require("arK-arK")
    tn, tp = targets("arK-arK", "numpyro"), targets("arK-arK", "pyro")
    x = torch.tensor(_random_points(tn.dim), requires_grad=True)
    v = tn.as_torch()(x)
    assert v.shape == (4,)
    (g,) = torch.autograd.grad(v.sum(), x)
    xp = x.detach().clone().requires_grad_(True)
    (g_native,) = torch.autograd.grad(torch.stack([tp.as_torch()(xi) for xi in xp]).sum(), xp)
    np.testing.assert_allclose(g.numpy(), g_native.numpy(), rtol=1e-8)


# ---- from_logdensity -------------------------------------------------------------------
MEAN = np.array([1.0, -2.0, 0.5])
SCALE = np.array([0.5, 2.0, 1.0])


def _exact(x):
    return stats.norm.logpdf(x, MEAN, SCALE).sum(-1)


def _exact_grad(x):
    return -(x - MEAN) / SCALE**2


@pytest.mark.parametrize(
    "kind",
    [
        "jax",
        "torch",
        "numpy",
    ],
)
def test_from_logdensity_each_kind(kind):
    if kind == "jax":
        fn = lambda x: jax.scipy.stats.norm.logpdf(x, MEAN, SCALE).sum()  # noqa: E731
        target = Target.from_logdensity(fn, 3)
    elif kind == "torch":
        fn = lambda x: torch.distributions.Normal(torch.tensor(MEAN), torch.tensor(SCALE)).log_prob(x).sum()  # noqa: E731
        target = Target.from_logdensity(fn, 3)
    else:
        target = Target.from_logdensity(_exact, 3, grad=_exact_grad, names=["a", "b", "c"])
        assert target.names == ["a", "b", "c"] and target.constrain(MEAN) == {"a": 1.0, "b": -2.0, "c": 0.5}
    x = _random_points(3, n=5)
    v, g = target.log_density_and_grad(x)
    np.testing.assert_allclose(v, _exact(x), rtol=1e-10)
    np.testing.assert_allclose(g, _exact_grad(x), rtol=1e-10)
    # both native views give the same numbers, whatever the source
    np.testing.assert_allclose(jax.vmap(jax.grad(target.as_jax()))(jnp.asarray(x)), _exact_grad(x), rtol=1e-10)
    xt = torch.tensor(x, requires_grad=True)
    (gt,) = torch.autograd.grad(target.as_torch()(xt).sum(), xt)
    np.testing.assert_allclose(gt.numpy(), _exact_grad(x), rtol=1e-10)


def test_numpyro_nuts_on_a_numpy_target_through_pure_callback():
    """NUTS driven through the pure_callback view recovers the exact Gaussian moments."""
    from numpyro.infer import MCMC, NUTS

    target = Target.from_logdensity(_exact, 3, grad=_exact_grad)
    logdensity = target.as_jax()
    mcmc = MCMC(NUTS(potential_fn=lambda x: -logdensity(x)), num_warmup=300, num_samples=2000, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(1), init_params=jnp.zeros(3))
    x = np.asarray(mcmc.get_samples())
    from adapters.metrics import ess

    n_eff = min(ess({f"x{i}": x[None, :, i] for i in range(3)}).values())
    # 5 Monte Carlo standard errors, from the effective sample size
    assert np.all(np.abs(x.mean(0) - MEAN) < 5 * SCALE / np.sqrt(n_eff))
    assert np.all(np.abs(x.std(0) / SCALE - 1) < 5 / np.sqrt(2 * n_eff))


# ---- bad input -------------------------------------------------------------------------
def test_numpy_function_without_grad_is_an_error():
    with pytest.raises(ValueError, match="grad is None.*pass grad="):
        Target.from_logdensity(lambda x: float(np.sum(x**2)), 2)


def test_names_must_match_dim():
    with pytest.raises(ValueError, match="names must have length dim=3"):
        Target.from_logdensity(_exact, 3, grad=_exact_grad, names=["a"])
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        Target.from_logdensity(_exact, 0, grad=_exact_grad)


def test_wrong_shape_is_an_error():
    target = Target.from_logdensity(_exact, 3, grad=_exact_grad)
    with pytest.raises(ValueError, match=r"x must be an array with last axis of length 3, got shape \(2,\)"):
        target.log_density(np.zeros(2))


def test_non_finite_density_everywhere_names_the_model():
    def broken(x):
        return np.nan

    with pytest.raises(ValueError, match="target 'broken': the log density .* is not finite"):
        Target.from_logdensity(broken, 2, grad=lambda x: np.zeros(2))


def test_nan_model_names_the_model():
    def nan_model():
        loc = numpyro.sample("loc", ndist.Normal(0.0, 1.0))
        numpyro.sample("obs", ndist.Normal(loc, 1.0), obs=jnp.nan)

    with pytest.raises(ValueError, match="target 'nan_model'"):
        Target.from_numpyro(nan_model)

    def nan_pyro_model():
        loc = pyro.sample("loc", pdist.Normal(0.0, 1.0))
        pyro.sample("obs", pdist.Normal(loc, 1.0), obs=torch.tensor(float("nan")))

    with pytest.raises(ValueError, match="target 'nan_pyro_model'"):
        Target.from_pyro(nan_pyro_model)


def test_discrete_latent_site_is_an_error():
    def mixture_numpyro():
        z = numpyro.sample("z", ndist.Bernoulli(0.5))
        numpyro.sample("x", ndist.Normal(z, 1.0), obs=0.3)

    with pytest.raises(ValueError, match=r"model 'mixture_numpyro' has discrete latent sites \['z'\]"):
        Target.from_numpyro(mixture_numpyro)

    def mixture_pyro():
        z = pyro.sample("z", pdist.Bernoulli(0.5))
        pyro.sample("x", pdist.Normal(z, 1.0), obs=torch.tensor(0.3))

    with pytest.raises(ValueError, match=r"model 'mixture_pyro' has discrete latent sites \['z'\]"):
        Target.from_pyro(mixture_pyro)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        Target.from_posteriordb("arK-arK", backend="stan2")


def test_bad_constructor_arguments_name_the_argument():
    with pytest.raises(TypeError, match="model must be a NumPyro model"):
        Target.from_numpyro("eight_schools")
    with pytest.raises(TypeError, match="model must be a Pyro model"):
        Target.from_pyro(None)
    with pytest.raises(TypeError, match="fn must be a function of a vector"):
        Target.from_logdensity(np.zeros(3), 3)
    with pytest.raises(TypeError, match="grad must be None or a function"):
        Target.from_logdensity(_exact, 3, grad=np.zeros(3))
    with pytest.raises(TypeError, match="names must be a list of str"):
        Target.from_logdensity(_exact, 3, grad=_exact_grad, names="abc")
    with pytest.raises(TypeError, match="name must be a str"):
        Target.from_logdensity(_exact, 3, grad=_exact_grad, name=3)
    with pytest.raises(ValueError, match="dim must be a positive integer, got '3'"):
        Target.from_logdensity(_exact, "3", grad=_exact_grad)
    with pytest.raises(TypeError, match="name must be a posterior name"):
        Target.from_posteriordb(3)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        Target.from_posteriordb("arK-arK", path=3)
    with pytest.raises(KeyError, match="embedded subset of posteriordb.*POSTERIOR_DB_PATH"):
        Target.from_posteriordb("radon", path=posteriordb.EMBEDDED_PATH)


def test_repr_names_the_target():
    target = Target.from_logdensity(_exact, 3, grad=_exact_grad, name="gauss")
    assert "gauss" in repr(target) and "dim=3" in repr(target)
