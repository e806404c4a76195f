"""The two AutoAmortizedNormal twins give the same numbers on the same weights (float64).

``numpyro_ext.infer.amortized`` and ``pyro_ext.infer.amortized`` build the same guide: on one model (a global
``theta``, a real local ``z`` and a positive local ``s``, a subsampled plate) with the same default-MLP weights
and window, they read the same encoder inputs, give every datum the same unconstrained ``(loc, scale)``, and
their Trace_ELBO losses at the same reparameterised draws (the same standard-normal noise pushed through each
guide's Normals, the same subsample) agree, to ``RTOL``.  Weights move as the docs say: Pyro's
``guide.load_numpyro_params`` reads NumPyro's ``svi.get_params`` dictionary, ``guide.numpyro_params()`` writes
it.  Fresh default MLPs follow one convention: zero last layer and biases, so every datum starts at
``(0, init_scale)``.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
torch = pytest.importorskip("torch", reason="the pyro extra is not installed")
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as ndist  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as tdist  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.infer import Trace_ELBO as NTrace_ELBO  # noqa: E402
from pyro import poutine  # noqa: E402
from pyro.infer import Trace_ELBO as TTrace_ELBO  # noqa: E402

from numpyro_ext.infer.amortized import AutoAmortizedNormal as NumPyroGuide  # noqa: E402
from pyro_ext.infer.amortized import AutoAmortizedNormal as PyroGuide  # noqa: E402

RTOL = 1e-6
TAU, SIGMA, PRIOR_SD = 1.155, 2.43, 3.0
N, B, WINDOW, HIDDEN = 20, 6, 1, (5,)


def numpyro_model(x, subsample_size=None):
    theta = numpyro.sample("theta", ndist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        z = numpyro.sample("z", ndist.Normal(0.0, 1.0))
        s = numpyro.sample("s", ndist.LogNormal(0.0, 0.3))
        numpyro.sample("x", ndist.Normal(theta + TAU * z, SIGMA * s), obs=x[idx])


def pyro_model(x, subsample_size=None):
    theta = pyro.sample("theta", tdist.Normal(0.0, PRIOR_SD))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        z = pyro.sample("z", tdist.Normal(0.0, 1.0))
        s = pyro.sample("s", tdist.LogNormal(0.0, 0.3))
        pyro.sample("x", tdist.Normal(theta + TAU * z, SIGMA * s), obs=x[idx])


@pytest.fixture(autouse=True)
def _fresh_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def random_params(seed):
    """NumPyro's parameter dictionary for the default MLP (F = 3 window inputs -> 5 -> 2 D = 4) and theta."""
    rng = np.random.default_rng(seed)
    sizes = (2 * WINDOW + 1, *HIDDEN, 4)
    layers = [
        (rng.normal(size=(a, b)) / np.sqrt(a), 0.3 * rng.normal(size=b)) for a, b in zip(sizes, sizes[1:], strict=False)
    ]
    return {"auto_data_encoder": layers, "theta_auto_loc": np.array(0.4), "theta_auto_scale": np.array(0.25)}


@jax.jit  # one compilation: the eager NumPyro guide compiles every new operation, several times slower here
def numpyro_side(x, params, idx, draws):
    """The NumPyro guide's inputs, Normals, median of ``s``, and Trace_ELBO loss at ``draws`` and subsample ``idx``."""
    guide = NumPyroGuide(numpyro_model, hidden=HIDDEN, window=WINDOW)
    handlers.seed(guide, 0)(x, B)
    features = guide.local_inputs(x, B)
    fixed = handlers.substitute(guide, data={"data": idx} | draws)
    loss = NTrace_ELBO().loss(jax.random.PRNGKey(0), params, numpyro_model, fixed, x, B)
    return features, guide.encode(params, features), guide.median(params)["s"], loss


def test_same_inputs_normals_and_elbo_on_the_same_weights():
    x = np.random.default_rng(0).normal(0.5, 2.5, N)
    params = random_params(1)
    tguide = PyroGuide(pyro_model, hidden=HIDDEN, window=WINDOW)
    tguide(torch.as_tensor(x), B)
    tguide.load_numpyro_params(params)
    moved = tguide.numpyro_params()
    for (w, b), (w2, b2) in zip(params["auto_data_encoder"], moved["auto_data_encoder"], strict=True):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)
    assert float(moved["theta_auto_scale"]) == pytest.approx(0.25, rel=1e-14)
    features = tguide.local_inputs(torch.as_tensor(x), B)  # a subsampled model: read in chunks of b data
    with torch.no_grad():
        tencoded = tguide.encode(features)

    rng = np.random.default_rng(2)
    jparams = jax.tree.map(jnp.asarray, params)
    for _ in range(2):
        # one subsample and one noise, pushed through the guide's Normals: the same draws in both backends
        idx = np.sort(rng.choice(N, B, replace=False))
        eps = rng.standard_normal((3, B))
        (z_loc, z_scale), (s_loc, s_scale) = (tuple(t.numpy()[idx] for t in tencoded[k]) for k in ("z", "s"))
        draws = {"theta": 0.4 + 0.25 * eps[2, 0], "z": z_loc + z_scale * eps[0], "s": np.exp(s_loc + s_scale * eps[1])}
        jfeatures, jencoded, jmedian, jloss = numpyro_side(
            jnp.asarray(x), jparams, jnp.asarray(idx), jax.tree.map(jnp.asarray, draws)
        )
        np.testing.assert_allclose(features, np.asarray(jfeatures), rtol=1e-15)  # the same inputs (windows)
        for site in ("z", "s"):  # the same Normal for every datum
            for j, t in zip(jencoded[site], tencoded[site], strict=True):
                np.testing.assert_allclose(t, np.asarray(j), rtol=RTOL)
        np.testing.assert_allclose(tguide.median()["s"], np.asarray(jmedian), rtol=RTOL)
        # Pyro: the guide replays a trace holding the subsample and the draws (as the model replays the guide)
        trace = poutine.trace(tguide).get_trace(torch.as_tensor(x), B)
        for name, value in {"data": idx, **draws}.items():
            trace.nodes[name]["value"] = torch.as_tensor(value)
        tloss = TTrace_ELBO().loss(pyro_model, poutine.replay(tguide, trace=trace), torch.as_tensor(x), B)
        assert tloss == pytest.approx(float(jloss), rel=RTOL)


@jax.jit
def numpyro_fresh(x):
    """A fresh NumPyro guide's default MLP (init_scale 0.37), its Normals of z, and theta's initial scale."""
    guide = NumPyroGuide(numpyro_model, hidden=HIDDEN, window=WINDOW, init_scale=0.37)
    trace = handlers.trace(handlers.seed(guide, 0)).get_trace(x)
    layers = trace["auto_data_encoder"]["value"]
    encoded = guide.encode({"auto_data_encoder": layers}, guide.local_inputs(x))["z"]
    return layers, encoded, trace["theta_auto_scale"]["value"]


def test_fresh_default_mlps_start_every_datum_at_init_scale():
    x = np.random.default_rng(3).normal(0.5, 2.5, N)
    init_scale = 0.37
    jlayers, (jloc, jscale), jtheta_scale = numpyro_fresh(jnp.asarray(x))
    pyro.set_rng_seed(0)
    tguide = PyroGuide(pyro_model, hidden=HIDDEN, window=WINDOW, init_scale=init_scale)
    tguide(torch.as_tensor(x))
    tlayers = tguide.numpyro_params()["auto_data_encoder"]
    assert [(w.shape, b.shape) for w, b in tlayers] == [(w.shape, b.shape) for w, b in jlayers]
    for layers in (jlayers, tlayers):
        assert not any(np.any(np.asarray(b)) for _, b in layers)  # zero biases
        assert not np.any(np.asarray(layers[-1][0])) and np.all(np.asarray(layers[0][0]) != 0)  # zero last layer
    with torch.no_grad():
        tloc, tscale = tguide.encode(tguide.local_inputs())["z"]
    for loc, scale in ((np.asarray(jloc), np.asarray(jscale)), (tloc.numpy(), tscale.numpy())):
        np.testing.assert_array_equal(loc, np.zeros(N))
        np.testing.assert_allclose(scale, init_scale, rtol=1e-12)
    # the globals too start at init_scale in both
    assert float(tguide.numpyro_params()["theta_auto_scale"]) == pytest.approx(init_scale, rel=1e-12)
    assert float(jtheta_scale) == pytest.approx(init_scale, rel=1e-12)
