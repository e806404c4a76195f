"""AutoAmortizedNormal (NumPyro) against exact answers on the linear normal-normal model of Margossian & Blei.

Model: ``z_i ~ N(0, 1)``, ``x_i ~ N(theta + tau z_i, sigma^2)`` with ``tau = 1.155``, ``sigma = 2.43``.  For known
``theta`` the posterior of each ``z_i`` is ``N(tau (x_i - theta) / v, sigma^2 / v)``, ``v = tau^2 + sigma^2``: an
affine function of ``x_i`` with a constant scale, so an affine encoder (``hidden=()``) holds it exactly, the
A-VI optimum is the exact posterior and the ELBO there is ``log p(x) = sum_i log N(x_i; theta, v)``.  For a
Gaussian ``q`` the ELBO is closed-form (:func:`closed_form_elbo`), so fitted guides are scored without MC error.

* Exact, no tolerance: with the encoder set to the exact posterior map, ``log p(x, z) - log q(z)`` is
  ``log p(x)`` for every draw, so the single-draw Trace_ELBO loss equals ``-log p(x)`` (full batch) or
  ``-(n / b) sum_{i in I} log p(x_i)`` (subsample ``I``) to rounding, for a real and for a positive
  (``LogNormal``, through ``biject_to``) local latent.
* Fitted (fixed seeds): the optimisation's error is the only error (the family holds the optimum).  The
  tolerances are 4 root-mean-square errors over the calibration seeds 0-7 (n = 2000, b = 200, 1000 Adam steps)
  where the errors were: slope 2.0e-3 +- 2.3e-3, intercept 2.8e-3 +- 3.5e-3, scale slope 0.7e-3 +- 2.6e-3,
  scale 0.9e-3 +- 1.3e-3, ELBO gap log p(x) - ELBO: A-VI 0.17 +- 0.09 nats, F-VI (AutoNormal, 4000 free
  parameters) 2.90 +- 0.04 nats, of |ELBO| ~ 4800.
* Global ``theta ~ N(0, 3^2)``: the mean-field optimum has the exact posterior means and the scale
  ``1 / sqrt(1 / 3^2 + n / sigma^2)`` for ``theta`` (a Gaussian target's mean-field fit); tolerances 4 RMS
  errors over seeds 0-5 (n = 500, 1000 steps): theta's mean error -0.006 +- 0.052 and scale error 2.0% +- 2.0% of that
  scale, max |z mean error| 0.020 +- 0.009, max |z scale error| 1.3% +- 0.7%.
"""

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from jax.scipy.stats import norm  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.infer import SVI, Predictive, Trace_ELBO  # noqa: E402
from numpyro.infer.autoguide import AutoNormal  # noqa: E402

from adapters.amortized import softplus_inverse  # noqa: E402
from numpyro_ext.infer.amortized import AutoAmortizedNormal, as_encoder  # noqa: E402
from tests.amortized_checks import SD, SIGMA, SLOPE, TAU, THETA, V  # noqa: E402

PRIOR_SD = 3.0
Z_MAX = 4.5


def linear_data(seed, n):
    rng = np.random.default_rng(seed)
    return jnp.asarray(THETA + TAU * rng.standard_normal(n) + SIGMA * rng.standard_normal(n))


def linear_model(x, subsample_size=None):
    with numpyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(THETA + TAU * z, SIGMA), obs=x[idx])


def lognormal_model(x, subsample_size=None):
    """The same posterior for ``log z_i``: a positive local latent."""
    with numpyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        z = numpyro.sample("z", dist.LogNormal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(THETA + TAU * jnp.log(z), SIGMA), obs=x[idx])


def global_model(x):
    theta = numpyro.sample("theta", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(theta + TAU * z, SIGMA), obs=x)


def log_evidence(x):
    return norm.logpdf(x, THETA, math.sqrt(V))


def closed_form_elbo(x, loc, scale):
    """sum_i E_q[log p(x_i | z_i) + log p(z_i)] + H[q_i] for q_i = N(loc_i, scale_i^2), theta known."""
    expected = norm.logpdf(x, THETA + TAU * loc, SIGMA) - TAU**2 * scale**2 / (2 * SIGMA**2)
    return jnp.sum(expected + norm.logpdf(loc) - scale**2 / 2 + 0.5 * jnp.log(2 * jnp.pi * jnp.e * scale**2))


def exact_affine_params(init_scale=0.1):
    """The affine encoder's parameters of the exact posterior: loc = SLOPE (x - THETA), scale = SD."""
    weight = jnp.array([[SLOPE, 0.0]])
    bias = jnp.array([-SLOPE * THETA, softplus_inverse(SD) - softplus_inverse(init_scale)])
    return {"auto_data_encoder": [(weight, bias)]}


def fit(model, guide, steps, seed, *args):
    svi = SVI(model, guide, optax.adam(optax.exponential_decay(0.05, steps, 0.01)), Trace_ELBO())
    return svi.run(jax.random.PRNGKey(seed), steps, *args, progress_bar=False).params


@pytest.mark.parametrize("model", [linear_model, lognormal_model], ids=["real", "positive"])
def test_exact_encoder_makes_the_elbo_the_log_evidence_for_every_draw(model):
    n, b = 60, 12
    x = linear_data(0, n)
    params = exact_affine_params()
    guide = AutoAmortizedNormal(model, hidden=())
    handlers.seed(guide, 0)(x, b)  # set-up

    @jax.jit
    def loss(key, subsample):  # the model replays the guide's plate indices, fixed here
        fixed = handlers.substitute(guide, data={"data": subsample})
        return Trace_ELBO().loss(key, params, model, fixed, x, b)

    rng = np.random.default_rng(1)
    for seed in range(3):
        subsample = jnp.asarray(rng.choice(n, b, replace=False))
        expected = -(n / b) * float(jnp.sum(log_evidence(x[subsample])))
        assert float(loss(jax.random.PRNGKey(seed), subsample)) == pytest.approx(expected, rel=1e-10)
    full = AutoAmortizedNormal(model, hidden=())
    value = Trace_ELBO().loss(jax.random.PRNGKey(5), params, model, full, x)
    assert float(value) == pytest.approx(-float(jnp.sum(log_evidence(x))), rel=1e-10)


def test_affine_encoder_reaches_the_exact_posterior_and_the_fvi_elbo():
    n, b, steps = 2000, 200, 1000
    x = linear_data(0, n)
    guide = AutoAmortizedNormal(linear_model, hidden=())
    params = fit(linear_model, guide, steps, 0, x, b)
    assert jax.tree.map(jnp.shape, params) == {"auto_data_encoder": [((1, 2), (2,))]}  # independent of n

    grid = jnp.linspace(THETA - 4 * math.sqrt(V), THETA + 4 * math.sqrt(V), 41)
    loc, scale = guide.encode(params, grid[:, None])["z"]
    offset = jnp.abs(grid - THETA)
    # 4 RMS errors of slope / intercept (mean) and of scale / scale slope (sd), module docstring
    np.testing.assert_array_less(jnp.abs(loc - SLOPE * (grid - THETA)), 0.0122 * offset + 0.018)
    np.testing.assert_array_less(jnp.abs(scale - SD), 0.0064 + 0.0108 * jnp.abs(grid))

    log_p = float(jnp.sum(log_evidence(x)))
    loc_a, scale_a = guide.encode(params, guide.local_inputs(x, b))["z"]
    elbo_a = float(closed_form_elbo(x, loc_a, scale_a))
    fvi = fit(linear_model, AutoNormal(linear_model), steps, 0, x)
    elbo_f = float(closed_form_elbo(x, fvi["z_auto_loc"], fvi["z_auto_scale"]))
    assert 0.0 < log_p - elbo_a < 0.17 + 4 * 0.09  # a KL: positive, and as small as the optimiser leaves it
    assert 0.0 < log_p - elbo_f < 2.90 + 4 * 0.04
    assert abs(elbo_a - elbo_f) < 0.01 * abs(log_p)  # the goal: the gap < 1% of |ELBO|
    # A-VI's and F-VI's per-datum means agree to a small fraction of the posterior scale
    assert float(jnp.sqrt(jnp.mean((loc_a - fvi["z_auto_loc"]) ** 2))) < 0.05 * SD

    # the SVI loss (subsampled, one draw) is an unbiased estimate of -ELBO: mean of 400 vs closed form
    losses = jax.jit(jax.vmap(lambda k: Trace_ELBO().loss(k, params, linear_model, guide, x, b)))(
        jax.random.split(jax.random.PRNGKey(7), 400)
    )
    se = float(jnp.std(losses)) / math.sqrt(losses.shape[0])
    assert abs(float(jnp.mean(losses)) + elbo_a) < Z_MAX * se


@pytest.mark.slow
def test_affine_encoder_at_n_1e4_beats_fvi_with_memory_independent_of_n():
    """The issue's setting, n = 1e4 (b = 500, 2000 steps): seeds 0-2 gave A-VI gaps 0.48, 0.93, 0.16 nats and F-VI
    gaps 8.42, 8.46, 8.54 nats of |ELBO| ~ 2.4e4; the encoder's errors were within the default test's bounds."""
    n, b, steps = 10_000, 500, 2000
    x = linear_data(0, n)
    guide = AutoAmortizedNormal(linear_model, hidden=())
    params = fit(linear_model, guide, steps, 0, x, b)
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == 4  # the guide's memory: 4 numbers for any n
    grid = jnp.linspace(THETA - 4 * math.sqrt(V), THETA + 4 * math.sqrt(V), 41)
    loc, scale = guide.encode(params, grid[:, None])["z"]
    np.testing.assert_array_less(jnp.abs(loc - SLOPE * (grid - THETA)), 0.0122 * jnp.abs(grid - THETA) + 0.018)
    np.testing.assert_array_less(jnp.abs(scale - SD), 0.0064 + 0.0108 * jnp.abs(grid))
    log_p = float(jnp.sum(log_evidence(x)))
    elbo_a = float(closed_form_elbo(x, *guide.encode(params, x[:, None])["z"]))
    fvi = fit(linear_model, AutoNormal(linear_model), steps, 0, x)
    elbo_f = float(closed_form_elbo(x, fvi["z_auto_loc"], fvi["z_auto_scale"]))
    print(f"n=1e4: log p(x) {log_p:.2f}, A-VI gap {log_p - elbo_a:.3f}, F-VI gap {log_p - elbo_f:.3f} nats")
    assert 0.0 < log_p - elbo_a < log_p - elbo_f  # F-VI's 2n noisy parameters leave it further from the optimum
    assert log_p - elbo_f < 0.01 * abs(log_p)  # the goal: A-VI reaches F-VI's ELBO to 1% of |ELBO|


@pytest.mark.slow  # test budget: the default run keeps the exact-posterior and exact-ELBO checks
def test_global_latent_gets_a_free_gaussian_and_posterior_summaries_fit():
    n, steps = 500, 1000
    x = linear_data(0, n)
    guide = AutoAmortizedNormal(global_model, hidden=())
    params = fit(global_model, guide, steps, 0, x)
    assert set(params) == {"auto_data_encoder", "theta_auto_loc", "theta_auto_scale"}
    precision = 1 / PRIOR_SD**2 + n / V
    theta_mean = float(jnp.sum(x)) / V / precision  # exact posterior mean (z integrated out)
    theta_scale = 1 / math.sqrt(1 / PRIOR_SD**2 + n / SIGMA**2)  # the mean-field optimum's scale

    median = guide.median(params)
    assert median["theta"].shape == () and median["z"].shape == (n,)
    assert abs(float(median["theta"]) - theta_mean) < 0.21 * theta_scale
    assert float(params["theta_auto_scale"]) == pytest.approx(theta_scale, rel=0.11)
    z_mean = TAU * (x - theta_mean) / V
    assert float(jnp.max(jnp.abs(median["z"] - z_mean))) < 0.088
    loc, scale = guide.encode(params, x[:, None])["z"]
    np.testing.assert_allclose(scale, SD, rtol=0.06)
    np.testing.assert_allclose(median["z"], loc, rtol=1e-12)

    levels = [0.1, 0.5, 0.9]
    quantiles = guide.quantiles(params, levels)
    assert quantiles["theta"].shape == (3,) and quantiles["z"].shape == (3, n)
    normal_q = jnp.asarray([-1.2815515655446004, 0.0, 1.2815515655446004])
    expected_theta = params["theta_auto_loc"] + params["theta_auto_scale"] * normal_q
    np.testing.assert_allclose(quantiles["theta"], expected_theta, rtol=1e-9)
    np.testing.assert_allclose(quantiles["z"], loc + scale * normal_q[:, None], rtol=1e-9, atol=1e-12)

    # Predictive draws the guide's Normals: standardized draws have mean 0, variance 1 (MC error, 400 x 500)
    predictive = Predictive(global_model, guide=guide, params=params, num_samples=400, return_sites=["theta", "z", "x"])
    draws = predictive(jax.random.PRNGKey(3), x)
    assert draws["theta"].shape == (400,) and draws["z"].shape == (400, n) and draws["x"].shape == (400, n)
    std = ((draws["z"] - loc) / scale).ravel()
    assert abs(float(jnp.mean(std))) < Z_MAX / math.sqrt(std.size)
    assert abs(float(jnp.var(std)) - 1.0) < Z_MAX * math.sqrt(2 / std.size)
    posterior = guide.sample_posterior(jax.random.PRNGKey(4), params, sample_shape=(2, 300))
    assert posterior["theta"].shape == (2, 300) and posterior["z"].shape == (2, 300, n)
    std = (posterior["theta"] - params["theta_auto_loc"]) / params["theta_auto_scale"]
    assert abs(float(jnp.mean(std))) < Z_MAX / math.sqrt(600)


def pair_model(x, subsample_size=None):
    """Two observed coordinates per datum (``x`` of shape ``(n, 2)``), one real local."""
    with numpyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z[:, None], jnp.ones(2)).to_event(1), obs=x[idx])


def windows(x, k):
    """Each datum's inputs i-k..i+k (clipped to the ends), concatenated: ``(n, (2k + 1) * 2)``."""
    n = x.shape[0]
    rows = np.clip(np.arange(n)[:, None] + np.arange(-k, k + 1)[None, :], 0, n - 1)
    return np.asarray(x)[rows].reshape(n, -1)


def linear_pair(weight, bias):
    """A pure (init, apply) pair that starts at the given affine map."""
    return (lambda key, input_shape: (weight, bias)), (lambda p, x: x @ p[0] + p[1])


@pytest.mark.parametrize(
    "subsample_size", [None, pytest.param(7, marks=pytest.mark.slow)], ids=["full", "subsampled"]
)  # test budget: windows stay checked on the full plate, subsampling in the default affine-encoder fit
def test_window_feeds_each_datum_its_edge_padded_neighbours(subsample_size):
    n, k = 20, 2
    x = jnp.asarray(np.random.default_rng(0).standard_normal((n, 2)))
    expected = windows(x, k)
    rng = np.random.default_rng(1)
    weight, bias = jnp.asarray(rng.standard_normal((10, 2))), jnp.asarray([0.3, -0.2])
    forms = (None, lambda x, subsample_size=None: x) if subsample_size else ("x",)  # each set-up compiles
    for inputs in forms:
        guide = AutoAmortizedNormal(pair_model, encoder=linear_pair(weight, bias), inputs=inputs, window=k)
        handlers.seed(guide, 0)(x, subsample_size)
        np.testing.assert_allclose(guide.local_inputs(x, subsample_size), expected, rtol=1e-15)
        # inside a guide call: the Normal of datum i is the encoder of i's window
        subsample = jnp.arange(n) if subsample_size is None else jnp.asarray([0, 1, 9, 18, 19, 5, 3])
        fixed = handlers.substitute(guide, data={"data": subsample, "auto_data_encoder": (weight, bias)})
        site = handlers.trace(handlers.seed(fixed, 1)).get_trace(x, subsample_size)["z"]
        out = expected[np.asarray(subsample)] @ np.asarray(weight) + np.asarray(bias)
        np.testing.assert_allclose(site["fn"].loc, out[:, 0], rtol=1e-12)
        np.testing.assert_allclose(site["fn"].scale, jax.nn.softplus(out[:, 1] + softplus_inverse(0.1)), rtol=1e-12)


def multi_model(x):
    """Locals of several shapes and supports: z (real), u (3-vector), s (positive), w (inside a second plate)."""
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        u = numpyro.sample("u", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        with numpyro.plate("feature", 2, dim=-2):
            w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        mean = z + u.sum(-1) + w.sum(0)
        numpyro.sample("x", dist.Normal(mean, s), obs=x)


@pytest.mark.slow  # test budget
def test_encoder_output_is_split_per_site_and_placed_on_the_plate_axis():
    n = 6
    x = jnp.linspace(-1.0, 1.0, n)
    rng = np.random.default_rng(2)
    weight, bias = jnp.asarray(rng.standard_normal((1, 14))), jnp.asarray(rng.standard_normal(14))
    guide = AutoAmortizedNormal(multi_model, encoder=linear_pair(weight, bias))
    trace = handlers.trace(handlers.seed(guide, 0)).get_trace(x)
    assert guide.layout.names == ("z", "u", "s", "w") and guide.layout.shapes == ((), (3,), (), (2,))
    out = np.asarray(x[:, None] @ weight + bias)  # columns: loc z | u u u | s | w w, then raw scales likewise
    scale = jax.nn.softplus(out[:, 7:] + softplus_inverse(0.1))
    np.testing.assert_allclose(trace["z"]["fn"].loc, out[:, 0], rtol=1e-12)
    np.testing.assert_allclose(trace["u"]["fn"].base_dist.loc, out[:, 1:4], rtol=1e-12)
    np.testing.assert_allclose(trace["u"]["fn"].base_dist.scale, scale[:, 1:4], rtol=1e-12)
    s_fn = trace["s"]["fn"]  # a positive local: the Normal pushed through exp
    np.testing.assert_allclose(s_fn.base_dist.loc, out[:, 4], rtol=1e-12)
    assert trace["s"]["value"].shape == (n,) and bool(jnp.all(trace["s"]["value"] > 0))
    np.testing.assert_allclose(trace["w"]["fn"].loc, out[:, 5:7].T, rtol=1e-12)
    assert trace["w"]["value"].shape == (2, n)
    median = guide.median({"auto_data_encoder": (weight, bias)})
    np.testing.assert_allclose(median["s"], np.exp(out[:, 4]), rtol=1e-12)
    assert {k: v.shape for k, v in median.items()} == {"z": (n,), "u": (n, 3), "s": (n,), "w": (2, n)}


class _InitApply:
    """A flax-linen-like object: ``init(key, x)`` and ``apply(params, x)``."""

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def init(self, key, x):
        assert x.shape == (1, 1)
        return {"w": self.weight, "b": self.bias}

    def apply(self, params, x):
        return x @ params["w"] + params["b"]


def test_every_encoder_form_gives_the_same_encoder():
    eqx = pytest.importorskip("equinox")
    x = jnp.asarray(np.random.default_rng(3).standard_normal((8, 1)))
    weight, bias = jnp.array([[0.4, -0.3]]), jnp.array([0.1, 0.2])
    linear = eqx.nn.Linear(1, 2, key=jax.random.PRNGKey(0))
    linear = eqx.tree_at(lambda m: (m.weight, m.bias), linear, (weight.T, bias))

    class PerDatum(eqx.Module):
        layer: eqx.nn.Linear

        def __call__(self, v):
            return self.layer(v)

    stax_pair = (lambda key, shape: ((-1, 2), (weight, bias)), lambda p, v: v @ p[0] + p[1])
    expected = x @ weight + bias
    for encoder in (linear_pair(weight, bias), stax_pair, _InitApply(weight, bias), PerDatum(linear)):
        form = as_encoder(encoder, output_size=2, hidden=())
        params = form.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))
        np.testing.assert_allclose(form.apply(params, x), expected, rtol=1e-12)
    default = as_encoder(None, output_size=2, hidden=(5, 4))
    params = default.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))
    assert [(w.shape, b.shape) for w, b in params] == [((1, 5), (5,)), ((5, 4), (4,)), ((4, 2), (2,))]
    assert not np.any(params[-1][0]) and np.any(params[0][0])  # the last layer starts at zero: q = N(0, 0.1)
    assert not np.any(default.apply(params, x))
    params[-1] = (jnp.ones((4, 2)), jnp.zeros(2))
    hidden = jax.nn.elu(jax.nn.elu(x @ params[0][0]) @ params[1][0])
    np.testing.assert_allclose(default.apply(params, x), hidden @ jnp.ones((4, 2)), rtol=1e-12)


def _no_latent_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def _unbatched_local_model(x):
    with numpyro.plate("data", x.shape[0], subsample_size=4) as idx:
        z = numpyro.sample("z", dist.Normal(jnp.zeros(x.shape[0]), 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def _local_outside_model(x):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0]]))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _subsampled_linear_model(x):
    linear_model(x, subsample_size=2)


def _bad_width_encoder():
    return linear_pair(jnp.ones((1, 3)), jnp.zeros(3))


def _bad_input_encoder():
    return linear_pair(jnp.ones((4, 2)), jnp.zeros(2))


@pytest.mark.parametrize(
    ("model", "kwargs", "data", "match"),
    [
        (
            linear_model,
            {"plate": "dat"},
            None,
            r"plate: the model has no plate named 'dat' \(its plates are \['data'\]",
        ),
        (_unbatched_local_model, {}, None, r"plate: the model's sample site 'z' has a batch shape that does not"),
        (_local_outside_model, {}, None, r"plate: the latent 'z' lies outside plate 'data' but is batched over"),
        (_no_latent_model, {}, None, r"plate: plate 'data' holds no latent sample site"),
        (linear_model, {"encoder": _bad_width_encoder()}, None, r"encoder: .* returned shape \(10, 3\), expected"),
        (linear_model, {"encoder": _bad_input_encoder()}, None, r"encoder: applying it to a batch of inputs of sha"),
        (linear_model, {"inputs": "y"}, None, r"inputs: the model has no observed sample site 'y' inside plate"),
        (linear_model, {"inputs": lambda x: x[:5]}, None, r"inputs: the callable returned an array of shape \(5,\)"),
        (linear_model, {}, np.r_[np.ones(9), np.nan], r"inputs must be finite, got 1 non-finite entries"),
        # subsampled: every datum is checked at set-up, not only the first subsample (a NaN later would hide)
        (_subsampled_linear_model, {}, np.r_[np.ones(9), np.nan], r"non-finite entries \(first at index \(9, 0\)"),
    ],
    ids=["plate", "batch", "outside", "no-local", "width", "input-size", "site", "callable", "nan", "nan-subsampled"],
)
@pytest.mark.filterwarnings("ignore:.*Out-of-support values")  # NumPyro's, on the NaN datum, before the error
def test_bad_input_names_the_argument(model, kwargs, data, match):
    x = jnp.asarray(np.linspace(-1.0, 1.0, 10) if data is None else data)
    guide = AutoAmortizedNormal(model, **kwargs)
    with pytest.raises(ValueError, match=match):
        handlers.seed(guide, 0)(x)


def test_bad_arguments_fail_at_construction_and_unobserved_inputs_fail_at_prediction():
    for kwargs, error, match in [
        ({"window": -1}, ValueError, "window must be a finite number >= 0"),
        ({"window": 1.5}, ValueError, "window must be a non-negative integer"),
        ({"hidden": (0,)}, ValueError, "hidden must be a tuple of positive integers"),
        ({"init_scale": 0.0}, ValueError, "init_scale must be a finite number > 0"),
        ({"inputs": 3}, TypeError, "inputs must be None"),
        ({"encoder": "mlp"}, TypeError, "encoder must be None"),
        ({"plate": ""}, TypeError, "plate must be the name"),
    ]:
        with pytest.raises(error, match=match):
            AutoAmortizedNormal(linear_model, **kwargs)

    def model(x=None, n=10):
        with numpyro.plate("data", n):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    guide = AutoAmortizedNormal(model)
    handlers.seed(guide, 0)(jnp.zeros(10))
    with pytest.raises(ValueError, match="inputs: 'x' is a latent site in this call"):
        handlers.seed(guide, 0)(None)
