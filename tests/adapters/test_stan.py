"""The Stan route: ``Target.from_stan`` against the NumPyro ports, caching, bad input.

Each Stan program here is written for this test from the model's definition; the port is
the reference.  Log densities agree up to a constant, so the test compares differences
between points.  Compiling a program takes 30-60 s of g++ once (then it comes from the
on-disk cache): eight schools compiles in the default run, the others are ``slow``.
"""

import pickle
import shutil

import numpy as np
import pytest

from adapters import Target, posteriordb

pytest.importorskip("httpstan", reason="the stan extra (pystan + httpstan) is not installed")
jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
from adapters import stan as stan_route  # noqa: E402
from adapters import stan_build  # noqa: E402

needs_gxx = pytest.mark.skipif(stan_route.find_compiler() is None, reason="no C++ compiler (g++) to build Stan models")

EIGHT_SCHOOLS = """
data {
  int<lower=0> J;
  array[J] real y;
  array[J] real<lower=0> sigma;
}
parameters {
  real mu;
  real<lower=0> tau;
  vector[J] theta_trans;
}
transformed parameters {
  vector[J] theta = theta_trans * tau + mu;
}
model {
  mu ~ normal(0, 5);
  tau ~ cauchy(0, 5);
  theta_trans ~ normal(0, 1);
  y ~ normal(theta, sigma);
}
"""

KIDSCORE_MOMIQ = """
data {
  int<lower=0> N;
  vector[N] kid_score;
  vector[N] mom_iq;
}
parameters {
  vector[2] beta;
  real<lower=0> sigma;
}
model {
  sigma ~ cauchy(0, 2.5);
  kid_score ~ normal(beta[1] + beta[2] * mom_iq, sigma);
}
"""

BLR = """
data {
  int<lower=0> N;
  int<lower=0> D;
  matrix[N, D] X;
  vector[N] y;
}
parameters {
  vector[D] beta;
  real<lower=0> sigma;
}
model {
  beta ~ normal(0, 10);
  sigma ~ normal(0, 10);
  y ~ normal(X * beta, sigma);
}
"""

ES_NAME = "eight_schools-eight_schools_noncentered"
EMBEDDED = posteriordb.EMBEDDED_PATH


def _pair(name, code):
    post = posteriordb.load(name, EMBEDDED)
    return Target.from_stan(code, post.data, name=name), Target.from_posteriordb(name, "numpyro", EMBEDDED)


def _check_against_port(stan_target, port, seed=0):
    assert sorted(stan_target.names) == sorted(port.names)
    order = [stan_target.names.index(n) for n in port.names]  # port coordinate i is Stan coordinate order[i]
    x_port = np.random.default_rng(seed).uniform(-1.5, 1.5, size=(5, port.dim))
    x_stan = np.empty_like(x_port)
    x_stan[:, order] = x_port
    v_stan, g_stan = stan_target.log_density_and_grad(x_stan)
    v_port, g_port = port.log_density_and_grad(x_port)
    np.testing.assert_allclose(v_stan - v_stan[0], v_port - v_port[0], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(g_stan[:, order], g_port, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stan_target.log_density(x_stan), v_stan, rtol=0, atol=1e-12)
    return x_stan, x_port


@pytest.fixture(scope="module")
def eight_schools():
    if stan_route.find_compiler() is None:
        pytest.skip("no C++ compiler (g++) to build Stan models")
    return _pair(ES_NAME, EIGHT_SCHOOLS)


def test_eight_schools_matches_port(eight_schools):
    stan_target, port = eight_schools
    assert stan_target.dim == 10 and stan_target.backend == "stan"
    assert stan_target.names == ["mu", "tau"] + [f"theta_trans[{i}]" for i in range(1, 9)]
    assert stan_target.parameter_names == ["mu", "tau", "theta_trans"]
    assert stan_target.variables == {"mu": (), "tau": (), "theta_trans": (8,), "theta": (8,)}
    _check_against_port(stan_target, port)


def test_eight_schools_constrain_round_trip(eight_schools):
    stan_target, port = eight_schools
    x = np.random.default_rng(1).normal(size=(3, 10))
    params = stan_target.constrain(x)
    assert {k: v.shape for k, v in params.items()} == {"mu": (3,), "tau": (3,), "theta_trans": (3, 8), "theta": (3, 8)}
    np.testing.assert_allclose(params["tau"], np.exp(x[:, 1]), rtol=1e-12)
    np.testing.assert_allclose(params["theta"], port.constrain(x)["theta"], rtol=1e-12)  # same coordinate order
    for i in range(3):
        one = {k: v[i] for k, v in params.items()}
        np.testing.assert_allclose(stan_target.unconstrain(one), x[i], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(port.unconstrain({k: v[0] for k, v in params.items()}), x[0], atol=1e-12)
    assert set(stan_target.constrain(x[0], include_tparams=False)) == {"mu", "tau", "theta_trans"}


def test_eight_schools_jax_view_and_pickle(eight_schools):
    import jax.numpy as jnp

    stan_target, _ = eight_schools
    x = np.linspace(-1.0, 1.0, 10)
    value, grad = stan_target.log_density_and_grad(x)
    v, g = jax.jit(jax.value_and_grad(stan_target.as_jax()))(jnp.asarray(x))
    np.testing.assert_allclose(float(v), value, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g), grad, rtol=1e-12)
    xs = np.stack([x, -x])
    np.testing.assert_allclose(np.asarray(jax.vmap(stan_target.as_jax())(jnp.asarray(xs))), stan_target.log_density(xs))
    copy = pickle.loads(pickle.dumps(stan_target))  # re-imports the cached module
    assert copy.names == stan_target.names
    assert copy.log_density(x) == value


def test_unconstrain_checks_the_values(eight_schools):
    stan_target, _ = eight_schools
    with pytest.raises(ValueError, match=r"params\['tau'\] must have shape \(\)"):
        stan_target.unconstrain({"mu": 0.0, "tau": [1.0, 2.0], "theta_trans": np.zeros(8)})
    with pytest.raises(ValueError, match="outside their constraints.*Lower bounded variable is -1.*line 9"):
        stan_target.unconstrain({"mu": 0.0, "tau": -1.0, "theta_trans": np.zeros(8)})
    with pytest.raises(KeyError, match="theta_trans"):
        stan_target.unconstrain({"mu": 0.0, "tau": 1.0})


def test_data_not_matching_the_data_block_gives_stans_message(eight_schools):
    data = dict(posteriordb.load(ES_NAME, EMBEDDED).data, J=7)
    with pytest.raises(ValueError, match=r"Stan program 'schools7'.*mismatch in dimension declared and found"):
        Target.from_stan(EIGHT_SCHOOLS, data, name="schools7")
    data = {k: v for k, v in posteriordb.load(ES_NAME, EMBEDDED).data.items() if k != "sigma"}
    with pytest.raises(ValueError, match=r"variable does not exist.*variable name=sigma"):
        Target.from_stan(EIGHT_SCHOOLS, data, name="nosigma")


def test_from_posteriordb_stan_reads_the_database_program(eight_schools, tmp_path):
    folder = tmp_path / "posterior_database"
    shutil.copytree(EMBEDDED, folder)
    (folder / "models" / "stan").mkdir(parents=True, exist_ok=True)
    (folder / "models" / "stan" / "eight_schools_noncentered.stan").write_text(EIGHT_SCHOOLS)
    target = Target.from_posteriordb(ES_NAME, "stan", folder)  # same program: from the cache
    assert target.name == ES_NAME and target.names == eight_schools[0].names
    x = np.full(10, 0.3)
    assert target.log_density(x) == eight_schools[0].log_density(x)


def test_from_posteriordb_stan_without_program_says_a_full_clone_is_needed():
    with pytest.raises(FileNotFoundError, match=r"no Stan program for model 'eight_schools_noncentered'.*full clone"):
        Target.from_posteriordb(ES_NAME, "stan", EMBEDDED)
    with pytest.raises(ValueError, match="backend"):
        Target.from_posteriordb(ES_NAME, "cmdstan", EMBEDDED)


def test_program_that_does_not_compile_gives_stancs_message():
    bad = EIGHT_SCHOOLS.replace("real mu;", "real mu")
    with pytest.raises(ValueError, match=r"(?s)Stan program 'broken' does not compile; stanc says:.*Syntax error"):
        Target.from_stan(bad, {"J": 1, "y": [1.0], "sigma": [1.0]}, name="broken")
    undefined = EIGHT_SCHOOLS.replace("mu ~ normal(0, 5);", "nu ~ normal(0, 5);")
    with pytest.raises(ValueError, match=r"(?s)'typo'.*Identifier 'nu' not in scope"):
        Target.from_stan(undefined, {}, name="typo")


def test_missing_compiler_says_the_stan_route_needs_gxx(monkeypatch, tmp_path):
    monkeypatch.setenv(stan_route.CACHE_ENV_VAR, str(tmp_path))  # nothing cached here
    monkeypatch.setattr(stan_route, "find_compiler", lambda: None)
    monkeypatch.setattr(stan_build, "find_compiler", lambda: None)  # compile_model's own look-up
    with pytest.raises(RuntimeError, match=r"the `stan` route needs a C\+\+ compiler \(g\+\+\).*'nogxx'"):
        Target.from_stan(EIGHT_SCHOOLS + "// not cached\n", {}, name="nogxx")


def test_bad_arguments():
    with pytest.raises(ValueError, match="stan_code must be the text of a Stan program"):
        Target.from_stan("", {})
    with pytest.raises(TypeError, match="data must be a mapping"):
        Target.from_stan(EIGHT_SCHOOLS, [1, 2])
    with pytest.raises(ValueError, match=r"data\['y'\] must hold integers or reals"):
        Target.from_stan(EIGHT_SCHOOLS, {"J": 1, "y": ["a"], "sigma": [1.0]})


@pytest.mark.slow
@needs_gxx
@pytest.mark.parametrize(
    ("name", "code"), [("kidiq-kidscore_momiq", KIDSCORE_MOMIQ), ("sblrc-blr", BLR)], ids=["kidscore_momiq", "blr"]
)
def test_regressions_match_port(name, code):
    stan_target, port = _pair(name, code)
    x_stan, x_port = _check_against_port(stan_target, port, seed=3)
    constrained = stan_target.constrain(x_stan)
    for key, value in port.constrain(x_port).items():
        np.testing.assert_allclose(constrained[key], value, rtol=1e-10)


@pytest.mark.slow
@needs_gxx
def test_public_api_fallback_matches_compiled(eight_schools):
    pytest.importorskip("stan", reason="pystan's public API does not import (it needs pkg_resources)")
    stan_target, _ = eight_schools
    data = posteriordb.load(ES_NAME, EMBEDDED).data
    public = stan_route.StanTarget(EIGHT_SCHOOLS, data, "public", interface="public")
    assert public.interface == "public" and public.names == stan_target.names
    x = np.random.default_rng(2).normal(size=(2, 10))
    v_pub, g_pub = public.log_density_and_grad(x)
    v, g = stan_target.log_density_and_grad(x)
    np.testing.assert_allclose(v_pub - v_pub[0], v - v[0], rtol=1e-10)
    np.testing.assert_allclose(g_pub, g, rtol=1e-10)
    np.testing.assert_allclose(public.unconstrain({k: a[0] for k, a in public.constrain(x).items()}), x[0], atol=1e-12)
