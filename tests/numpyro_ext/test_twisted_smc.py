"""Twisted SMC (NumPyro) against exact answers: Kalman-filter log Z, RTS smoothing marginals,
optimal twists from the backward information filter, exact posterior paths (FFBS).

Every tolerance is a Monte Carlo error: 4 standard errors over independent runs, or
``4 sqrt(Var / ESS)`` for one weighted particle system; seeds are fixed.
"""

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402

from adapters import smc_reference as ref  # noqa: E402
from numpyro_ext.infer import TwistedSMC  # noqa: E402
from numpyro_ext.infer.twisted_smc import (  # noqa: E402
    QuadraticTwist,
    TabularTwist,
    TokenModel,
    normalized_weights,
    resample,
    run_filter,
)

T = 50


class LinearGaussian:
    """The LGSSM of ``adapters/smc_reference.py`` in Pyro's SMCFilter convention (NumPyro)."""

    def __init__(self, model: ref.LGSSM):
        self.A, self.Q, self.C, self.R, self.m0, self.P0 = (
            jnp.asarray(v) for v in (model.A, model.Q, model.C, model.R, model.m0, model.P0)
        )

    def init(self, state):
        state["x"] = numpyro.sample("x0", dist.MultivariateNormal(self.m0, self.P0))

    def step(self, state, y):
        state["x"] = numpyro.sample("x", dist.MultivariateNormal(self.A @ state["x"], self.Q))
        numpyro.sample("y", dist.MultivariateNormal(self.C @ state["x"], self.R), obs=y)


class OptimalProposal:
    """``q(x_t | x_{t-1}) ∝ p(x_t | x_{t-1}) p(y_t | x_t) psi*_t(x_t)``: with the optimal twists,
    every incremental weight is the same constant and ``Z_hat = Z`` exactly."""

    def __init__(self, lgssm: LinearGaussian, info: ref.BackwardInformation):
        self.m = lgssm
        self.J, self.h = jnp.asarray(info.J), jnp.asarray(info.h)

    def init(self, state):
        m = self.m
        cov = jnp.linalg.inv(jnp.linalg.inv(m.P0) + self.J[0])
        numpyro.sample("x0", dist.MultivariateNormal(cov @ (jnp.linalg.solve(m.P0, m.m0) + self.h[0]), cov))

    def step(self, state, y, t):
        m = self.m
        Qi, Ri = jnp.linalg.inv(m.Q), jnp.linalg.inv(m.R)
        cov = jnp.linalg.inv(Qi + m.C.T @ Ri @ m.C + self.J[t])
        mean = cov @ (Qi @ m.A @ state["x"] + m.C.T @ Ri @ y + self.h[t])
        numpyro.sample("x", dist.MultivariateNormal(mean, cov))


class TimedLinearGaussian(LinearGaussian):
    def step(self, state, y, t):
        super().step(state, y)


def _problem(d, m, seed=0):
    rng = np.random.default_rng(seed)
    model = ref.scalar_lgssm(r=0.5) if d == 1 else ref.random_lgssm(rng, d, m)
    _, ys = model.simulate(rng, T)
    return model, ys, ref.kalman_filter(model, ys), ref.backward_information_filter(model, ys)


def _optimal_params(info):
    return QuadraticTwist.from_information(info.J[:T], info.h[:T], info.c[:T])


def _exact_paths(model, ys, num, seed=1):
    draws = ref.sample_posterior(model, ys, np.random.default_rng(seed), num)
    return {"init": {"x0": jnp.asarray(draws[:, 0])}, "step": {"x": jnp.asarray(draws[:, 1:])}}


# ---------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["multinomial", "systematic", "stratified"])
def test_resampling_is_unbiased(method):
    weights = np.array([0.02, 0.3, 0.05, 0.13, 0.0, 0.25, 0.2, 0.05])
    log_w = jnp.log(jnp.asarray(weights))
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    counts = jax.vmap(lambda k: jnp.bincount(resample(k, log_w, method), length=8))(keys)
    counts = np.asarray(counts, dtype=float)
    expected = 8 * weights
    se = counts.std(axis=0, ddof=1) / math.sqrt(len(counts)) + 1e-12
    assert np.all(np.abs(counts.mean(axis=0) - expected) < 4 * se + 1e-9), (counts.mean(axis=0), expected)
    assert np.all(counts[:, 4] == 0)  # a zero weight is never drawn
    if method == "systematic":  # each count is floor or ceil of N W
        assert np.all((counts >= np.floor(expected)) & (counts <= np.ceil(expected)))


def test_all_zero_weights_resample_uniformly():
    log_w = jnp.full(5, -jnp.inf)
    assert np.allclose(normalized_weights(log_w), 0.2)


# ---------------------------------------------------------------------------------------
# log Z
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("d, m", [(1, 1), pytest.param(4, 2, marks=pytest.mark.slow)])
def test_bootstrap_Z_hat_is_unbiased(d, m):
    model, ys, kalman, _ = _problem(d, m)
    smc = TwistedSMC(LinearGaussian(model), num_particles=256)
    log_Z = np.asarray(smc.log_Z_samples(jax.random.PRNGKey(1), jnp.asarray(ys), num_runs=200))
    ratio = np.exp(log_Z - kalman.log_Z)
    assert abs(ratio.mean() - 1.0) < 4 * ratio.std(ddof=1) / math.sqrt(len(ratio)), (ratio.mean(), ratio.std())
    # Jensen: E log Z_hat is a lower bound
    assert log_Z.mean() < kalman.log_Z + 4 * log_Z.std(ddof=1) / math.sqrt(len(log_Z))


# both model sizes and two resampling schemes by default (stratified: test_optimal_token_twists...); the rest is slow
@pytest.mark.parametrize(
    "d, m, resampling",
    [
        (1, 1, "systematic"),
        pytest.param(4, 2, "multinomial", marks=pytest.mark.slow),  # 15 s; the Pyro twin runs d = 4 by default
        pytest.param(4, 2, "stratified", marks=pytest.mark.slow),
        pytest.param(1, 1, "multinomial", marks=pytest.mark.slow),
        pytest.param(1, 1, "stratified", marks=pytest.mark.slow),
        pytest.param(4, 2, "systematic", marks=pytest.mark.slow),
    ],
)
def test_optimal_twists_and_proposal_give_exact_log_Z(d, m, resampling):
    model, ys, kalman, info = _problem(d, m)
    lgssm = TimedLinearGaussian(model)
    smc = TwistedSMC(
        lgssm,
        num_particles=32,
        twist=QuadraticTwist("x", d, T),
        twist_params=_optimal_params(info),
        proposal=OptimalProposal(lgssm, info),
        resampling=resampling,
        ess_threshold=1.0,
    )
    log_Z = smc.log_Z_samples(jax.random.PRNGKey(2), jnp.asarray(ys), jnp.arange(1, T + 1), num_runs=4)
    np.testing.assert_allclose(np.asarray(log_Z), kalman.log_Z, rtol=0, atol=1e-8)


def test_final_particles_match_the_kalman_filter():
    model, ys, kalman, _ = _problem(4, 2)
    result = TwistedSMC(LinearGaussian(model), num_particles=4096).run(jax.random.PRNGKey(3), jnp.asarray(ys))
    weights = np.asarray(normalized_weights(result.log_weights))
    x = np.asarray(result.output.states["x"][-1])
    ess = 1.0 / np.sum(weights**2)
    mean = weights @ x
    sd = np.sqrt(np.diag(kalman.filter_covs[-1]))
    assert np.all(np.abs(mean - kalman.filter_means[-1]) < 4 * sd / math.sqrt(ess)), (mean, kalman.filter_means[-1])


def test_optimal_twists_make_every_intermediate_target_the_smoother():
    """With psi_t = p(y_{t+1:T} | x_t), pi_t's marginal of x_t is p(x_t | y_{1:T}) at every t."""
    model, ys, _, info = _problem(1, 1)
    means, covs = ref.rts_smoother(model, ys)
    smc = TwistedSMC(
        LinearGaussian(model), num_particles=2048, twist=QuadraticTwist("x", 1, T), twist_params=_optimal_params(info)
    )
    output = smc.run(jax.random.PRNGKey(4), jnp.asarray(ys)).output
    weights = np.asarray(jax.vmap(normalized_weights)(output.step_log_weights))  # (T + 1, N)
    x = np.asarray(output.states["x"][..., 0])
    ess = 1.0 / np.sum(weights**2, axis=1)
    estimate = np.sum(weights * x, axis=1)
    z = (estimate - means[:, 0]) / np.sqrt(covs[:, 0, 0] / ess)
    assert np.max(np.abs(z)) < 4.5, z  # 51 marginals: 4.5 sd keeps the family-wise rate < 1e-3


# ---------------------------------------------------------------------------------------
# Conditional SMC and the bounds
# ---------------------------------------------------------------------------------------
def test_conditional_smc_keeps_the_clamped_path():
    model, ys, _, _ = _problem(1, 1)
    exact = _exact_paths(model, ys, 1)
    clamp = ((exact["init"]["x0"][0],), (exact["step"]["x"][0],))
    output = run_filter(
        jax.random.PRNGKey(5), LinearGaussian(model), (jnp.asarray(ys),), 8, clamp=clamp, ess_threshold=1.0
    )
    # particle 0 is the clamped path at every step, and it is its own ancestor
    np.testing.assert_allclose(np.asarray(output.step_latents[0][:, 0]), np.asarray(exact["step"]["x"][0]))
    assert np.all(np.asarray(output.ancestors[:, 0]) == 0)
    assert np.asarray(output.resampled).any()


def test_bounds_sandwich_the_exact_log_Z():
    model, ys, kalman, _ = _problem(1, 1)
    smc = TwistedSMC(LinearGaussian(model), num_particles=4)
    bounds = smc.log_Z_bounds(
        jax.random.PRNGKey(6), jnp.asarray(ys), exact_samples=_exact_paths(model, ys, 64), num_runs=64
    )
    exact = kalman.log_Z
    # with 4 particles every bound is loose: strictly on its side, beyond Monte Carlo error
    assert bounds.smc_lower + 4 * bounds.smc_lower_se < exact
    assert bounds.sis_lower + 4 * bounds.sis_lower_se < exact
    assert bounds.csmc_upper - 4 * bounds.csmc_upper_se > exact
    assert bounds.iwae_upper - 4 * bounds.iwae_upper_se > exact
    # resampling tightens both sides
    assert bounds.smc_lower > bounds.sis_lower and bounds.csmc_upper < bounds.iwae_upper
    low, high = bounds.kl_q_sigma
    assert 0 < low <= high
    low, high = bounds.kl_sigma_q
    assert 0 < low <= high


@pytest.mark.slow  # the twisted-smc benchmark measures the gap at 16..1024 particles too
def test_bounds_tighten_with_particles():
    model, ys, kalman, _ = _problem(1, 1)
    exact_paths = _exact_paths(model, ys, 32)
    gaps = []
    for n in (4, 64):
        b = TwistedSMC(LinearGaussian(model), num_particles=n).log_Z_bounds(
            jax.random.PRNGKey(7), jnp.asarray(ys), exact_samples=exact_paths, num_runs=32
        )
        gaps.append(b.csmc_upper - b.smc_lower)
    assert gaps[1] < 0.5 * gaps[0], gaps


# ---------------------------------------------------------------------------------------
# Twist learning
# ---------------------------------------------------------------------------------------
def test_ctl_keeps_the_optimal_twist_fixed():
    """At the optimal twist E_sigma[grad log psi_t] = E_pi_t[grad log psi_t]: CTL does not move it."""
    model, ys, _, info = _problem(1, 1)
    optimal = _optimal_params(info)
    smc = TwistedSMC(LinearGaussian(model), num_particles=512, twist=QuadraticTwist("x", 1, T), twist_params=optimal)
    params, _ = smc.fit_twists(
        jax.random.PRNGKey(8),
        jnp.asarray(ys),
        num_steps=100,
        optimizer=optax.sgd(1e-3),
        exact_samples=_exact_paths(model, ys, 512),
    )
    assert np.max(np.abs(np.asarray(params["h"] - optimal["h"]))) < 0.05
    J = np.asarray(params["L"][:, 0, 0] ** 2)
    assert np.max(np.abs(J - info.J[:T, 0, 0])) < 0.05


# slow, like its Pyro twin: the token tests below learn by CTL and SIXO by default
@pytest.mark.slow
@pytest.mark.parametrize("method", ["ctl", "sixo"])
def test_learned_twists_lower_the_variance_of_log_Z(method):
    model, ys, _, info = _problem(4, 2)
    ys = jnp.asarray(ys)
    boot = TwistedSMC(LinearGaussian(model), num_particles=128)
    smc = TwistedSMC(LinearGaussian(model), num_particles=128, twist=QuadraticTwist("x", 4, T))
    _, losses = smc.fit_twists(
        jax.random.PRNGKey(9),
        ys,
        method=method,
        num_steps=400,
        optimizer=optax.adam(3e-2),
        exact_samples=_exact_paths(model, ys, 256),
    )
    assert np.all(np.isfinite(losses))
    var_boot = float(jnp.var(boot.log_Z_samples(jax.random.PRNGKey(10), ys, num_runs=64)))
    var_learned = float(jnp.var(smc.log_Z_samples(jax.random.PRNGKey(10), ys, num_runs=64)))
    assert var_learned < 0.75 * var_boot, (var_learned, var_boot)


# ---------------------------------------------------------------------------------------
# Results and bad input
# ---------------------------------------------------------------------------------------
def test_samples_and_arviz():
    model, ys, _, _ = _problem(4, 2)
    result = TwistedSMC(LinearGaussian(model), num_particles=64).run(jax.random.PRNGKey(11), jnp.asarray(ys))
    samples = result.get_samples()
    assert samples["init"]["x0"].shape == (64, 4) and samples["step"]["x"].shape == (64, T, 4)
    drawn = result.get_samples(jax.random.PRNGKey(0), num_samples=10)
    assert drawn["step"]["x"].shape == (10, T, 4)
    assert result.ess.shape == (T + 1,) and np.all(np.asarray(result.ess) <= 64 + 1e-9)
    idata = result.to_arviz()
    assert idata.posterior["x"].shape == (1, 64, T, 4) and idata.attrs["log_Z"] == result.log_Z


class NoLatent:
    def init(self, state):
        state["x"] = numpyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(self, state, y):
        numpyro.sample("y", dist.Normal(state["x"], 1.0), obs=y)


class Impossible(NoLatent):
    def step(self, state, y):
        state["x"] = numpyro.sample("x", dist.Normal(state["x"], 1.0))
        numpyro.sample("y", dist.Uniform(10.0, 11.0), obs=y)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_particles": 0}, "num_particles"),
        ({"ess_threshold": 0.0}, r"ess_threshold: expected a number in \(0, 1\]"),
        ({"ess_threshold": 1.5}, "ess_threshold"),
        ({"resampling": "residual"}, "resampling"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwistedSMC(NoLatent(), **kwargs)


def test_model_without_the_convention_is_refused():
    with pytest.raises(TypeError, match=r"model: expected an object with init\(state, \*args\) and step"):
        TwistedSMC(lambda: None)


def test_step_without_latent_site_is_refused():
    with pytest.raises(ValueError, match="samples no latent site"):
        TwistedSMC(NoLatent(), num_particles=4).run(jax.random.PRNGKey(0), jnp.zeros(3))


def test_impossible_observations_give_minus_inf_and_a_warning():
    with pytest.warns(RuntimeWarning, match="every particle has zero weight"):
        result = TwistedSMC(Impossible(), num_particles=8).run(jax.random.PRNGKey(0), jnp.zeros(3))
    assert result.log_Z == -math.inf
    assert not np.any(np.isnan(np.asarray(result.log_weights)))


# ---------------------------------------------------------------------------------------
# Token models: a Markov "toy language model" with an additive potential (exact answers)
# ---------------------------------------------------------------------------------------
V, LENGTH = 4, 6


@pytest.fixture(scope="module")
def toy_lm():
    rng = np.random.default_rng(0)
    hmm = ref.random_token_hmm(rng, V)
    g = 1.5 * rng.normal(size=(LENGTH, V))
    log_pi, log_M, G = jnp.asarray(hmm.log_pi), jnp.asarray(hmm.log_M), jnp.asarray(g)

    def next_token_log_probs(tokens, position):
        return jnp.where(position == 0, log_pi, log_M[tokens[jnp.maximum(position - 1, 0)]])

    def log_potential(tokens):
        return jnp.sum(G[jnp.arange(LENGTH), tokens])

    exact = ref.sample_exact_additive(hmm, g, rng, 512)
    return {
        "model": TokenModel(next_token_log_probs, log_potential, V, LENGTH),
        "log_Z": ref.exact_log_Z_additive(hmm, g),
        "optimal": {"u": G, "w": jnp.asarray(ref.optimal_log_twists_additive(hmm, g))},
        "exact": {"init": {}, "step": {"token": jnp.asarray(exact)}},
        "target": ref.enumerate_target(hmm, ref.additive_log_phi(g), LENGTH),
    }


@pytest.mark.parametrize("proposal", [None, "prior"])
def test_token_Z_hat_is_unbiased(toy_lm, proposal):
    smc = TwistedSMC(toy_lm["model"], num_particles=64, proposal=proposal)
    ratio = np.exp(np.asarray(smc.log_Z_samples(jax.random.PRNGKey(0), num_runs=400)) - toy_lm["log_Z"])
    assert abs(ratio.mean() - 1.0) < 4 * ratio.std(ddof=1) / math.sqrt(len(ratio)), ratio.mean()


@pytest.mark.parametrize("resampling", [pytest.param("multinomial", marks=pytest.mark.slow), "stratified"])
def test_optimal_token_twists_give_exact_log_Z_and_exact_samples(toy_lm, resampling):
    smc = TwistedSMC(
        toy_lm["model"],
        num_particles=4000,
        twist=TabularTwist(V, LENGTH),
        twist_params=toy_lm["optimal"],
        resampling=resampling,
    )
    np.testing.assert_allclose(
        np.asarray(smc.log_Z_samples(jax.random.PRNGKey(1), num_runs=4)), toy_lm["log_Z"], atol=1e-10, rtol=0
    )
    result = smc.run(jax.random.PRNGKey(2))
    assert np.ptp(np.asarray(result.log_weights)) < 1e-9  # every particle an exact, equally weighted draw
    tokens = np.asarray(result.get_samples()["step"]["token"])
    sequences, probs = toy_lm["target"]
    for position in range(LENGTH):
        exact = np.array([probs[sequences[:, position] == v].sum() for v in range(V)])
        freq = np.bincount(tokens[:, position], minlength=V) / len(tokens)
        se = np.sqrt(exact * (1 - exact) / len(tokens)) + 1e-12
        assert np.all(np.abs(freq - exact) < 4 * se), (position, freq, exact)


@pytest.mark.slow  # the LGSSM sandwich above checks the same four bounds by default
def test_token_bounds_sandwich_the_exact_log_Z(toy_lm):
    # 256 runs: the bounds sit about 0.4 nats off log Z, 7-10 standard errors at this size
    bounds = TwistedSMC(toy_lm["model"], num_particles=4).log_Z_bounds(
        jax.random.PRNGKey(3), exact_samples=toy_lm["exact"], num_runs=256
    )
    assert bounds.smc_lower + 4 * bounds.smc_lower_se < toy_lm["log_Z"]
    assert bounds.csmc_upper - 4 * bounds.csmc_upper_se > toy_lm["log_Z"]
    assert bounds.iwae_upper - 4 * bounds.iwae_upper_se > toy_lm["log_Z"]


# CTL learns by default in the two tests around this one; SIXO only here
@pytest.mark.parametrize("method", [pytest.param("ctl", marks=pytest.mark.slow), "sixo"])
def test_learned_token_twists_cut_the_variance_tenfold(toy_lm, method):
    plain = TwistedSMC(toy_lm["model"], num_particles=64)
    smc = TwistedSMC(toy_lm["model"], num_particles=64, twist=TabularTwist(V, LENGTH))
    smc.fit_twists(
        jax.random.PRNGKey(4), method=method, num_steps=400, optimizer=optax.adam(5e-2), exact_samples=toy_lm["exact"]
    )
    var_plain = float(jnp.var(plain.log_Z_samples(jax.random.PRNGKey(5), num_runs=200)))
    var_learned = float(jnp.var(smc.log_Z_samples(jax.random.PRNGKey(5), num_runs=200)))
    assert var_learned < 0.1 * var_plain, (var_learned, var_plain)


def test_ctl_without_exact_samples_learns_from_its_own_particles(toy_lm):
    plain = TwistedSMC(toy_lm["model"], num_particles=64)
    smc = TwistedSMC(toy_lm["model"], num_particles=64, twist=TabularTwist(V, LENGTH))
    smc.fit_twists(jax.random.PRNGKey(6), num_steps=400, optimizer=optax.adam(5e-2))
    var_plain = float(jnp.var(plain.log_Z_samples(jax.random.PRNGKey(5), num_runs=200)))
    var_learned = float(jnp.var(smc.log_Z_samples(jax.random.PRNGKey(5), num_runs=200)))
    assert var_learned < 0.25 * var_plain, (var_learned, var_plain)


def test_token_model_arguments_are_checked(toy_lm):
    with pytest.raises(ValueError, match="proposal: for a TokenModel expected None"):
        TwistedSMC(toy_lm["model"], proposal="guide")
    with pytest.raises(ValueError, match="vocab_size"):
        TokenModel(lambda t, p: t, lambda t: 0.0, 0, 3)
